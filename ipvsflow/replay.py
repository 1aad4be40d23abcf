"""Offline replay: feed the bursts of one capture to one or more engines, applying timed events.

An event's time is seconds after the first packet; it applies before the first packet whose
time is at or after it (expiry first runs up to the event's time, as the kernel's timers would).
Several engines receive the very same bursts, so a comparison parses the capture once.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional, Sequence

import numpy as np

from .config import Command, ConfigError, Event


@dataclass
class ReplayStats:
    packets: int = 0
    batches: int = 0
    first_ts_ns: Optional[int] = None
    last_ts_ns: Optional[int] = None
    events_applied: list = field(default_factory=list)   # (Event, packet index it preceded)


# on_decisions(engine_index, batch_rows, decisions) with batch_rows = batch.to_numpy()[start:stop]
DecisionSink = Callable[[int, np.ndarray, np.ndarray], None]


def replay(batches: Iterable, engines: Sequence, events: Sequence[tuple[Event, Command]] = (),
           on_decisions: Optional[DecisionSink] = None,
           on_progress: Optional[Callable[[ReplayStats], None]] = None,
           strict_events: bool = True, until: Optional[float] = None) -> ReplayStats:
    """Run every batch through every engine. Returns totals.

    With ``strict_events`` an event whose time lies after the last packet raises ConfigError
    (it could not have changed anything), naming the event. ``until`` (seconds after the first
    packet) stops before the first packet at or after that time and advances the engines' clocks
    to it.
    """
    pending = sorted(events, key=lambda ec: ec[0].t)
    st = ReplayStats()
    t0: Optional[int] = None
    for batch in batches:
        rows = batch.to_numpy()
        n = len(rows)
        if n == 0:
            continue
        ts = rows["ts_ns"]
        if t0 is None:
            t0 = int(ts[0])
            st.first_ts_ns = t0
        start = 0
        limit = n
        if until is not None:
            late = np.flatnonzero(ts >= t0 + int(round(until * 1e9)))
            if len(late):
                limit = int(late[0])
        while start < limit:
            stop = limit
            if pending:
                ev_ts = t0 + int(round(pending[0][0].t * 1e9))
                due = np.flatnonzero(ts[start:limit] >= ev_ts)
                if len(due):
                    stop = start + int(due[0])
            if stop > start:
                for k, eng in enumerate(engines):
                    dec = eng.process(batch, start, stop)
                    if on_decisions is not None:
                        on_decisions(k, rows[start:stop], dec)
            if stop < limit:
                ev, cmd = pending.pop(0)
                ev_ts = t0 + int(round(ev.t * 1e9))
                for eng in engines:
                    eng.advance(ev_ts)
                    _apply(eng, cmd)
                st.events_applied.append((ev, st.packets + stop))
            start = stop
        st.packets += limit
        st.batches += 1
        if limit < n:
            for eng in engines:
                eng.advance(t0 + int(round(until * 1e9)))
            st.last_ts_ns = int(ts[limit - 1]) if limit else st.last_ts_ns
            return st
        st.last_ts_ns = int(ts[-1]) if st.last_ts_ns is None else max(st.last_ts_ns, int(ts[-1]))
        if on_progress is not None:
            on_progress(st)
    if pending and strict_events:
        ev = pending[0][0]
        span = 0.0 if st.first_ts_ns is None else (st.last_ts_ns - st.first_ts_ns) / 1e9
        raise ConfigError(f"event at +{ev.t:g}s ({ev.line}) is after the last packet of the capture "
                          f"(the capture spans {span:.3f}s)")
    return st


def _apply(eng, cmd: Command) -> None:
    if cmd.op == "sysctl":
        eng.set_sysctl(*cmd.sysctl)
    elif cmd.op == "set-timeouts":
        eng.set_timeouts(*cmd.timeouts)
    else:
        eng.apply(cmd)
