"""Capture reading through pyshark/tshark: the slow, universal path.

``open_pyshark(path, display_filter=None, burst=256)`` reads anything tshark reads (every
capture format tshark knows, compressed files) and can apply a Wireshark display filter. It
yields the same PacketBatch objects as :func:`ipvsflow.io.open_capture`: the raw frame bytes come
from tshark (``-T json -x``, through pyshark's process and stream handling), timestamps to the
nanosecond, wire lengths and interfaces from the frame fields, and the batches are parsed by
the same C parser. On a pcap/pcapng file the rows equal the fast readers' rows except for the
``data`` pointer.

It runs at a few thousand packets per second: use it for formats the fast readers do not
handle and for display filters, not for bulk work.

* ``index`` is the packet's position among the file's packet records (every record counted,
  as the fast readers do), also when a display filter skips packets.
* ``linktype`` and ``ifindex`` come from the file's own headers when it is pcap or pcapng
  (interfaces numbered in file order across sections, as the fast reader does); for other
  formats from tshark's encapsulation (0xFFFF when it has no LINKTYPE_ equivalent) and
  per-section interface id.
* Simple packet blocks carry no timestamp: ``ts_ns`` is 0, as with the fast reader.
* Errors: CaptureError for a file that cannot be opened; for a file tshark stops reading
  (truncated, corrupt, unknown format) or a display filter it rejects, after every packet
  before the problem was yielded, with tshark's message.

pyshark quirks handled here: the capture runs on a private asyncio event loop (pyshark's
default installs a process-wide child watcher and borrows the current loop); called from a
running loop (a coroutine, Jupyter), that private loop runs in a worker thread; tshark is
left to exit by itself at the end of the file (pyshark kills it, which races asyncio's child
watcher into a spurious "exit code 255"), killed when iteration stops early, and the loop is
always closed, so no "event loop is closed" or unclosed-transport warnings follow; pyshark's
own packet objects (which fail on frames without a timestamp, such as simple packet blocks and
custom blocks, and are slow) are bypassed in favour of the frame fields and raw bytes of its
JSON.
"""
import asyncio
import json
import os
import queue
import stat
import struct
import threading
from decimal import Decimal

from .batch import PacketBatch
from .pcap import CaptureError

__all__ = ["open_pyshark", "PysharkReader", "LINKTYPE_OF_WTAP_ENCAP"]

#: Wireshark's WTAP_ENCAP_* (frame.encap_type) -> LINKTYPE_* for the link types the parser
#: knows (checked by reading a pcap of each link type with tshark 4.0).
LINKTYPE_OF_WTAP_ENCAP = {
    1: 1,        # Ethernet
    15: 0,       # BSD loopback / null
    7: 101,      # raw IP (also LINKTYPE 12 and 14)
    129: 228,    # raw IPv4
    130: 229,    # raw IPv6
    174: 108,    # OpenBSD loopback
    25: 113,     # Linux cooked capture v1
    210: 276,    # Linux cooked capture v2
}
LINKTYPE_UNKNOWN = 0xFFFF

_TSHARK_VERSIONS = {}
_TSHARK_EXIT_WAIT = 30.0     # seconds tshark gets to exit after its output ended

_PCAP_MAGICS = {0xA1B2C3D4, 0xA1B23C4D, 0xA1B2CD34}     # µs, ns, modified (Kuznetzov) pcap
_SHB = 0x0A0D0D0A
_BOM = 0x1A2B3C4D


def _check_path(path):
    """The fast readers' one-line errors for files that cannot be read at all."""
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
        with open(path, "rb") as f:
            if stat.S_ISREG(st.st_mode) and not f.read(1):
                raise CaptureError(f"{path}: empty file")
    except PermissionError:
        raise CaptureError(f"{path}: permission denied") from None
    except OSError as e:
        raise CaptureError(f"{path}: cannot open: {e.strerror or e}") from None
    return st


def _file_interfaces(path):
    """{(section_number, interface_id): (ifindex, linktype)} read from a pcap / pcapng file's
    headers (sections numbered from 1 as tshark does; classic pcap is section 1, interface 0),
    or None for any other format. Only headers are read; packet data is skipped."""
    try:
        with open(path, "rb") as f:
            head = f.read(24)
            if len(head) < 4:
                return None
            for order in "<>":
                if struct.unpack(order + "I", head[:4])[0] in _PCAP_MAGICS:
                    if len(head) < 24:
                        return None
                    lt = struct.unpack(order + "I", head[20:24])[0] & 0x0FFFFFFF
                    return {(1, 0): (0, lt & 0xFFFF)}
            if struct.unpack("<I", head[:4])[0] != _SHB:
                return None
            f.seek(0)
            out = {}
            section, n_global, local = 0, 0, 0
            order = "<"
            pos = 0
            while True:
                hdr = f.read(12)
                if len(hdr) < 12:
                    break
                btype = struct.unpack(order + "I", hdr[:4])[0]
                if struct.unpack("<I", hdr[:4])[0] == _SHB:
                    bom = hdr[8:12]
                    order = "<" if struct.unpack("<I", bom)[0] == _BOM else ">"
                    btype = _SHB
                    section += 1
                    local = 0
                blen = struct.unpack(order + "I", hdr[4:8])[0]
                if blen < 12 or blen % 4:
                    break
                if btype == 1:
                    lt = struct.unpack(order + "H", hdr[8:10])[0]
                    out[(section, local)] = (n_global, lt)
                    local += 1
                    n_global += 1
                pos += blen
                f.seek(pos)
            return out
    except OSError:
        return None


