"""PcapWriter: nanosecond-resolution classic pcap, buffered in C and written in large chunks."""
import os

from cpython.bytes cimport PyBytes_FromStringAndSize
from cpython.buffer cimport PyBUF_READ
from cpython.memoryview cimport PyMemoryView_FromMemory
from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport malloc, realloc, free
from libc.string cimport memcpy

from ipvsflow.io.batch cimport PacketBatch, pkt_desc

PCAP_MAGIC_NS = 0xa1b23c4d
DEFAULT_BUFFER = 1 << 20


cdef inline void st32(uint8_t *b, uint32_t v) noexcept nogil:
    b[0] = v & 0xff
    b[1] = (v >> 8) & 0xff
    b[2] = (v >> 16) & 0xff
    b[3] = (v >> 24) & 0xff


cdef class PcapWriter:
    """Write a nanosecond pcap file.

    ``PcapWriter(path_or_fileobj, linktype=1, snaplen=262144, buffer_size=1 MiB)``. A path is
    created/truncated and closed by ``close()``; a file object (anything with ``write``) is
    flushed but left open. Packets longer than ``snaplen`` are truncated (their wire length is
    kept). ``packets`` and ``bytes_written`` count what was written (header included).
    """

    def __cinit__(self):
        self.buf = NULL
        self._closed = True
        self._file = None

    def __init__(self, path_or_fileobj, uint32_t linktype=1, uint32_t snaplen=262144,
                 size_t buffer_size=DEFAULT_BUFFER):
        cdef uint8_t hdr[24]
        if snaplen == 0:
            raise ValueError("snaplen must be at least 1")
        if linktype > 0xffff:
            raise ValueError(f"link type {linktype} out of range")
        if isinstance(path_or_fileobj, (str, bytes, os.PathLike)):
            self._file = open(path_or_fileobj, "wb", buffering=0)
            self._own_file = True
        elif hasattr(path_or_fileobj, "write"):
            self._file = path_or_fileobj
            self._own_file = False
        else:
            raise TypeError("PcapWriter needs a path or a binary file object")
        self.bufcap = max(buffer_size, 16 + <size_t> snaplen, 4096)
        self.buf = <uint8_t *> malloc(self.bufcap)
        if self.buf == NULL:
            raise MemoryError()
        self.buflen = 0
        self.linktype = linktype
        self.snaplen = snaplen
        self.packets = 0
        self.bytes_written = 0
        self._closed = False
        st32(hdr, PCAP_MAGIC_NS)
        hdr[4] = 2
        hdr[5] = 0
        hdr[6] = 4
        hdr[7] = 0
        st32(hdr + 8, 0)            # thiszone
        st32(hdr + 12, 0)           # sigfigs
        st32(hdr + 16, snaplen)
        st32(hdr + 20, linktype)
        memcpy(self.buf, hdr, 24)
        self.buflen = 24
        self.bytes_written = 24

    def __dealloc__(self):
        free(self.buf)
        self.buf = NULL

    def __del__(self):
        if not self._closed:
            try:
                self.close()
            except Exception:
                pass

    cdef int _flush(self) except -1:
        cdef size_t done = 0
        if self.buflen == 0:
            return 0
        if self._own_file:
            view = PyMemoryView_FromMemory(<char *> self.buf, self.buflen, PyBUF_READ)
            while done < self.buflen:
                n = self._file.write(view[done:])
                if n is None or n <= 0:
                    raise OSError("short write to the pcap file")
                done += n
            view.release()
        else:
            # A foreign file object might keep what it is given: hand it a copy.
            self._file.write(PyBytes_FromStringAndSize(<char *> self.buf, self.buflen))
        self.buflen = 0
        return 0

    cdef int write_raw(self, const uint8_t *data, uint32_t caplen, uint32_t wirelen,
                       int64_t ts_ns) except -1:
        cdef int64_t sec, nsec
        cdef uint8_t *h
        if self._closed:
            raise ValueError("write to a closed PcapWriter")
        if ts_ns < 0 or ts_ns // 1000000000 > 0xffffffff:
            raise ValueError(f"timestamp {ts_ns} ns is outside the pcap range (1970..2106)")
        sec = ts_ns // 1000000000
        nsec = ts_ns - sec * 1000000000
        if caplen > self.snaplen:
            caplen = self.snaplen
        if wirelen < caplen:
            wirelen = caplen
        if self.bufcap - self.buflen < 16 + <size_t> caplen:
            self._flush()
        h = self.buf + self.buflen
        st32(h, <uint32_t> sec)
        st32(h + 4, <uint32_t> nsec)
        st32(h + 8, caplen)
        st32(h + 12, wirelen)
        memcpy(h + 16, data, caplen)
        self.buflen += 16 + caplen
        self.packets += 1
        self.bytes_written += 16 + caplen
        return 0

    cdef int write_recs(self, const frame_rec *recs, uint32_t n, uint8_t kind) except -1:
        cdef uint32_t i
        for i in range(n):
            if recs[i].kind == kind:
                self.write_raw(recs[i].data, recs[i].caplen, recs[i].wirelen, recs[i].ts_ns)
        return 0

    def write(self, data, int64_t ts_ns, wirelen=None):
        """Append one packet (bytes-like) with its time in ns since the epoch."""
        cdef const uint8_t[::1] view = memoryview(data).cast("B")
        cdef uint32_t n = <uint32_t> view.shape[0]
        cdef const uint8_t *ptr = &view[0] if n else <const uint8_t *> b""
        if view.shape[0] > 0xffffffff:
            raise ValueError("packet too large")
        self.write_raw(ptr, n, <uint32_t> (n if wirelen is None else wirelen), ts_ns)

    def write_batch(self, PacketBatch batch):
        """Append every packet of ``batch`` as it is (bytes, lengths, timestamps)."""
        cdef uint32_t i
        cdef pkt_desc *p
        for i in range(batch.count):
            p = &batch.pkts[i]
            if p.linktype != self.linktype:
                raise ValueError(f"packet {p.index} has link type {p.linktype}, the file has "
                                 f"{self.linktype}")
            self.write_raw(p.data, p.caplen, p.wirelen, p.ts_ns)

    def flush(self):
        """Write the buffered records out (and flush the file object)."""
        if self._closed:
            raise ValueError("flush of a closed PcapWriter")
        self._flush()
        if hasattr(self._file, "flush"):
            self._file.flush()

    @property
    def closed(self):
        return self._closed

    def close(self):
        if self._closed:
            return
        try:
            self._flush()
            if hasattr(self._file, "flush"):
                self._file.flush()
        finally:
            self._closed = True
            if self._own_file:
                self._file.close()
            self._file = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False
