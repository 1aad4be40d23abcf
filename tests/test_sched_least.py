"""lc, wlc, sed, nq (ip_vs_lc.c, ip_vs_wlc.c, ip_vs_sed.c, ip_vs_nq.c): overheads, strict
comparisons and list-order tie-breaks, worked by hand from the reference (section 10, V13)."""
import pytest

from svc_helpers import build, edit, picks, set_counts


def test_v13_lc_ties_go_to_the_earliest_in_list_order():
    t, svc = build("lc", "ABC")                     # list [C, B, A]
    assert picks(t, svc, 4, connect=True) == "CBAC"


def test_v13_wlc_strict_comparison_keeps_the_earlier_dest():
    t, svc = build("wlc", [("A", 1), ("B", 2), ("C", 1)])
    set_counts(t, "C", 1)                           # overhead 256
    set_counts(t, "B", 2)                           # 512
    set_counts(t, "A", 1)                           # 256
    assert picks(t, svc, 1) == "C"


def test_lc_overhead_counts_inactive_connections():
    t, svc = build("lc", "ABC")
    set_counts(t, "C", 0, 300)                      # 300
    set_counts(t, "B", 1, 0)                        # 256
    set_counts(t, "A", 1, 1)                        # 257
    assert picks(t, svc, 1) == "B"
    set_counts(t, "B", 1, 45)                       # 301
    assert picks(t, svc, 1) == "A"


def test_lc_skips_quiescent_and_overloaded():
    t, svc = build("lc", ["A", "B", ("C", 1, "-x 1")])
    assert picks(t, svc, 1, connect=True) == "C"    # C now OVERLOAD
    edit(t, "B", 0)
    assert picks(t, svc, 2, connect=True) == "AA"
    edit(t, "A", 0)
    assert picks(t, svc, 1) == "-"


def test_wlc_weighted_ratio():
    t, svc = build("wlc", [("A", 1), ("B", 3)])     # list [B, A]
    set_counts(t, "B", 2)                           # 512 / 3
    set_counts(t, "A", 0, 100)                      # 100 / 1
    assert picks(t, svc, 1) == "A"
    set_counts(t, "B", 3)                           # 768 / 3 = 256 = A's 256 / 1: tie
    set_counts(t, "A", 1)
    assert picks(t, svc, 1) == "B"


def test_wlc_weight_zero_cannot_win():
    t, svc = build("wlc", [("A", 0), ("B", 1)])     # list [B, A]; A idle but quiescent
    set_counts(t, "B", 5)
    assert picks(t, svc, 1) == "B"
    t2, svc2 = build("wlc", [("B", 1), ("A", 0)])   # list [A, B]: the first stage skips A
    set_counts(t2, "B", 5)
    assert picks(t2, svc2, 1) == "B"


def test_wlc_spreads_by_weight_as_connections_accumulate():
    t, svc = build("wlc", [("A", 1), ("B", 2)])     # list [B, A]
    # B (w2) idle and first -> B; then A (0 vs 256/2) -> A; then B (256/2 < 256) -> B ...
    assert picks(t, svc, 6, connect=True) == "BABBAB"


def test_sed_ignores_inactive_and_adds_one():
    t, svc = build("sed", [("A", 1), ("B", 2)])     # list [B, A]
    set_counts(t, "B", 1, 50)                       # (1 + 1) / 2
    set_counts(t, "A", 0, 0)                        # (0 + 1) / 1: tie, earlier (B) kept
    assert picks(t, svc, 1) == "B"
    set_counts(t, "B", 2, 0)                        # 3 / 2 > 1 / 1
    assert picks(t, svc, 1) == "A"


def test_nq_returns_the_first_idle_dest():
    t, svc = build("nq", [("X", 1), ("Y", 10)])     # list [Y, X]
    assert picks(t, svc, 1) == "Y"
    set_counts(t, "Y", 1)
    assert picks(t, svc, 1) == "X"                  # X idle: taken although Y has weight 10
    t2, svc2 = build("nq", [("Y", 10), ("X", 1)])   # list [X, Y], both idle
    assert picks(t2, svc2, 1) == "X"
    # sed picks by expected delay instead: (0 + 1) * 10 > (0 + 1) * 1 -> Y
    t3, svc3 = build("sed", [("Y", 10), ("X", 1)])
    assert picks(t3, svc3, 1) == "Y"


def test_nq_all_busy_uses_expected_delay_with_strict_ties():
    t, svc = build("nq", [("A", 1), ("B", 2)])      # list [B, A]
    set_counts(t, "B", 3)                           # 4 / 2
    set_counts(t, "A", 1)                           # 2 / 1: tie -> B
    assert picks(t, svc, 1) == "B"
    set_counts(t, "B", 4)                           # 5 / 2 > 2 / 1
    assert picks(t, svc, 1) == "A"


def test_nq_skips_quiescent_idle_dest():
    t, svc = build("nq", [("B", 1), ("Z", 0)])      # list [Z, B]
    set_counts(t, "B", 2)
    assert picks(t, svc, 1) == "B"


@pytest.mark.parametrize("sched", ["lc", "wlc", "sed", "nq"])
def test_empty_and_all_quiescent(sched):
    t, svc = build(sched, [])
    assert picks(t, svc, 1) == "-"
    t, svc = build(sched, [("A", 0), ("B", 0)])
    assert picks(t, svc, 1) == "-"
