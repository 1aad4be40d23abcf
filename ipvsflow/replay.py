"""Offline replay: feed the bursts of one capture to one or more engines, applying timed events.

An event's time is seconds after the first packet; it applies before the first packet whose
time is at or after it (expiry first runs up to the event's time, as the kernel's timers would).
Several engines receive the very same bursts, so a comparison parses the capture once.

A ``clock`` (optional) is told the first packet's time and then asked for sampling boundaries:
before the first packet at or after a boundary, every engine's clock is advanced to it (its
timers fire, as the kernel's would in real time) and ``clock.tick(boundary)`` records what it
wants and returns the next boundary.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional, Sequence

import numpy as np

from ._analysis import burst_limit, first_at_or_after, first_ts
from .config import Command, ConfigError, Event


@dataclass
class ReplayStats:
    packets: int = 0
    batches: int = 0
    first_ts_ns: Optional[int] = None
    last_ts_ns: Optional[int] = None
    events_applied: list = field(default_factory=list)   # (Event, index of the packet it preceded)


# on_decisions(engine_index, batch, start, stop, decisions): packets [start, stop) of batch
DecisionSink = Callable[[int, object, int, int, np.ndarray], None]
_NEVER = 1 << 62


def replay(batches: Iterable, engines: Sequence, events: Sequence[tuple[Event, Command]] = (),
           on_decisions: Optional[DecisionSink] = None,
           on_progress: Optional[Callable[[ReplayStats], None]] = None,
           strict_events: bool = True, until: Optional[float] = None,
           on_event: Optional[Callable[[Event, Command, int], None]] = None,
           clock=None) -> ReplayStats:
    """Run every batch through every engine. Returns totals.

    With ``strict_events`` an event whose time lies after the last packet raises ConfigError
    (it could not have changed anything), naming the event. ``until`` (seconds after the first
    packet) stops before the first packet at or after that time and advances the engines' clocks
    to it. ``on_event(event, command, packet_index)`` runs after each event was applied.
    """
    pending = sorted(events, key=lambda ec: ec[0].t)
    st = ReplayStats()
    t0: Optional[int] = None
    ev_ts = tick_ts = until_ts = _NEVER
    for batch in batches:
        n = batch.count
        if n == 0:
            continue
        if t0 is None:
            t0 = first_ts(batch)
            st.first_ts_ns = t0
            if pending:
                ev_ts = t0 + int(round(pending[0][0].t * 1e9))
            if clock is not None:
                tick_ts = clock.first(t0)
                tick_ts = _NEVER if tick_ts is None else int(tick_ts)
            if until is not None:
                until_ts = min(t0 + int(round(until * 1e9)), _NEVER)
        limit, tmax = burst_limit(batch, until_ts)
        start = 0
        while True:
            cut = ev_ts if ev_ts <= tick_ts else tick_ts
            stop = limit
            if tmax >= cut and start < limit:
                stop = first_at_or_after(batch, start, limit, cut)
            if stop > start:
                for k, eng in enumerate(engines):
                    dec = eng.process(batch, start, stop)
                    if on_decisions is not None:
                        on_decisions(k, batch, start, stop, dec)
                start = stop
            if start >= limit:
                break
            # packet ``start`` is at or after ``cut``: the boundary or event comes first
            if cut == tick_ts:
                for eng in engines:
                    eng.advance(tick_ts)
                nxt = clock.tick(tick_ts)
                tick_ts = _NEVER if nxt is None else max(int(nxt), tick_ts + 1)
            else:
                ev, cmd = pending.pop(0)
                for eng in engines:
                    eng.advance(ev_ts)
                    _apply(eng, cmd)
                st.events_applied.append((ev, st.packets + start))
                if on_event is not None:
                    on_event(ev, cmd, st.packets + start)
                ev_ts = t0 + int(round(pending[0][0].t * 1e9)) if pending else _NEVER
        st.packets += limit
        st.batches += 1
        if limit:
            st.last_ts_ns = tmax if st.last_ts_ns is None else max(st.last_ts_ns, tmax)
        if on_progress is not None:
            on_progress(st)
        if limit < n:
            for eng in engines:
                eng.advance(until_ts)
            return st
    if until_ts != _NEVER:
        for eng in engines:
            eng.advance(until_ts)
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
