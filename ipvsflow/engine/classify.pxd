# The firewall-mark classifier: mark rules (ipvsflow.marks.MarkRule) compiled to C arrays and
# evaluated per packet without the GIL, setting pkt_desc.fwmark as netfilter's prerouting/input
# chains would before IPVS sees the packet.
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from ipvsflow.io.batch cimport pkt_desc

# mark_rule.flags
cdef enum:
    MR_PROTO = 0x0001           # check the L4 protocol against protos[]
    MR_PROTO_NEG = 0x0002       # ... not in it
    MR_SRC_NEG = 0x0004         # source address not in the ranges
    MR_DST_NEG = 0x0008
    MR_SPORT_NEG = 0x0010
    MR_DPORT_NEG = 0x0020
    MR_MARK = 0x0040            # (mark & mark_mask) == mark_value
    MR_MARK_NEG = 0x0080
    MR_STOP = 0x0100            # accept/return: continue with rule `next` (the next chain)

# mark_rule.port_protos bits
cdef enum:
    MP_TCP = 1
    MP_UDP = 2
    MP_SCTP = 4

ctypedef struct addr_range:         # inclusive; the 16-byte address (IPv4 mapped ::ffff:a.b.c.d)
    uint64_t lo_hi                  # as two big-endian 64-bit halves, compared as integers
    uint64_t lo_lo
    uint64_t hi_hi
    uint64_t hi_lo

ctypedef struct port_range:
    uint16_t lo
    uint16_t hi

ctypedef struct mark_rule:
    uint64_t protos[4]              # L4 protocol bitmap (MR_PROTO)
    uint32_t mark_value             # mark match (MR_MARK)
    uint32_t mark_mask
    uint32_t set_and                # action: mark = (mark & set_and) ^ set_xor
    uint32_t set_xor
    uint32_t src_off                # ranges in the table's addrs[] / ports[]; *_n = 0: no check
    uint32_t dst_off
    uint32_t sport_off
    uint32_t dport_off
    uint16_t src_n
    uint16_t dst_n
    uint16_t sport_n
    uint16_t dport_n
    uint32_t next                   # first rule of the next chain (MR_STOP)
    uint16_t flags                  # MR_*
    uint8_t family                  # 0 any, 4, 6
    uint8_t port_protos             # MP_*: a port match needs one of these with parsed ports

ctypedef struct mark_table:
    mark_rule *rules
    uint32_t n_rules
    addr_range *addrs
    uint32_t n_addrs
    port_range *ports
    uint32_t n_ports

# Sets pkts[i].fwmark for i < n (0 when no rule matched or the packet has no IP header).
cdef void classify_burst(const mark_table *t, pkt_desc *pkts, uint32_t n) noexcept nogil
cdef uint32_t classify_one(const mark_table *t, const pkt_desc *p) noexcept nogil


cdef class Classifier:
    cdef mark_table t
    cdef readonly object rules       # tuple of MarkRule in evaluation order
