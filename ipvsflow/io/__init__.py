"""Packets in and out: the burst container, the parser, capture readers and the pcap writer.

Importing this package is cheap: pyshark is only imported by :func:`open_pyshark`.
"""
from .batch import (
    PacketBatch, ParseStatus, addr_to_str, str_to_addr, PKT_DTYPE, CONSTANTS as _C,
)
from .pcap import CaptureError
from .capture import open_capture, detect_format
from .writer import PcapWriter

LINKTYPE_NULL = 0
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
LINKTYPE_LOOP = 108
LINKTYPE_LINUX_SLL = 113
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_LINUX_SLL2 = 276

FRAG_IS = _C["FRAG_IS"]
FRAG_MF = _C["FRAG_MF"]
FRAG_NONFIRST = _C["FRAG_NONFIRST"]
SCTP_ABORT_AFTER_COOKIE = _C["SCTP_ABORT_AFTER_COOKIE"]

TCP_FIN = 0x01
TCP_SYN = 0x02
TCP_RST = 0x04
TCP_PSH = 0x08
TCP_ACK = 0x10
TCP_URG = 0x20
TCP_ECE = 0x40
TCP_CWR = 0x80


def open_pyshark(*args, **kwargs):
    """Read a capture through pyshark/tshark (slow, universal); see ipvsflow.io.pyshark_source."""
    from .pyshark_source import open_pyshark as f
    return f(*args, **kwargs)


__all__ = [
    "open_capture", "open_pyshark", "detect_format", "PacketBatch", "ParseStatus", "PKT_DTYPE",
    "CaptureError", "PcapWriter", "addr_to_str", "str_to_addr",
    "LINKTYPE_NULL", "LINKTYPE_ETHERNET", "LINKTYPE_RAW", "LINKTYPE_LOOP", "LINKTYPE_LINUX_SLL",
    "LINKTYPE_IPV4", "LINKTYPE_IPV6", "LINKTYPE_LINUX_SLL2",
    "FRAG_IS", "FRAG_MF", "FRAG_NONFIRST", "SCTP_ABORT_AFTER_COOKIE",
    "TCP_FIN", "TCP_SYN", "TCP_RST", "TCP_PSH", "TCP_ACK", "TCP_URG", "TCP_ECE", "TCP_CWR",
]
