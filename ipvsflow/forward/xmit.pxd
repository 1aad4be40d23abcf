# The forwarder's burst entry for C callers (the live loop): Forwarder._burst_entry() hands out
# a capsule of this function, so a loop in C forwards a burst without a Python call.
from libc.stdint cimport uint32_t
from ipvsflow.engine.defs cimport decision_t
from ipvsflow.io.batch cimport PacketBatch
from ipvsflow.io.writer cimport PcapWriter

# Forward packets [0, m) of batch per dec (m records, as the engine wrote them for those
# packets) into sink (None: forwarded frames are only counted); ``fwd`` must be a Forwarder
# (checked). Returns the packets forwarded.
ctypedef Py_ssize_t (*forward_burst_fn)(object fwd, PacketBatch batch, const decision_t *dec,
                                        uint32_t m, PcapWriter sink) except -1
