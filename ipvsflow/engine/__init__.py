"""The IPVS connection engine.

::

    from ipvsflow.engine import Engine, ACTIONS, REASONS, DIRS, state_name
    eng = Engine(ipvsflow.config.parse_rules(text))
    dec = eng.process(batch)        # numpy structured array, one decision per packet

The compiled modules are imported on first use of ``Engine`` / ``DECISION_DTYPE``, so the
pure-Python parts (names, variants) import without a build.
"""
from ipvsflow.engine.names import (
    ACTIONS, DIRS, REASONS, ACTION_CODES, DIR_CODES, REASON_CODES, STATE_NONE,
    DF_REUSE, DF_TEMPLATE, DF_ICMP, DF_NOOUTPUT,
    state_name, proto_name, flag_names,
)
from ipvsflow.engine.variants import variant_for, parse_kernel

# What the engine implements beyond TCP/UDP (oracle fixtures name these in spec.json "requires").
FEATURES = frozenset({"dh", "fwmark", "icmp", "mh", "persistence", "sctp", "sh"})

_LAZY = {"Engine", "DECISION_DTYPE"}


def __getattr__(name):
    if name in _LAZY:
        from ipvsflow.engine import core
        return getattr(core, name)
    raise AttributeError(f"module 'ipvsflow.engine' has no attribute {name!r}")


__all__ = [
    "Engine", "DECISION_DTYPE", "ACTIONS", "DIRS", "REASONS", "ACTION_CODES", "DIR_CODES",
    "REASON_CODES", "STATE_NONE", "DF_REUSE", "DF_TEMPLATE", "DF_ICMP", "DF_NOOUTPUT",
    "state_name", "proto_name", "flag_names", "variant_for", "parse_kernel",
]
