"""CRC-32C (Castagnoli): SSE4.2 ``crc32`` instruction when the CPU has it, slicing-by-8 otherwise.

``crc32c(data)`` gives the standard CRC-32C (RFC 3720 B.4 vectors: 32 zero bytes -> 0x8a9136aa).
"""
from libc.stdint cimport uint8_t, uint32_t

cdef extern from *:
    """
    #include <stdint.h>
    #include <string.h>
    #if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
    #include <cpuid.h>
    #define IPVSFLOW_CRC_X86 1
    __attribute__((target("sse4.2")))
    static uint32_t ipvsflow_crc32c_hw(uint32_t crc, const uint8_t *p, size_t n) {
    #if defined(__x86_64__)
        uint64_t c = crc;
        while (n && ((uintptr_t)p & 7)) { c = __builtin_ia32_crc32qi((uint32_t)c, *p++); n--; }
        while (n >= 8) {
            uint64_t w; memcpy(&w, p, 8);
            c = __builtin_ia32_crc32di(c, w);
            p += 8; n -= 8;
        }
        while (n) { c = __builtin_ia32_crc32qi((uint32_t)c, *p++); n--; }
        return (uint32_t)c;
    #else
        uint32_t c = crc;
        while (n >= 4) { uint32_t w; memcpy(&w, p, 4); c = __builtin_ia32_crc32si(c, w); p += 4; n -= 4; }
        while (n) { c = __builtin_ia32_crc32qi(c, *p++); n--; }
        return c;
    #endif
    }
    static int ipvsflow_cpu_has_sse42(void) {
        unsigned int a, b, c, d;
        if (!__get_cpuid(1, &a, &b, &c, &d)) return 0;
        return (c & bit_SSE4_2) != 0;
    }
    #else
    #define IPVSFLOW_CRC_X86 0
    static uint32_t ipvsflow_crc32c_hw(uint32_t crc, const uint8_t *p, size_t n) {
        (void)p; (void)n; return crc;
    }
    static int ipvsflow_cpu_has_sse42(void) { return 0; }
    #endif
    """
    uint32_t ipvsflow_crc32c_hw(uint32_t crc, const uint8_t *p, size_t n) noexcept nogil
    int ipvsflow_cpu_has_sse42() noexcept nogil
    const int IPVSFLOW_CRC_X86

cdef enum:
    POLY = 0x82F63B78       # CRC-32C, reflected

cdef uint32_t T[8][256]
cdef bint _hw = False


cdef void _init_tables() noexcept nogil:
    cdef uint32_t i, c
    cdef int k, j
    for i in range(256):
        c = i
        for k in range(8):
            c = (c >> 1) ^ (POLY if (c & 1) else 0)
        T[0][i] = c
    for i in range(256):
        c = T[0][i]
        for j in range(1, 8):
            c = T[0][c & 0xff] ^ (c >> 8)
            T[j][i] = c


_init_tables()
_hw = ipvsflow_cpu_has_sse42() != 0


cdef uint32_t crc32c_update_sw(uint32_t crc, const uint8_t *p, size_t n) noexcept nogil:
    cdef uint32_t lo, hi
    while n and (<size_t> p & 7):
        crc = T[0][(crc ^ p[0]) & 0xff] ^ (crc >> 8)
        p += 1
        n -= 1
    while n >= 8:
        # byte order independent: little-endian words assembled from single bytes
        lo = crc ^ (<uint32_t> p[0] | (<uint32_t> p[1] << 8) | (<uint32_t> p[2] << 16) | (<uint32_t> p[3] << 24))
        hi = <uint32_t> p[4] | (<uint32_t> p[5] << 8) | (<uint32_t> p[6] << 16) | (<uint32_t> p[7] << 24)
        crc = (T[7][lo & 0xff] ^ T[6][(lo >> 8) & 0xff] ^ T[5][(lo >> 16) & 0xff] ^ T[4][lo >> 24] ^
               T[3][hi & 0xff] ^ T[2][(hi >> 8) & 0xff] ^ T[1][(hi >> 16) & 0xff] ^ T[0][hi >> 24])
        p += 8
        n -= 8
    while n:
        crc = T[0][(crc ^ p[0]) & 0xff] ^ (crc >> 8)
        p += 1
        n -= 1
    return crc


cdef uint32_t crc32c_update(uint32_t crc, const uint8_t *p, size_t n) noexcept nogil:
    if _hw:
        return ipvsflow_crc32c_hw(crc, p, n)
    return crc32c_update_sw(crc, p, n)


cdef const uint8_t ZERO4[4]


cdef uint32_t sctp_cksum(const uint8_t *p, size_t n) noexcept nogil:
    cdef uint32_t c = 0xffffffff
    c = crc32c_update(c, p, 8)
    c = crc32c_update(c, ZERO4, 4)
    c = crc32c_update(c, p + 12, n - 12)
    return ~c


cdef const uint8_t *_ptr(const uint8_t[::1] v):
    return &v[0] if v.shape[0] else <const uint8_t *> b""


def crc32c(data, uint32_t crc=0):
    """CRC-32C of ``data``; pass a previous result as ``crc`` to continue a running CRC."""
    cdef const uint8_t[::1] v = memoryview(data).cast("B")
    cdef const uint8_t *p = _ptr(v)
    cdef size_t n = <size_t> v.shape[0]
    cdef uint32_t r
    with nogil:
        r = ~crc32c_update(~crc, p, n)
    return r


def crc32c_portable(data, uint32_t crc=0):
    """Same as :func:`crc32c`, always through the slicing-by-8 tables."""
    cdef const uint8_t[::1] v = memoryview(data).cast("B")
    return ~crc32c_update_sw(~crc, _ptr(v), <size_t> v.shape[0]) & 0xffffffff


def sctp_checksum(data):
    """The SCTP checksum of a whole SCTP packet (common header + chunks), with its checksum
    field taken as zero: the 32-bit value stored little-endian at offset 8."""
    cdef const uint8_t[::1] v = memoryview(data).cast("B")
    if v.shape[0] < 12:
        raise ValueError("an SCTP packet is at least 12 bytes")
    return sctp_cksum(&v[0], <size_t> v.shape[0])


def implementation():
    """'sse4.2' when the crc32 instruction is used, else 'slicing-by-8'."""
    return "sse4.2" if _hw else "slicing-by-8"
