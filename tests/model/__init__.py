"""Executable specification of Linux IPVS: a slow, plain-Python model (see ipvs_model.py)."""
from .ipvs_model import IPVSModel, Packet, Variant, endpoint, norm_addr, variant_for
from .packets import build_frame, frames, packet_from_frame, packets_from_rows, read_pcap

__all__ = ["IPVSModel", "Packet", "Variant", "variant_for", "endpoint", "norm_addr", "build_frame",
           "frames", "packet_from_frame", "packets_from_rows", "read_pcap"]
