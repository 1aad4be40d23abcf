"""open_capture: open a capture file and pick its reader by the file's magic number."""
import os
import stat

from .pcap import (
    CaptureError, FileBuffer, PcapReader, PCAP_MAGIC_US, PCAP_MAGIC_NS, PCAP_MAGIC_MODIFIED,
)
from .pcapng import PcapngReader, PCAPNG_SHB_TYPE

__all__ = ["open_capture", "CaptureError", "detect_format"]

_PCAP_MAGICS = {
    m.to_bytes(4, order) for m in (PCAP_MAGIC_US, PCAP_MAGIC_NS, PCAP_MAGIC_MODIFIED)
    for order in ("little", "big")
}
_PCAPNG_MAGIC = PCAPNG_SHB_TYPE.to_bytes(4, "little")   # palindromic: same in both byte orders
_HINTS = {
    b"\x1f\x8b": "gzip-compressed; decompress it first",
    b"\x28\xb5\x2f\xfd": "zstd-compressed; decompress it first",
    b"\xfd7zXZ": "xz-compressed; decompress it first",
    b"BZh": "bzip2-compressed; decompress it first",
}


def detect_format(head):
    """'pcap', 'pcapng' or None from a file's first bytes (at least 4)."""
    magic = bytes(head[:4])
    if magic in _PCAP_MAGICS:
        return "pcap"
    if magic == _PCAPNG_MAGIC:
        return "pcapng"
    return None


def _open_buffer(path):
    """Map (or, for pipes and devices, read) the whole file; CaptureError on any failure."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise CaptureError(f"{path}: no such file") from None
    except NotADirectoryError:
        raise CaptureError(f"{path}: no such file (a path component is not a directory)") from None
    except PermissionError:
        raise CaptureError(f"{path}: permission denied") from None
    except OSError as e:
        raise CaptureError(f"{path}: cannot access: {e.strerror or e}") from None
    if stat.S_ISDIR(st.st_mode):
        raise CaptureError(f"{path}: is a directory, not a capture file")
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except PermissionError:
        raise CaptureError(f"{path}: permission denied") from None
    except OSError as e:
        raise CaptureError(f"{path}: cannot open: {e.strerror or e}") from None
    try:
        st = os.fstat(fd)
        if stat.S_ISREG(st.st_mode):
            if st.st_size == 0:
                raise CaptureError(f"{path}: empty file")
            try:
                return FileBuffer.map_fd(fd, st.st_size)
            except OSError as e:
                raise CaptureError(f"{path}: cannot map: {e.strerror or e}") from None
        # A pipe or character device (e.g. /dev/stdin, <(zcat f.pcap.gz)): read it into memory.
        chunks = []
        try:
            while True:
                chunk = os.read(fd, 1 << 20)
                if not chunk:
                    break
                chunks.append(chunk)
        except OSError as e:
            raise CaptureError(f"{path}: read error: {e.strerror or e}") from None
        data = b"".join(chunks)
        if not data:
            raise CaptureError(f"{path}: empty file")
        return FileBuffer.from_bytes(data)
    finally:
        os.close(fd)


def open_capture(path, burst=256):
    """Open a pcap or pcapng file (chosen by its magic number, not its name).

    Returns a reader: iterate it for PacketBatch objects of up to ``burst`` packets (a fresh
    batch per burst; each holds the mapped file alive through ``batch.owner``, so batches and
    their numpy views stay valid after the reader is closed). The reader has ``packets``,
    ``linktypes``, ``bytes_read``, ``size``, ``close()`` and is a context manager.

    Raises CaptureError (a ValueError) with a one-line message for a missing file, a directory,
    permission denied, an empty file, an unknown format or a truncated header; a corrupt or
    truncated record raises CaptureError (naming its byte offset) during iteration, after every
    good packet before it has been yielded.
    """
    path = os.fspath(path)
    if not isinstance(burst, int) or burst < 1 or burst > 0xFFFFFFFF:
        raise ValueError(f"burst must be a positive integer, got {burst!r}")
    buf = _open_buffer(path)
    head = buf.head(8)
    fmt = detect_format(head) if len(head) >= 4 else None
    if fmt == "pcap":
        return PcapReader(buf, burst, path)
    if fmt == "pcapng":
        return PcapngReader(buf, burst, path)
    if len(head) < 4 and any(m.startswith(head) for m in _PCAP_MAGICS | {_PCAPNG_MAGIC}):
        raise CaptureError(f"{path}: truncated header ({len(head)} bytes)")
    hint = next((h for m, h in _HINTS.items() if head.startswith(m)), None)
    msg = f"{path}: not a pcap or pcapng file (first bytes: {head.hex(' ')})"
    raise CaptureError(f"{msg}; {hint}" if hint else msg)
