from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t

# One output frame of a burst, as a Forwarder hands them to write_recs.
ctypedef struct frame_rec:
    const uint8_t *data
    int64_t ts_ns
    uint32_t caplen
    uint32_t wirelen
    uint8_t kind            # only the records of the kind asked for are written


cdef class PcapWriter:
    # Nanosecond pcap (little-endian) with a large C buffer, flushed in big writes.
    cdef uint8_t *buf
    cdef size_t buflen
    cdef size_t bufcap
    cdef object _file
    cdef bint _own_file
    cdef bint _closed
    cdef readonly uint32_t linktype
    cdef readonly uint32_t snaplen
    cdef readonly uint64_t packets
    cdef readonly uint64_t bytes_written
    # Append one record (data truncated to snaplen). Pure C unless the buffer must be flushed.
    cdef int write_raw(self, const uint8_t *data, uint32_t caplen, uint32_t wirelen,
                       int64_t ts_ns) except -1
    cdef int _flush(self) except -1
    # write_raw for each of recs[0:n] whose kind is ``kind``, in order (one call per burst)
    cdef int write_recs(self, const frame_rec *recs, uint32_t n, uint8_t kind) except -1