def _epoch_ns(text):
    return int(Decimal(text) * 1_000_000_000)


class _Frame:
    __slots__ = ("fields", "raw")

    def __init__(self, fields, raw):
        self.fields = fields
        self.raw = raw


def _capture_class():
    """pyshark.FileCapture reading only the frame layer and the raw bytes of each frame."""
    import pyshark      # imported here, not at module level: importing ipvsflow.io stays cheap
    from pyshark.tshark.output_parser.tshark_json import TsharkJsonParser

    class FrameParser(TsharkJsonParser):
        def _parse_single_packet(self, packet):
            layers = json.loads(packet)["_source"]["layers"]
            raw = layers.get("frame_raw")
            if isinstance(raw, list):
                raw = raw[0]
            return _Frame(layers.get("frame", {}), bytes.fromhex(raw) if raw else b"")

    class FrameCapture(pyshark.FileCapture):
        def __init__(self, *args, **kwargs):
            self.stderr_lines = []
            self.exit_code = None
            super().__init__(*args, **kwargs)

        def _setup_tshark_output_parser(self):
            return FrameParser(self._get_tshark_version())

        def _get_tshark_version(self):
            # pyshark runs `tshark -v` for every capture; once per process is enough
            key = self.tshark_path
            if key not in _TSHARK_VERSIONS:
                _TSHARK_VERSIONS[key] = super()._get_tshark_version()
            return _TSHARK_VERSIONS[key]

        async def _handle_process_stderr_forever(self, stderr):
            while True:
                line = await stderr.readline()
                if not line:
                    break
                text = line.decode(errors="replace").rstrip()
                self._last_error_line = text
                self.stderr_lines.append(text)

        async def _cleanup_subprocess(self, process):
            # pyshark kills tshark even after it reached the end of the file; Popen.kill() then
            # reaps the already exited process behind asyncio's child watcher, which reports
            # exit code 255 ("Unknown child process pid"). Let tshark exit by itself at the end
            # of the file; kill it only when the reader is closed early. The exit code is kept
            # for the reader instead of being raised from inside pyshark's generator.
            if process.returncode is None and self._eof_reached:
                try:
                    await asyncio.wait_for(process.wait(), _TSHARK_EXIT_WAIT)
                except asyncio.TimeoutError:
                    pass
            if process.returncode is None:
                try:
                    process.kill()
                except ProcessLookupError:
                    pass
                try:
                    await asyncio.wait_for(process.wait(), _TSHARK_EXIT_WAIT)
                except asyncio.TimeoutError:
                    pass
            self._running_processes.discard(process)
            if self._eof_reached:
                self.exit_code = process.returncode

    return FrameCapture


def _tshark_message(lines, fallback):
    """One line from tshark's stderr: its first 'tshark:' line plus the detail lines after it."""
    lines = [l.strip() for l in lines if l.strip() and "could be dangerous" not in l]
    for i, l in enumerate(lines):
        if l.startswith("tshark:"):
            rest = [x for x in lines[i + 1:] if not x.startswith("^")]
            return " ".join([l[len("tshark:"):].strip()] + rest[:2])
    return lines[-1] if lines else fallback


