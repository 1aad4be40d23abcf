"""ipvsflow: a userspace IPVS connection engine (offline pcap analysis, live director, benchmarks)."""
__version__ = "0.1.0"
