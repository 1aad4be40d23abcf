"""The engine against the real kernel, live: scenarios are replayed through the qemu oracle VM
(../shared/oracle, one ~6 s VM run per scenario) into tmp_path and compared with the engine directly.

Opt-in: IPVS_ORACLE=1. Knobs:
  IPVS_ORACLE_FIXTURES=a,b,...  fixtures to replay (default: 3 picked at random, seeded below)
  IPVS_ORACLE_RANDOM=N          random scenarios to generate and replay (default 2)
  IPVS_ORACLE_SEED=S            seed for the picks and the random scenarios (default: time; printed)
  IPVS_ORACLE_DIR / IPVS_ORACLE_HOME   where the oracle tool and its work directory are
A fixture replay also checks that the kernel still does what the stored fixture says (a changed
kernel package shows up here first).
"""
import importlib.util
import json
import os
import random
import shutil
import time

import pytest

import oracle_harness as H

pytestmark = [
    pytest.mark.oracle,
    pytest.mark.skipif(os.environ.get("IPVS_ORACLE") != "1",
                       reason="replays through the qemu oracle VM (about 6 s of CPU per scenario); set IPVS_ORACLE=1"),
]

SEED = int(os.environ.get("IPVS_ORACLE_SEED", str(int(time.time()))))


def _make_fixtures():
    spec = importlib.util.spec_from_file_location("make_fixtures", H.FIXTURES / "make_fixtures.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _fixture_picks():
    names = H.fixture_names()
    want = os.environ.get("IPVS_ORACLE_FIXTURES")
    if want:
        return [n.strip() for n in want.split(",") if n.strip()]
    return sorted(random.Random(SEED).sample(names, min(3, len(names))))


def _replay(mf, root, name):
    got, probs = mf.run_oracle(name, log=lambda *a: None, root=str(root))
    assert not probs, f"oracle run of {name} failed: {probs}"
    return H.load_fixture(name, root=root)


@pytest.mark.parametrize("name", _fixture_picks())
def test_fixture_replay(name, tmp_path):
    print(f"IPVS_ORACLE_SEED={SEED}")
    mf = _make_fixtures()
    src = H.FIXTURES / name
    dst = tmp_path / name
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("expected.json", "failed-result.json"))
    fresh = _replay(mf, tmp_path, name)
    stored = H.load_fixture(name)
    # the kernel still behaves as recorded
    H.assert_matches(stored, H.kernel_run(fresh))
    # and the engine as the kernel
    H.assert_matches(fresh, H.run_engine(fresh))


# ----------------------------------------------------------------------------------------------
# random scenarios

def random_spec(rng):
    """A TCP scenario in the engine's part-1 scope: a few clients and ports (so ports are reused),
    random flags including RST and flagless segments, gaps that stay clear of the state timeouts'
    boundaries, server replies in NAT."""
    mode = rng.choice(["dr", "nat"])
    sched = rng.choice(["rr", "wrr", "lc", "wlc", "sed", "nq", "fo", "ovf"])
    nrs = rng.randint(2, 4)
    weights = [rng.randint(0 if k else 1, 4) for k in range(nrs)]
    args = f"--mode {mode} --sched {sched} --rs {nrs} --weights {','.join(map(str, weights))}"
    args += f" --conn-reuse-mode {rng.choice([0, 1, 2])} --expire-nodest-conn {rng.choice([0, 1])}"
    if rng.random() < 0.3:
        args += " --sloppy-tcp 1"
    pkts = []
    t = 0.0
    clients = [f"198.51.100.{rng.randint(1, 4)}:{40000 + rng.randint(0, 5)}" for _ in range(6)]
    for _ in range(rng.randint(20, 60)):
        c = rng.choice(clients)
        flags = rng.choice(["S", "S", "A", "PA", "FA", "R", "", "SA"])
        p = {"t": round(t, 4), "client": c, "flags": flags}
        if "P" in flags:
            p["payload"] = 20
        pkts.append(p)
        if mode == "nat" and rng.random() < 0.4:
            t += 0.002
            pkts.append({"t": round(t, 4), "client": c, "flags": rng.choice(["SA", "A", "FA", "R"]), "dir": "s2c"})
        # short steps, sometimes a pause that lets CLOSE (10 s) entries expire: every pause ends
        # well away from 10 s after any earlier packet, and the whole run stays under 55 s
        t += 0.05 if rng.random() < 0.93 or t > 30 else 12.5
    return {"description": "random part-1 scenario", "vip": "203.0.113.10", "vport": 80, "proto": "tcp",
            "packets": pkts}, args


@pytest.mark.parametrize("k", range(int(os.environ.get("IPVS_ORACLE_RANDOM", "2"))))
def test_random_scenario(k, tmp_path):
    print(f"IPVS_ORACLE_SEED={SEED}")
    rng = random.Random(SEED * 1000 + k)
    spec, args = random_spec(rng)
    name = f"random_{SEED}_{k}"
    d = tmp_path / name
    d.mkdir()
    (d / "spec.json").write_text(json.dumps(spec, indent=1))
    (d / "args").write_text(args + "\n")
    mf = _make_fixtures()
    mf.make_pcaps([name], root=str(tmp_path))
    fx = _replay(mf, tmp_path, name)
    H.assert_matches(fx, H.run_engine(fx))
