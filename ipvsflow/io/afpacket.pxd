# Live packet I/O on Linux AF_PACKET sockets: a TPACKET_V3 receive ring read in bursts into a
# PacketBatch without copying, and a transmit port (sendmmsg bursts or a PACKET_TX_RING).
from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from ipvsflow.io.batch cimport PacketBatch

cdef class RxRing:
    cdef int fd
    cdef uint8_t *ring               # mmap of block_nr blocks
    cdef size_t ring_len
    cdef readonly uint32_t block_size
    cdef readonly uint32_t block_count
    cdef readonly uint32_t retire_ms
    cdef readonly uint32_t ifindex
    cdef readonly str ifname
    cdef readonly bint promisc
    cdef readonly bint accept_otherhost
    cdef readonly object fanout      # (group id, mode) or None
    # reader position: block being read (or next to open), blocks read but not yet handed back
    # (the pend blocks before cur), packets left in the open block
    cdef uint32_t cur
    cdef uint32_t pend
    cdef uint32_t left
    cdef uint8_t *next_pkt
    cdef bint cur_open
    # counters
    cdef readonly uint64_t packets       # put into batches
    cdef readonly uint64_t bytes
    cdef readonly uint64_t outgoing      # PACKET_OUTGOING frames skipped (our own transmissions)
    cdef readonly uint64_t not_host      # broadcast / multicast / other-host frames skipped
    cdef readonly uint64_t truncated     # frames cut short by the ring (never forwarded)
    cdef readonly uint64_t csum_partial  # frames left with a partial checksum (offload): completed
    cdef readonly uint64_t blocks        # blocks handed back to the kernel
    cdef readonly uint64_t vlan_restored # 802.1Q/802.1ad tag the kernel had moved out of the
                                         # frame (TP_STATUS_VLAN_VALID) put back in place
    cdef readonly uint64_t vlan_no_room  # same, without room for it in the ring: dropped
    cdef uint64_t k_packets              # PACKET_STATISTICS, accumulated (reading resets them)
    cdef uint64_t k_drops
    cdef uint64_t k_freeze

    # Fill b.pkts[start:] with ready packets (at most capacity - start); returns how many were
    # added. Packets point into the ring; call release() once they are processed.
    cdef uint32_t fill(self, PacketBatch b, uint32_t start, uint64_t first_index) noexcept nogil
    # Hand every fully read block back to the kernel; returns how many.
    cdef uint32_t release_blocks(self) noexcept nogil


cdef class TxPort:
    cdef int fd
    cdef readonly uint32_t ifindex
    cdef readonly str ifname
    cdef readonly uint32_t mtu
    cdef readonly bytes mac
    cdef uint8_t mac_c[6]
    cdef readonly str mode               # "sendmmsg" or "ring"
    cdef readonly bint qdisc_bypass
    # sendmmsg queue (zero copy: the frames must stay valid until flush)
    cdef void *msgs                      # struct mmsghdr[qcap]
    cdef void *iovs                      # struct iovec[qcap]
    cdef uint32_t qcap
    cdef uint32_t qlen
    # TX ring
    cdef uint8_t *ring
    cdef size_t ring_len
    cdef uint32_t frame_size
    cdef uint32_t frame_nr
    cdef uint32_t head
    cdef uint32_t pending
    # counters
    cdef readonly uint64_t packets
    cdef readonly uint64_t bytes
    cdef readonly uint64_t too_big       # longer than the interface MTU allows: dropped
    cdef readonly uint64_t errors        # the kernel refused the frame
    cdef readonly uint64_t ring_full     # TX ring slot still busy after a flush: dropped
    cdef readonly int last_errno
    cdef list _keep                      # Python frames queued by send(), alive until flush

    # Queue one Ethernet frame (0: queued, 1: dropped and counted).
    cdef int put(self, const uint8_t *frame, uint32_t length) noexcept nogil
    # Transmit everything queued; returns the number of frames the kernel took.
    cdef uint32_t flush_queue(self) noexcept nogil
