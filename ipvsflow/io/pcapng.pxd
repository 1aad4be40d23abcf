from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from ipvsflow.io.pcap cimport CaptureReader

cdef extern from *:
    ctypedef unsigned long long uint128_t "unsigned __int128"

ctypedef struct iface_t:
    uint32_t global_id      # interface number in file order (what pkt_desc.ifindex gets)
    uint32_t snaplen
    uint16_t linktype
    uint8_t ts_kind         # 0: ts * mult, 1: ts * 1e9 / div, 2: (ts * 1e9) >> shift
    uint8_t shift
    uint64_t mult
    uint128_t div
    int64_t offset_ns       # if_tsoffset, in ns


cdef class PcapngReader(CaptureReader):
    cdef iface_t *ifaces     # interfaces of the current section (ids restart per section)
    cdef uint32_t n_ifaces
    cdef uint32_t ifaces_cap
    cdef bint big            # byte order of the current section
    cdef readonly uint32_t sections
    cdef int _add_iface(self, size_t off, const uint8_t *body, uint32_t bodylen) except -2
