# CRC-32C (Castagnoli), the SCTP checksum (RFC 4960 appendix B, RFC 3309).
from libc.stdint cimport uint8_t, uint32_t

# Raw register update: ``crc`` is the running register (start with 0xffffffff); the CRC of a
# message is the register after the last byte, inverted. Uses the SSE4.2 crc32 instruction when
# the CPU has it (checked once with cpuid), else slicing-by-8 tables.
cdef uint32_t crc32c_update(uint32_t crc, const uint8_t *p, size_t n) noexcept nogil
# The portable path alone (for tests and for CPUs without SSE4.2).
cdef uint32_t crc32c_update_sw(uint32_t crc, const uint8_t *p, size_t n) noexcept nogil
# SCTP packet checksum as the kernel's sctp_compute_cksum: CRC-32C over the SCTP header and
# payload (n bytes at p) with the checksum field (bytes 8..11) taken as zero. The result is the
# value to store little-endian at p + 8.
cdef uint32_t sctp_cksum(const uint8_t *p, size_t n) noexcept nogil
