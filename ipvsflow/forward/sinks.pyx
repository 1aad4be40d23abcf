"""Where forwarded packets go: a pcap file (ipvsflow.io.PcapWriter) or a NullSink."""
import os

from libc.stdint cimport uint32_t

from ipvsflow.forward.common cimport LT_ANY, l2_hdr_len
from ipvsflow.io.writer import PcapWriter

#: Link types a forwarder can write (frames are converted to the sink's link type).
OUTPUT_LINKTYPES = {
    0: "NULL", 1: "EN10MB", 12: "RAW", 14: "RAW", 101: "RAW", 108: "LOOP", 113: "LINUX_SLL",
    228: "IPV4", 229: "IPV6", 276: "LINUX_SLL2",
}


cdef class NullSink:
    """Discards packets, counting them (``packets``, ``bytes_written``).

    ``NullSink(linktype=None)``: with a link type, frames are converted to it as for a file
    (so the conversion cost is measured too); without, they keep their own.
    """

    def __init__(self, linktype=None):
        if linktype is None:
            self._linktype = LT_ANY
        else:
            check_linktype(linktype)
            self._linktype = <uint32_t> linktype
        self.packets = 0
        self.bytes_written = 0

    @property
    def linktype(self):
        return None if self._linktype == LT_ANY else self._linktype

    def write(self, data, ts_ns=0, wirelen=None):
        """Count one packet (same call as PcapWriter.write)."""
        self.take(<uint32_t> len(memoryview(data).cast("B")))

    def flush(self):
        pass

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def __repr__(self):
        return f"<NullSink packets={self.packets} bytes={self.bytes_written}>"


def check_linktype(linktype):
    """Raise ValueError unless the forwarders can write frames of this link type."""
    try:
        lt = int(linktype)
    except (TypeError, ValueError):
        raise ValueError(f"link type must be an integer, not {linktype!r}") from None
    if lt not in OUTPUT_LINKTYPES or l2_hdr_len(<uint32_t> lt) < 0:
        names = ", ".join(f"{k} ({v})" for k, v in sorted(OUTPUT_LINKTYPES.items()))
        raise ValueError(f"cannot write link type {lt}; supported: {names}")
    return lt


def open_output(path, linktype=1, snaplen=262144):
    """Open where a Forwarder writes: a nanosecond pcap file at ``path`` with link type
    ``linktype`` (frames of other link types are converted to it), or a NullSink when ``path``
    is None. Close it when done (``with open_output(...) as out:``)."""
    lt = check_linktype(linktype)
    if path is None:
        return NullSink(lt)
    if isinstance(path, (str, bytes, os.PathLike)):
        d = os.path.dirname(os.fspath(path))
        if d and not os.path.isdir(d):
            raise ValueError(f"{os.fsdecode(path)}: directory {os.fsdecode(d)} does not exist")
    return PcapWriter(path, linktype=lt, snaplen=snaplen)
