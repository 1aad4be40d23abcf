# Maglev hashing (ip_vs_mh.c).
from libc.stdint cimport int32_t, uint32_t, uint64_t
from ipvsflow.engine.defs cimport engine_t, service_t
from ipvsflow.engine.sched_common cimport sched_ops
from ipvsflow.io.batch cimport pkt_desc

cdef enum:
    MH_TAB_SIZE = 4093              # primes[CONFIG_IP_VS_MH_TAB_INDEX - 8], default index 12
    MH_TAB_BITS = 6                 # CONFIG_IP_VS_MH_TAB_INDEX / 2

# hsiphash keys (generate_hash_secret): both words of each key hold the same constant
cdef extern from *:
    """
    #define IPVSFLOW_MH_KEY1 2654435761ULL
    #define IPVSFLOW_MH_KEY2 2654446892ULL
    """
    const uint64_t MH_KEY1 "IPVSFLOW_MH_KEY1"
    const uint64_t MH_KEY2 "IPVSFLOW_MH_KEY2"

# service_t.sched_data of an mh service
ctypedef struct mh_state:
    int32_t lookup[MH_TAB_SIZE]     # slot -> dest id (-1 = empty)
    int32_t gcd                     # gcd of the positive last_weights (0: none)
    int32_t rshift                  # weights are shifted down to at most MH_TAB_BITS bits

# A service holding more real servers than MH_TAB_SIZE cannot be mapped (the kernel's -EINVAL).
cdef bint mh_too_many(uint32_t num_dests) noexcept nogil

# The hsiphash of the kernel's ip_vs_mh_hashkey: v = offset + port + ntohl(addr_fold), u32.
cdef uint32_t mh_hashkey(uint32_t fold, uint32_t port, uint64_t key, uint32_t offset) noexcept nogil

cdef int32_t mh_schedule(engine_t *e, service_t *svc, const pkt_desc *p) noexcept nogil
cdef void mh_register(sched_ops *ops) noexcept
