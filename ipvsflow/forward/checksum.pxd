# Internet checksum helpers (RFC 1071 sums, RFC 1624 incremental updates), inline for the
# forwarders' hot paths. Values are 16-bit numbers in network order as read with rd16: a field is
# read with rd16, changed with csum_replace*, and written back with wr16.
#
# csum_replace* is the kernel's ip_vs_check_diff*/csum_fold pattern: HC' = ~(~HC + ~m + m')
# (RFC 1624 eqn. 3), which gives what a full recomputation gives.
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcpy

cdef extern from *:
    """
    #if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    #define IPVSFLOW_HOST_BE 1
    #define ipvsflow_net16(v) ((uint16_t)(v))
    #define IPVSFLOW_TTL_ONE 0x100
    #else
    #define IPVSFLOW_HOST_BE 0
    #define ipvsflow_net16(v) ((uint16_t)__builtin_bswap16((uint16_t)(v)))
    #define IPVSFLOW_TTL_ONE 1
    #endif
    #include <string.h>
    static inline uint16_t ipvsflow_ld16(const uint8_t *p) { uint16_t v; memcpy(&v, p, 2); return v; }
    static inline uint32_t ipvsflow_ld32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }
    static inline void ipvsflow_st16(uint8_t *p, uint16_t v) { memcpy(p, &v, 2); }
    """
    const int IPVSFLOW_HOST_BE
    # Words as they lie in memory (native order), for sums that need no byte swap: a one's
    # complement sum of byte-swapped words is the byte-swapped sum (RFC 1071 2(B)). net16: a
    # host-order value as it lies in a packet. TTL_ONE: TTL - 1 in the native word of TTL and
    # protocol.
    uint16_t ld16 "ipvsflow_ld16"(const uint8_t *p) noexcept nogil
    uint32_t ld32 "ipvsflow_ld32"(const uint8_t *p) noexcept nogil
    void st16 "ipvsflow_st16"(uint8_t *p, uint16_t v) noexcept nogil
    uint16_t net16 "ipvsflow_net16"(uint16_t v) noexcept nogil
    const uint16_t TTL_ONE "IPVSFLOW_TTL_ONE"


cdef inline uint16_t rd16(const uint8_t *b) noexcept nogil:
    return <uint16_t> ((<uint16_t> b[0] << 8) | b[1])


cdef inline uint32_t rd32(const uint8_t *b) noexcept nogil:
    return (<uint32_t> b[0] << 24) | (<uint32_t> b[1] << 16) | (<uint32_t> b[2] << 8) | b[3]


cdef inline void wr16(uint8_t *b, uint16_t v) noexcept nogil:
    b[0] = <uint8_t> (v >> 8)
    b[1] = <uint8_t> (v & 0xff)


cdef inline void wr32(uint8_t *b, uint32_t v) noexcept nogil:
    b[0] = <uint8_t> (v >> 24)
    b[1] = <uint8_t> ((v >> 16) & 0xff)
    b[2] = <uint8_t> ((v >> 8) & 0xff)
    b[3] = <uint8_t> (v & 0xff)


cdef inline uint32_t csum_fold(uint64_t s) noexcept nogil:
    """One's complement fold of a wide sum to 16 bits (end-around carries), not inverted."""
    s = (s & 0xffffffffULL) + (s >> 32)
    s = (s & 0xffffffffULL) + (s >> 32)
    s = (s & 0xffff) + (s >> 16)
    s = (s & 0xffff) + (s >> 16)
    return <uint32_t> s


cdef inline uint32_t csum_fold48(uint64_t s) noexcept nogil:
    """csum_fold for a sum below 2^48 (a few dozen words): three 16-bit folds."""
    s = (s & 0xffff) + (s >> 16)
    s = (s & 0xffff) + (s >> 16)
    s = (s & 0xffff) + (s >> 16)
    return <uint32_t> s


cdef inline uint32_t csum_sum(const uint8_t *p, size_t n, uint32_t init) noexcept nogil:
    """One's complement sum (16-bit, network-order value, not inverted) of n bytes added to
    ``init``; an odd last byte is padded with a zero byte (RFC 1071). Sums native 32-bit words
    (the sum is byte-order independent, RFC 1071 section 2(B)) and swaps once at the end."""
    cdef uint64_t acc = 0
    cdef uint32_t w
    cdef uint16_t h
    cdef uint32_t s
    while n >= 4:
        memcpy(&w, p, 4)
        acc += w
        p += 4
        n -= 4
    if n >= 2:
        memcpy(&h, p, 2)
        acc += h
        p += 2
        n -= 2
    if n:
        if IPVSFLOW_HOST_BE:
            acc += (<uint32_t> p[0]) << 8
        else:
            acc += p[0]
    s = csum_fold(acc)
    if not IPVSFLOW_HOST_BE:
        s = ((s & 0xff) << 8) | (s >> 8)
    return csum_fold(<uint64_t> s + init)


cdef inline uint16_t csum_finish(uint32_t s) noexcept nogil:
    """Checksum field value from a folded sum."""
    return <uint16_t> (~s & 0xffff)


cdef inline uint16_t csum_replace16(uint16_t check, uint16_t old, uint16_t new) noexcept nogil:
    """Checksum after one 16-bit word of the covered data changed from old to new."""
    cdef uint32_t s = (<uint32_t> (~check & 0xffff)) + (<uint32_t> (~old & 0xffff)) + new
    return csum_finish(csum_fold(s))


cdef inline uint16_t csum_replace(uint16_t check, const uint8_t *old, const uint8_t *new,
                                  int n) noexcept nogil:
    """Checksum after n bytes (n even, 16-bit aligned in the covered data) changed from old to
    new. old and new must not be the same memory."""
    cdef uint32_t s = ~check & 0xffff
    cdef int i = 0
    while i < n:
        s += (~rd16(old + i)) & 0xffff
        s += rd16(new + i)
        i += 2
    return csum_finish(csum_fold(s))


cdef inline uint32_t pseudo_sum(uint8_t af, const uint8_t *src, const uint8_t *dst,
                                uint32_t l4len, uint8_t proto) noexcept nogil:
    """Folded sum of the TCP/UDP pseudo-header. src/dst point at the raw addresses in the IP
    header (4 bytes for af 4, 16 for af 6)."""
    cdef uint64_t s
    cdef int alen = 4 if af == 4 else 16
    s = csum_sum(src, alen, 0)
    s += csum_sum(dst, alen, 0)
    s += (l4len >> 16) + (l4len & 0xffff)
    s += proto
    return csum_fold(s)
