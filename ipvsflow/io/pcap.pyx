"""Classic pcap reader (zero-copy over an mmap'd file) and the reader base class.

Each iteration step yields a fresh PacketBatch of up to ``burst`` packets whose ``data``
pointers point into the mapped file; the batch's ``owner`` is the FileBuffer, so the mapping
lives as long as any batch (or numpy view of one) does. A corrupt or truncated record ends the
file: the packets before it are yielded first, then CaptureError names the byte offset.
"""
from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from posix.mman cimport mmap, munmap, madvise, PROT_READ, MAP_PRIVATE, MAP_FAILED, MADV_SEQUENTIAL
from libc.errno cimport errno
from libc.string cimport strerror as c_strerror
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE

from ipvsflow.io.batch cimport PacketBatch, pkt_desc
from ipvsflow.io.parse cimport parse_burst


class CaptureError(ValueError):
    """A capture file cannot be read (or stops being readable); ``str(err)`` is one line."""


CaptureError.__module__ = "ipvsflow.io"

# Largest record accepted: tcpdump's and Wireshark's maximum snapshot length, or the file's own
# snaplen when that is larger (bounded so a corrupt length cannot make us trust gigabytes).
MAX_CAPLEN = 262144
MAX_SNAPLEN_TRUSTED = 1 << 24

PCAP_MAGIC_US = 0xa1b2c3d4
PCAP_MAGIC_NS = 0xa1b23c4d
PCAP_MAGIC_MODIFIED = 0xa1b2cd34      # Kuznetsov's patched libpcap: 24-byte record headers


def strerror(int code):
    return c_strerror(code).decode("utf-8", "replace")


cdef extern from *:
    void __builtin_prefetch(const void *addr) nogil


cdef inline uint32_t ld32(const uint8_t *b, bint big) noexcept nogil:
    if big:
        return (<uint32_t> b[0] << 24) | (<uint32_t> b[1] << 16) | (<uint32_t> b[2] << 8) | b[3]
    return (<uint32_t> b[3] << 24) | (<uint32_t> b[2] << 16) | (<uint32_t> b[1] << 8) | b[0]


cdef inline uint16_t ld16(const uint8_t *b, bint big) noexcept nogil:
    if big:
        return <uint16_t> ((<uint16_t> b[0] << 8) | b[1])
    return <uint16_t> ((<uint16_t> b[1] << 8) | b[0])


cdef class FileBuffer:
    """The bytes of a capture file, read-only, alive as long as this object is referenced."""

    def __cinit__(self):
        self.base = NULL
        self.size = 0
        self._map = NULL
        self._maplen = 0
        self._keep = None

    @staticmethod
    def map_fd(int fd, size_t size):
        """mmap ``size`` bytes of the regular file open on ``fd`` (the fd may be closed after)."""
        cdef FileBuffer fb = FileBuffer()
        cdef void *m
        if size == 0:
            return fb
        with nogil:
            m = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0)
        if m == MAP_FAILED:
            e = errno
            raise OSError(e, strerror(e))
        madvise(m, size, MADV_SEQUENTIAL)
        fb._map = m
        fb._maplen = size
        fb.base = <const uint8_t *> m
        fb.size = size
        return fb

    @staticmethod
    def from_bytes(data):
        """Wrap an in-memory copy (pipes, character devices, tests)."""
        cdef FileBuffer fb = FileBuffer()
        cdef bytes b = bytes(data)
        fb._keep = b
        fb.base = <const uint8_t *> PyBytes_AS_STRING(b)
        fb.size = <size_t> PyBytes_GET_SIZE(b)
        return fb

    def head(self, size_t n):
        """The first ``n`` bytes (fewer if the file is shorter)."""
        if n > self.size:
            n = self.size
        return (<const char *> self.base)[:n] if n else b""

    def __dealloc__(self):
        if self._map != NULL:
            munmap(self._map, self._maplen)
            self._map = NULL


cdef class CaptureReader:
    """Iterable over PacketBatch objects (a fresh batch per burst); context manager.

    Attributes: ``packets`` (records read so far), ``linktypes`` (link type of every interface,
    in file order), ``bytes_read`` / ``size`` (progress), ``path``, ``burst``.
    """

    def __cinit__(self, FileBuffer buf, uint32_t burst=256, path=None):
        if burst == 0:
            raise ValueError("burst must be at least 1")
        self.buf = buf
        self.size = buf.size
        self.burst = burst
        self.path = path
        self.packets = 0
        self.pos = 0
        self._error = None
        self._done = False
        self._linktypes = []

    cdef int _fill(self, PacketBatch b) except -1:
        raise TypeError("CaptureReader is abstract")

    @property
    def linktypes(self):
        return list(self._linktypes)

    @property
    def bytes_read(self):
        return self.pos

    @property
    def closed(self):
        return self.buf is None

    def _fail(self, msg):
        return CaptureError(f"{self.path}: {msg}" if self.path is not None else msg)

    def __iter__(self):
        return self

    def __next__(self):
        cdef PacketBatch b
        if self.buf is None:
            raise ValueError("capture reader is closed")
        if self._done:
            raise StopIteration
        b = PacketBatch(self.burst)
        b.owner = self.buf
        if self._error is None:
            self._fill(b)
        if b.count:
            with nogil:
                parse_burst(b.pkts, b.count)
            return b
        self._done = True
        if self._error is not None:
            err, self._error = self._error, None
            raise self._fail(err)
        raise StopIteration

    def close(self):
        """Stop reading. Batches already yielded stay valid (they hold the mapping)."""
        self.buf = None
        self._done = True

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def __repr__(self):
        return (f"<{type(self).__name__} {self.path!r} packets={self.packets} "
                f"linktypes={self._linktypes}>")


