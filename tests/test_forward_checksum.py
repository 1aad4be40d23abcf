"""Checksum primitives of the forwarders against independent references: CRC-32C against
RFC 3720 B.4 and a bitwise implementation, the Internet checksum and RFC 1624 incremental
updates against plain-Python full recomputation."""
import struct

from hypothesis import assume, given, settings, strategies as st

from forward_helpers import crc32c_bitwise, inet_csum, ones_sum
from ipvsflow.forward import crc32c, sctp_checksum, internet_checksum, checksum_replace
from ipvsflow.forward.crc32c import crc32c_portable, implementation

# RFC 3720 appendix B.4 (bytes of the CRC as sent; the value is read little-endian)
RFC3720 = [
    (bytes(32), bytes.fromhex("aa36918a")),
    (b"\xff" * 32, bytes.fromhex("43aba862")),
    (bytes(range(32)), bytes.fromhex("4e79dd46")),
    (bytes(range(31, -1, -1)), bytes.fromhex("5cdb3f11")),
]


def test_crc32c_rfc3720_vectors():
    for data, sent in RFC3720:
        want = struct.unpack("<I", sent)[0]
        assert crc32c(data) == want
        assert crc32c_portable(data) == want
        assert crc32c_bitwise(data) == want     # the test's own reference agrees too
    assert crc32c(b"123456789") == 0xE3069283  # the CRC catalogue's check value
    assert implementation() in ("sse4.2", "slicing-by-8")


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300), st.integers(0, 300))
def test_crc32c_paths_agree_and_chain(data, cut):
    want = crc32c_bitwise(data)
    assert crc32c(data) == want == crc32c_portable(data)
    cut = min(cut, len(data))
    assert crc32c(data[cut:], crc32c(data[:cut])) == want
    # unaligned starts exercise the head loops of both paths
    assert crc32c(memoryview(b"\x00" + data)[1:]) == want


@settings(max_examples=100, deadline=None)
@given(st.binary(min_size=12, max_size=200))
def test_sctp_checksum_ignores_its_own_field(pkt):
    zeroed = pkt[:8] + b"\0\0\0\0" + pkt[12:]
    assert sctp_checksum(pkt) == crc32c_bitwise(zeroed)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_internet_checksum_matches_plain_python(data):
    assert internet_checksum(data) == inet_csum(data)
    # unaligned memory
    assert internet_checksum(memoryview(b"\x01" + data)[1:]) == inet_csum(data)


def test_internet_checksum_known_header():
    hdr = bytes.fromhex("450000730000400040110000c0a80001c0a800c7")
    assert internet_checksum(hdr) == 0xB861


@settings(max_examples=500, deadline=None)
@given(st.binary(min_size=2, max_size=120), st.data())
def test_incremental_update_equals_full_recomputation(data, d):
    """RFC 1624 eqn. 3 on random data with a random aligned change (the kernel's
    ip_vs_check_diff* / csum_fold) gives exactly what a full recomputation gives."""
    if len(data) % 2:
        data += b"\x00"
    nwords = len(data) // 2
    start = d.draw(st.integers(0, nwords - 1))
    width = d.draw(st.sampled_from([1, 2, 8]))
    width = min(width, nwords - start)
    new = d.draw(st.binary(min_size=2 * width, max_size=2 * width))
    old = data[2 * start:2 * start + 2 * width]
    changed = data[:2 * start] + new + data[2 * start + 2 * width:]
    # One's complement has two zeros: if every covered byte is zero the full computation
    # gives 0xffff and eqn. 3 gives 0x0000 (RFC 1624 section 3). Checksummed IP data always
    # has a non-zero word (version, protocol in the pseudo-header), so only that case differs.
    assume(any(changed))
    assert checksum_replace(inet_csum(data), old, new) == inet_csum(changed)


def test_incremental_update_edge_values():
    # words whose sums wrap, an all-ones word, zeros
    for data in (b"\xff\xff\x00\x00", b"\x00\x01\xff\xfe", b"\x80\x00\x80\x00", b"\x00\x00\x00\x00"):
        for new in (b"\xff\xff", b"\x00\x00", b"\x00\x01", b"\xfe\xff"):
            changed = new + data[2:]
            if not any(changed):
                continue        # all-zero data: see the note above
            assert checksum_replace(inet_csum(data), data[:2], new) == inet_csum(changed), (data, new)
    assert ones_sum(b"\xff\xff\xff\xff") == 0xffff
