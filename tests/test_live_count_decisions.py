"""count_decisions (the live loop's per-burst decision counters) against numpy's own count."""
import numpy as np
import pytest

from ipvsflow.engine import DECISION_DTYPE
from ipvsflow.live._fast import count_decisions


def expected(dec, counts):
    out = counts.copy()
    np.add.at(out, (dec["action"].astype(np.int64) & 7) * 64 + (dec["reason"] & 63), 1)
    return out


@pytest.mark.parametrize("seed", range(4))
def test_runs_and_singles_match_numpy(seed):
    rng = np.random.default_rng(seed)
    # runs of 1 to 40 equal (action, reason), values past the slot ranges included (masked)
    lens = rng.integers(1, 41, size=60)
    kinds = rng.integers(0, 256, size=(60, 2))
    dec = np.zeros(int(lens.sum()), dtype=DECISION_DTYPE)
    dec["action"] = np.repeat(kinds[:, 0], lens)
    dec["reason"] = np.repeat(kinds[:, 1], lens)
    # the neighbouring fields differ record to record: they must not matter
    dec["dir"] = rng.integers(0, 256, size=len(dec))
    dec["rs"] = rng.integers(-5, 5, size=len(dec))
    counts = rng.integers(0, 1000, size=512).astype(np.uint64)
    want = expected(dec, counts)
    count_decisions(dec, counts)
    assert np.array_equal(counts, want)
    assert int(counts.sum() - want.sum()) == 0


def test_alternating_kinds_and_edges():
    dec = np.zeros(7, dtype=DECISION_DTYPE)
    dec["action"] = [1, 2, 1, 2, 1, 9, 1]      # 9 & 7 == 1: a new run, the same slot
    dec["reason"] = [3, 3, 3, 3, 3, 3, 67]     # 67 & 63 == 3
    counts = np.zeros(512, dtype=np.uint64)
    count_decisions(dec, counts)
    assert counts[1 * 64 + 3] == 5 and counts[2 * 64 + 3] == 2 and counts.sum() == 7
    count_decisions(dec[:0], counts)            # nothing to count
    assert counts.sum() == 7
    count_decisions(dec[:1], counts)
    assert counts[1 * 64 + 3] == 6
