# Virtual services and real servers: lookup, edits with the kernel's side effects, binding of
# entries to real servers (the active/inactive/persist counters and OVERLOAD), and dispatch to the
# per-scheduler modules (sched_*.pyx).
from libc.stdint cimport int32_t, uint8_t, uint16_t, uint32_t
from ipvsflow.engine.defs cimport engine_t, service_t, dest_t
from ipvsflow.engine.conntab cimport conn_entry
from ipvsflow.io.batch cimport pkt_desc

# Service lookup as ip_vs_service_find: fwmark first (when fwmark != 0), then proto+VIP+vport,
# then the port-0 service of that VIP. Returns the service id or -1.
cdef int32_t svc_find(engine_t *e, uint8_t proto, uint8_t af, const uint8_t *vaddr, uint16_t vport,
                      uint32_t fwmark) noexcept nogil

# Run the service's scheduler: dest id or -1 (no destination available).
cdef int32_t svc_schedule(engine_t *e, int32_t svc, const pkt_desc *p) noexcept nogil

# ip_vs_bind_dest / ip_vs_unbind_dest: flags, counters (inactconns++ on bind of a connection,
# persistconns for templates), refcnt, OVERLOAD set/clear with the u/l thresholds.
cdef void dest_bind(engine_t *e, uint32_t dest, conn_entry *cp) noexcept nogil
cdef void dest_unbind(engine_t *e, conn_entry *cp) noexcept nogil

# True if the dest may take new connections (weight > 0 and not OVERLOAD).
cdef inline bint dest_eligible(const dest_t *d) noexcept nogil:
    return d.weight > 0 and not (d.flags & 0x0002)


# Allocation of engine_t's service and dest arrays (Engine.__cinit__ / __dealloc__).
cdef int svc_table_init(engine_t *e) except -1
cdef void svc_table_free(engine_t *e) noexcept

# Apply an ipvsflow.config.Command of op add-service / edit-service / del-service / add-dest /
# edit-dest / del-dest / clear, with the kernel's side effects (list order newest-first,
# AVAILABLE cleared on delete and restored when a deleted dest is re-added while still
# referenced, scheduler state updates, OVERLOAD re-evaluation). Raises ConfigError with the
# command's line on a bad request (unknown service, duplicate, ...). Returns the affected
# service id (or dest id for dest ops). Entries of a deleted dest are NOT touched here: the
# engine runs the expire_nodest_conn flush itself.
cdef object svc_apply(engine_t *e, object cmd)

# Python views for listings and reports.
cdef list svc_describe(engine_t *e)     # [{id, proto, af, addr, port, fwmark, sched, flags, timeout, netmask, dests: [ids in list order], stats...}]
cdef list dest_describe(engine_t *e)    # [{id, svc, addr, port, af, fwd, weight, u_threshold, l_threshold, activeconns, inactconns, persistconns, available, overload, stats...}]
