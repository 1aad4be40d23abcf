# Hash primitives of the hashing schedulers, bit-exact with the x86_64 kernel:
#   hash_32      include/linux/hash.h (generic __hash_32, GOLDEN_RATIO_32)
#   hsiphash     lib/siphash.c, BITS_PER_LONG == 64 branch: "HalfSipHash-1-3" there is SipHash-1-3
#                over 64-bit state (key = two unsigned longs), the result truncated to 32 bits
#   addr_fold    the sh/dh/mh address fold: ntohl of the IPv4 address, or of the XOR of the four
#                32-bit words of an IPv6 address (XOR commutes with the byte swap)
from libc.stdint cimport uint8_t, uint32_t, uint64_t

cdef enum:
    GOLDEN_RATIO_32 = 0x61C88647


cdef inline uint32_t hash_32(uint32_t val, unsigned int bits) noexcept nogil:
    return <uint32_t>(val * <uint32_t>GOLDEN_RATIO_32) >> (32 - bits)


cdef inline uint64_t _rotl64(uint64_t x, unsigned int b) noexcept nogil:
    return (x << b) | (x >> (64 - b))


# One SipRound on v[0..3].
cdef inline void _sipround(uint64_t *v) noexcept nogil:
    v[0] += v[1]
    v[1] = _rotl64(v[1], 13)
    v[1] ^= v[0]
    v[0] = _rotl64(v[0], 32)
    v[2] += v[3]
    v[3] = _rotl64(v[3], 16)
    v[3] ^= v[2]
    v[0] += v[3]
    v[3] = _rotl64(v[3], 21)
    v[3] ^= v[0]
    v[2] += v[1]
    v[1] = _rotl64(v[1], 17)
    v[1] ^= v[2]
    v[2] = _rotl64(v[2], 32)


cdef inline void _hsip_init(uint64_t *v, uint64_t k0, uint64_t k1) noexcept nogil:
    v[0] = <uint64_t>0x736f6d6570736575ULL ^ k0
    v[1] = <uint64_t>0x646f72616e646f6dULL ^ k1
    v[2] = <uint64_t>0x6c7967656e657261ULL ^ k0
    v[3] = <uint64_t>0x7465646279746573ULL ^ k1


cdef inline uint32_t _hsip_final(uint64_t *v, uint64_t b) noexcept nogil:
    v[3] ^= b
    _sipround(v)
    v[0] ^= b
    v[2] ^= 0xff
    _sipround(v)
    _sipround(v)
    _sipround(v)
    return <uint32_t>((v[0] ^ v[1]) ^ (v[2] ^ v[3]))


# hsiphash_1u32: hsiphash of the 4 bytes of a CPU-order (little-endian) u32; what
# hsiphash(&v, sizeof(u32), key) computes on x86_64.
cdef inline uint32_t hsiphash_u32(uint32_t first, uint64_t k0, uint64_t k1) noexcept nogil:
    cdef uint64_t v[4]
    _hsip_init(v, k0, k1)
    return _hsip_final(v, (<uint64_t>4 << 56) | first)


# hsiphash of any byte string (__hsiphash_unaligned): 8-byte little-endian words, then the tail
# bytes and the length in the last word. The schedulers only hash u32s; this checks the primitive
# against the kernel's self-test vectors.
cdef inline uint32_t hsiphash_bytes(const uint8_t *data, size_t n, uint64_t k0, uint64_t k1) noexcept nogil:
    cdef uint64_t v[4]
    cdef uint64_t m, b = (<uint64_t>n) << 56
    cdef size_t i, j, full = n - (n % 8)
    _hsip_init(v, k0, k1)
    i = 0
    while i < full:
        m = 0
        for j in range(8):
            m |= (<uint64_t>data[i + j]) << (8 * j)
        v[3] ^= m
        _sipround(v)
        v[0] ^= m
        i += 8
    for j in range(n - full):
        b |= (<uint64_t>data[full + j]) << (8 * j)
    return _hsip_final(v, b)


cdef inline uint32_t _be32(const uint8_t *p) noexcept nogil:
    return ((<uint32_t>p[0]) << 24) | ((<uint32_t>p[1]) << 16) | ((<uint32_t>p[2]) << 8) | p[3]


# ntohl(addr_fold) of a 16-byte address (IPv4 mapped as ::ffff:a.b.c.d) of family addr_af, as
# the kernel folds it for a service of family svc_af (the schedulers use svc->af, also for the
# real-server addresses mh hashes):
#   IPv4 service: addr->ip, the first 32 bits (the IPv4 address; of an IPv6 tunnel real server,
#                 the first word of its IPv6 address)
#   IPv6 service: ip6[0] ^ ip6[1] ^ ip6[2] ^ ip6[3]; an IPv4 address has zeros after its 4 bytes
#                 in the kernel's union, so it folds to itself
cdef inline uint32_t addr_fold(const uint8_t *a, uint8_t addr_af, uint8_t svc_af) noexcept nogil:
    if addr_af != 6:
        return _be32(a + 12)
    if svc_af != 6:
        return _be32(a)
    return _be32(a) ^ _be32(a + 4) ^ _be32(a + 8) ^ _be32(a + 12)