class PysharkReader:
    """Iterable over PacketBatch objects read through tshark (see the module docstring).

    Attributes: ``packets`` (records yielded so far), ``linktypes`` (link types seen, in order of
    first appearance), ``size`` (file size in bytes). ``close()`` stops tshark; it is also a
    context manager. A reader can be iterated once.
    """

    def __init__(self, path, display_filter=None, burst=256, tshark_path=None):
        self.path = os.fspath(path)
        if not isinstance(burst, int) or burst < 1 or burst > 0xFFFFFFFF:
            raise ValueError(f"burst must be a positive integer, got {burst!r}")
        if display_filter is not None and not isinstance(display_filter, str):
            raise TypeError("display_filter must be a string")
        st = _check_path(self.path)
        self.size = st.st_size
        self.burst = burst
        self.display_filter = display_filter
        self.tshark_path = tshark_path
        self.packets = 0
        self._linktypes = []
        self._gen = None
        self._started = False
        self._closed = False

    @property
    def linktypes(self):
        return tuple(self._linktypes)

    def __iter__(self):
        if self._started:
            raise RuntimeError("a PysharkReader can be iterated only once")
        self._started = True
        try:
            asyncio.get_running_loop()
            in_loop = True
        except RuntimeError:
            in_loop = False
        # Inside a running event loop (a coroutine, Jupyter) this thread cannot run another
        # loop: tshark is then driven from a worker thread with its own loop.
        self._gen = self._batches_threaded() if in_loop else self._batches()
        return self._gen

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        """Stop tshark and release the event loop (safe to call more than once)."""
        self._closed = True
        if self._gen is not None:
            self._gen.close()
            self._gen = None

    def _batches(self):
        FrameCapture = _capture_class()
        interfaces = _file_interfaces(self.path)
        # With a user filter, also let through frames that are not packets (pcapng custom
        # blocks have no encapsulation) so packet indexes can be counted exactly.
        flt = None
        if self.display_filter:
            flt = f"({self.display_filter}) || !frame.encap_type"
        loop = asyncio.new_event_loop()
        cap = None
        error = None
        lines, code = [], None
        try:
            cap = FrameCapture(self.path, display_filter=flt, use_json=True, include_raw=True,
                               keep_packets=False, eventloop=loop, tshark_path=self.tshark_path,
                               custom_parameters=["-J", "frame"])
            pending = []
            non_packets = 0
            frames = iter(cap)
            try:
                for fr in frames:
                    f = fr.fields
                    if "frame.encap_type" not in f:
                        # not a packet record (pcapng custom block, event record): tshark numbers
                        # it as a frame, the readers do not count it
                        non_packets += 1
                        continue
                    index = int(f["frame.number"]) - 1 - non_packets
                    section = int(f.get("frame.section_number", 1))
                    if_id = int(f.get("frame.interface_id", 0))
                    known = interfaces.get((section, if_id)) if interfaces else None
                    if known is not None:
                        ifindex, linktype = known
                    else:
                        ifindex = if_id
                        linktype = LINKTYPE_OF_WTAP_ENCAP.get(int(f["frame.encap_type"]), LINKTYPE_UNKNOWN)
                    ts = f.get("frame.time_epoch")
                    data = fr.raw
                    wirelen = int(f.get("frame.len", len(data)))
                    if linktype not in self._linktypes:
                        self._linktypes.append(linktype)
                    pending.append((index, (_epoch_ns(ts) if ts else 0, data, max(wirelen, len(data)),
                                            ifindex, linktype)))
                    if len(pending) == self.burst:
                        yield self._make_batch(pending)
                        pending = []
                if pending:
                    yield self._make_batch(pending)
            finally:
                frames.close()
        finally:
            if cap is not None:
                cap.close()
                lines, code = cap.stderr_lines, cap.exit_code
            try:
                loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                loop.close()
        if code:
            error = f"exit code {code}"
        if error is not None and not self._closed:
            raise CaptureError(f"{self.path}: tshark: {_tshark_message(lines, error)}")

    def _batches_threaded(self):
        q = queue.Queue(maxsize=4)
        stop = threading.Event()
        done = object()

        def put(item):
            while not stop.is_set():
                try:
                    q.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    pass
            return False

        def work():
            gen = self._batches()
            try:
                for b in gen:
                    if not put(b):
                        break
                else:
                    put(done)
            except BaseException as exc:      # handed to the consumer, raised there
                put(exc)
            finally:
                gen.close()

        worker = threading.Thread(target=work, name="ipvsflow-pyshark", daemon=True)
        worker.start()
        try:
            while True:
                item = q.get()
                if item is done:
                    break
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
            worker.join()

    def _make_batch(self, pending):
        first = pending[0][0]
        b = PacketBatch.from_packets([p for _, p in pending], first_index=first)
        idx = [i for i, _ in pending]
        if idx[-1] - first != len(idx) - 1:         # a display filter skipped packets
            b.to_numpy()["index"] = idx
        self.packets += len(pending)
        return b


def open_pyshark(path, display_filter=None, burst=256, tshark_path=None):
    """Read a capture through pyshark/tshark; see the module docstring.

    Returns a PysharkReader: iterate it for PacketBatch objects of up to ``burst`` packets.
    ``display_filter`` is a Wireshark display filter (``"tcp.port == 80"``). Raises
    CaptureError for a file that cannot be opened; a file tshark cannot read to the end raises
    CaptureError after every packet before the problem was yielded.
    """
    return PysharkReader(path, display_filter=display_filter, burst=burst, tshark_path=tshark_path)