cdef class PcapReader(CaptureReader):
    """Classic pcap: both byte orders, microsecond and nanosecond magic, modified-pcap records."""

    def __init__(self, FileBuffer buf, uint32_t burst=256, path=None):
        cdef const uint8_t *h = buf.base
        cdef uint32_t magic
        if buf.size < 4:
            raise self._fail("truncated pcap header (file is %d bytes)" % buf.size)
        magic = ld32(h, False)
        if magic in (PCAP_MAGIC_US, PCAP_MAGIC_NS, PCAP_MAGIC_MODIFIED):
            self.big_endian = False
        else:
            magic = ld32(h, True)
            if magic not in (PCAP_MAGIC_US, PCAP_MAGIC_NS, PCAP_MAGIC_MODIFIED):
                raise self._fail("not a pcap file (magic %s)" % bytes(buf.head(4)).hex())
            self.big_endian = True
        if buf.size < 24:
            raise self._fail("truncated pcap header: %d of 24 bytes" % buf.size)
        major = ld16(h + 4, self.big_endian)
        minor = ld16(h + 6, self.big_endian)
        if major != 2:
            raise self._fail("unsupported pcap version %d.%d" % (major, minor))
        self.version = (major, minor)
        self.nanosecond = magic == PCAP_MAGIC_NS
        self.ts_mult = 1 if magic == PCAP_MAGIC_NS else 1000
        self.hdrlen = 24 if magic == PCAP_MAGIC_MODIFIED else 16
        self.snaplen = ld32(h + 16, self.big_endian)
        # The upper bits carry the FCS length flags (LT_FCS_LENGTH_PRESENT etc.).
        self.linktype = ld32(h + 20, self.big_endian) & 0x03FFFFFF
        self.maxcap = MAX_CAPLEN
        if self.snaplen > MAX_CAPLEN:
            self.maxcap = min(self.snaplen, MAX_SNAPLEN_TRUSTED)
        self._linktypes = [self.linktype]
        self.pos = 24

    cdef int _fill(self, PacketBatch b) except -1:
        cdef const uint8_t *base = self.buf.base
        cdef size_t size = self.buf.size
        cdef size_t pos = self.pos
        cdef size_t rec = 0
        cdef uint32_t i = 0
        cdef uint32_t cap = b.capacity
        cdef uint32_t hdrlen = self.hdrlen
        cdef uint32_t maxcap = self.maxcap
        cdef int64_t mult = self.ts_mult
        cdef bint big = self.big_endian
        cdef uint64_t index = self.packets
        cdef uint16_t lt = <uint16_t> (self.linktype if self.linktype <= 0xffff else 0xffff)
        cdef const uint8_t *h
        cdef uint32_t incl = 0
        cdef int err = 0
        cdef pkt_desc *p
        with nogil:
            while i < cap and pos < size:
                if size - pos < hdrlen:
                    err = 1
                    break
                h = base + pos
                # Record boundaries form a dependent chain through the file: prefetch ahead so
                # the next headers are in cache by the time their offsets are known.
                __builtin_prefetch(h + 1024)
                incl = ld32(h + 8, big)
                if incl > maxcap:
                    err = 2
                    break
                if incl > size - pos - hdrlen:
                    err = 3
                    break
                p = &b.pkts[i]
                p.data = h + hdrlen
                p.caplen = incl
                p.wirelen = ld32(h + 12, big)
                p.ts_ns = <int64_t> ld32(h, big) * 1000000000 + <int64_t> ld32(h + 4, big) * mult
                p.index = index + i
                p.ifindex = 0
                p.linktype = lt
                pos += hdrlen + incl
                i += 1
        b.count = i
        self.packets += i
        self.pos = pos
        if err == 1:
            self._error = ("truncated pcap record header at byte offset %d: %d of %d bytes present"
                           % (pos, size - pos, hdrlen))
        elif err == 2:
            self._error = ("corrupt pcap record at byte offset %d: captured length %d exceeds %d"
                           % (pos, incl, maxcap))
        elif err == 3:
            self._error = ("truncated pcap record at byte offset %d: captured length %d, only %d "
                           "bytes left in the file" % (pos, incl, size - pos - hdrlen))
        return 0
