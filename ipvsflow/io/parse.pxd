# The one-pass, allocation-free packet parser. The reader sets data, caplen, wirelen, ts_ns,
# index, ifindex and linktype; the parser fills every other field (fwmark is left alone). It never
# reads past caplen and never fails: problems are reported in pkt_desc.status.
from libc.stdint cimport uint32_t
from ipvsflow.io.batch cimport pkt_desc

cdef void parse_packet(pkt_desc *p) noexcept nogil
cdef void parse_burst(pkt_desc *p, uint32_t n) noexcept nogil
