# Classic pcap reader and the pieces shared with the pcapng reader: the mapped capture file and
# the reader base class (iteration, batching, deferred errors).
from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from ipvsflow.io.batch cimport PacketBatch


cdef class FileBuffer:
    # Read-only bytes of a capture file: an mmap of a regular file, or an in-memory copy of a
    # pipe/character device. Batches keep it alive through PacketBatch.owner.
    cdef const uint8_t *base
    cdef readonly size_t size
    cdef void *_map
    cdef size_t _maplen
    cdef object _keep


cdef class CaptureReader:
    cdef FileBuffer buf
    cdef readonly object path
    cdef readonly uint32_t burst
    cdef readonly uint64_t packets     # records read so far (every record, malformed ones too)
    cdef size_t pos                    # byte offset of the next record/block
    cdef readonly size_t size          # file size in bytes
    cdef object _error                 # pending one-line error, raised after the good packets
    cdef bint _done
    cdef list _linktypes
    # Fill b.pkts[0:] from self.pos (data, caplen, wirelen, ts_ns, index, ifindex, linktype),
    # set b.count, advance pos/packets, set _error on a corrupt record.
    cdef int _fill(self, PacketBatch b) except -1


cdef class PcapReader(CaptureReader):
    cdef bint big_endian
    cdef uint32_t hdrlen               # 16, or 24 for the modified (Kuznetsov) format
    cdef uint32_t ts_mult              # 1000 for microsecond files, 1 for nanosecond
    cdef uint32_t maxcap
    cdef readonly uint32_t snaplen
    cdef readonly uint32_t linktype
    cdef readonly object nanosecond
    cdef readonly tuple version
