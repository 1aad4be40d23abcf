"""fo and ovf (ip_vs_fo.c, ip_vs_ovf.c), worked by hand from the reference (section 10)."""
from svc_helpers import build, edit, picks, set_counts


def test_fo_highest_weight_ties_to_the_earliest():
    t, svc = build("fo", [("A", 5), ("B", 5), ("C", 2)])   # list [C, B, A]
    assert picks(t, svc, 3) == "BBB"
    edit(t, "A", 6)
    assert picks(t, svc, 1) == "A"


def test_fo_skips_overloaded_and_weight_zero():
    t, svc = build("fo", [("A", 5), ("B", 5, "-x 1"), ("C", 2)])
    assert picks(t, svc, 1, connect=True) == "B"           # B now OVERLOAD
    assert picks(t, svc, 2, connect=True) == "AA"
    edit(t, "A", 0)
    assert picks(t, svc, 1) == "C"
    edit(t, "C", 0)
    assert picks(t, svc, 1) == "-"


def test_ovf_active_above_weight_overflows_equal_does_not():
    t, svc = build("ovf", [("A", 3), ("B", 3), ("C", 1)])  # list [C, B, A]
    assert picks(t, svc, 1) == "B"
    set_counts(t, "B", 3)                                   # equal: still eligible
    assert picks(t, svc, 1) == "B"
    set_counts(t, "B", 4)
    assert picks(t, svc, 1) == "A"
    set_counts(t, "A", 4)
    assert picks(t, svc, 1) == "C"
    set_counts(t, "C", 2)
    assert picks(t, svc, 1) == "-"


def test_ovf_ignores_inactive_connections():
    t, svc = build("ovf", [("A", 1), ("B", 2)])
    set_counts(t, "B", 0, 100)
    assert picks(t, svc, 1) == "B"


def test_ovf_fills_in_order_as_connections_become_active():
    t, svc = build("ovf", [("A", 1), ("B", 2)])             # list [B, A]
    # B takes active 0, 1, 2 (2 is not > 2); at 3 it overflows to A (0, 1); then none
    assert picks(t, svc, 6, connect=True) == "BBBAA-"


def test_ovf_skips_quiescent_and_overloaded():
    t, svc = build("ovf", [("A", 1), ("B", 4, "-x 1")])
    assert picks(t, svc, 1, connect=True) == "B"
    assert picks(t, svc, 1) == "A"
    edit(t, "A", 0)
    assert picks(t, svc, 1) == "-"
