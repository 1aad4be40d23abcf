from libc.stdint cimport uint8_t, uint32_t, uint64_t


cdef class NullSink:
    # Counts what it is given and discards it (benchmarks, dry runs).
    cdef readonly uint64_t packets
    cdef readonly uint64_t bytes_written
    cdef uint32_t _linktype         # LT_ANY: frames keep their own link type
    cdef inline void take(self, uint32_t caplen) noexcept:
        self.packets += 1
        self.bytes_written += caplen
    cdef inline void take_many(self, uint32_t n, uint64_t nbytes) noexcept:
        self.packets += n
        self.bytes_written += nbytes
