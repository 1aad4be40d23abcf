"""The IPVS model against the real kernel: every oracle fixture (a capture replayed through
Linux 6.1 IPVS in a VM), packet by packet (forwarded or not, which real server, that client's
entries and every server's counters after the packet) and on the final connection table."""
import pytest

from model.oracle_fixture import _check_dest_endpoint, apply_marks, compare, fixture_dirs, load

FIXTURES = fixture_dirs()


def test_fixtures_are_present():
    assert len(FIXTURES) >= 40, f"only {len(FIXTURES)} oracle fixtures found"


@pytest.mark.parametrize("path", FIXTURES, ids=[p.name for p in FIXTURES])
def test_model_agrees_with_kernel(path):
    fx = load(path)
    if fx.unsupported:
        pytest.fail(f"{fx.name} needs {fx.unsupported}, which the model does not implement")
    problems, decisions = compare(fx)
    assert len(decisions) == sum(fx.injected)
    assert not problems, "\n".join(problems[:30])


# ---- the same fixtures through the fixture harness's own loader and comparisons ---------------

def _harness():
    return pytest.importorskip("oracle_harness")


def model_run(H, hfx):
    """A harness Run of the model, built from the harness's configuration and event schedule."""
    from model import IPVSModel, read_pcap
    from model.ipvs_model import NS
    cfg = H.build_config(hfx)
    model = IPVSModel(cfg, conntrack_hooks=H.conntrack_active(hfx))
    packets = read_pcap(hfx.pcap)
    apply_marks(hfx.path, packets)
    ts = H.packet_ts_ns(hfx)
    events = {}
    for at, cmd in H.events(hfx):
        _check_dest_endpoint(cmd, cmd.line)
        events.setdefault(at, []).append(cmd)

    def keys(rows, keep=lambda k: True):
        out = []
        for r in rows:
            k = H.ConnKey(r["proto"].lower(), r["client"], r["cport"], r["vip"], r["vport"], r["rs"],
                          r["rport"], r["state"])
            if keep(k):
                out.append((k, r["expires"]))
        return out

    run = H.Run()
    for i in H.injected_indices(hfx):
        for cmd in events.get(i, ()):
            model.advance(ts[i])
            model.apply(cmd)
        pkt = packets[i]
        pkt.ts_ns = ts[i]
        d = model.process(pkt, i)
        if hfx.packet(i)["dir"] == "s2c":
            forwarded = d["action"] == "hit" and d["dir"] == "out"
        else:
            forwarded = d["action"] in FORWARDED
        rs_ip = d["rs"].rsplit(":", 1)[0].strip("[]") if forwarded and d["rs"] else None
        run.steps[i] = H.Step(i, forwarded, rs_ip, d["action"], d["state"] or "",
                              keys(model.connections(), H.flow_filter(hfx, i)))
    n = len(hfx.expected["packets"])
    for cmd in events.get(n, ()):
        model.apply(cmd)
    model.advance((ts[-1] if ts else 0) + int(float(hfx.expected["config"].get("tail") or 0.5) * NS))
    run.final_conns = keys(model.connections())
    return run


FORWARDED = ("new", "hit", "resched")


@pytest.mark.parametrize("name", [p.name for p in FIXTURES])
def test_model_agrees_with_kernel_through_fixture_harness(name):
    H = _harness()
    fx = load(FIXTURES[[p.name for p in FIXTURES].index(name)])
    if fx.unsupported:
        pytest.fail(f"{name} needs {fx.unsupported}, which the model does not implement")
    hfx = H.load_fixture(name)
    H.assert_matches(hfx, model_run(H, hfx))
