"""Forwarders: rewrite packets per the engine's decisions (NAT, DR, TUN) and write them out.

::

    from ipvsflow.forward import Forwarder, open_output
    out = open_output("out.pcap", linktype=1)          # PcapWriter (or NullSink for None)
    fw = Forwarder(engine, neighbours={"10.0.1.1": "02:00:00:00:01:01"})
    for batch in reader:
        dec = engine.process(batch)
        fw.forward(batch, dec, 0, batch.count, out)
    out.close()
    fw.counters                                         # forwarded, dropped, passed, ...

The kernel's ip_vs_xmit.c and the protocols' NAT handlers are the reference; see
:mod:`ipvsflow.forward.xmit` for what happens to each packet.
"""
from ipvsflow.forward.xmit import (
    Forwarder, DECISION_DTYPE, COUNTER_NAMES, COUNTER_HELP, METHOD_COUNTERS, DROP_COUNTERS,
    TUNNEL_TYPES,
)
from ipvsflow.forward.sinks import NullSink, open_output, check_linktype, OUTPUT_LINKTYPES
from ipvsflow.forward.crc32c import crc32c, sctp_checksum
from ipvsflow.forward.checksum import internet_checksum, checksum_replace

__all__ = [
    "Forwarder", "NullSink", "open_output", "check_linktype", "OUTPUT_LINKTYPES",
    "DECISION_DTYPE", "COUNTER_NAMES", "COUNTER_HELP", "METHOD_COUNTERS", "DROP_COUNTERS", "TUNNEL_TYPES",
    "crc32c", "sctp_checksum", "internet_checksum", "checksum_replace",
]
