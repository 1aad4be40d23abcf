# Shared pieces of the per-scheduler modules (sched_*.pyx), as the kernel's struct
# ip_vs_scheduler: every scheduler fills one sched_ops; services.pyx keeps the table indexed by
# SCHED_* and calls the hooks on service/dest edits and `schedule` for new connections.
from libc.stdint cimport int32_t, uint8_t, uint32_t
from ipvsflow.engine.defs cimport engine_t, service_t, dest_t, sched_fn
from ipvsflow.io.batch cimport pkt_desc

# Hooks return 0 on success, -1 on failure (allocation); NULL = no hook.
ctypedef int (*sched_svc_hook)(engine_t *e, service_t *svc) noexcept nogil
ctypedef void (*sched_done_hook)(engine_t *e, service_t *svc) noexcept nogil
# Dest hooks run after the list change (add: dest already at the head; del: dest already
# unlinked, its prev/next fields still hold its old neighbours; upd: fields already updated).
ctypedef int (*sched_dest_hook)(engine_t *e, service_t *svc, int32_t dest) noexcept nogil

ctypedef struct sched_ops:
    const char *name
    sched_svc_hook init_service
    sched_done_hook done_service
    sched_dest_hook add_dest
    sched_dest_hook del_dest
    sched_dest_hook upd_dest
    sched_fn schedule


# Successor of `d` in the service's destination list; d == -1 stands for the list head, and -1
# is returned at the end of the list (the kernel's list_for_each_entry_continue stops at the head).
cdef inline int32_t dest_next(const engine_t *e, const service_t *svc, int32_t d) noexcept nogil:
    if d < 0:
        return svc.dest_head
    return e.dests[d].next


# ip_vs_dest_conn_overhead: (activeconns << 8) + inactconns, in the kernel's int arithmetic.
cdef inline int32_t dest_conn_overhead(const dest_t *d) noexcept nogil:
    return <int32_t>((d.activeconns << 8) + d.inactconns)


cdef inline bint dest_overloaded(const dest_t *d) noexcept nogil:
    return (d.flags & 0x0002) != 0      # DEST_F_OVERLOAD


# Scheduler flags of a service (ipvsflow.config SVC_F_SCHED*; the kernel's IP_VS_SVC_F_SCHED1/2):
# sh-fallback / mh-fallback and sh-port / mh-port.
cdef enum:
    SVC_F_SCHED1 = 0x0008
    SVC_F_SCHED2 = 0x0010


# The client port the hashing schedulers mix in with the port flag (ip_vs_sh_get_port /
# ip_vs_mh_get_port): the source port of TCP, UDP and SCTP packets, 0 for other protocols.
cdef inline unsigned int sched_client_port(unsigned char proto, unsigned short sport) noexcept nogil:
    if proto == 6 or proto == 17 or proto == 132:
        return sport
    return 0


# The kernel's iph->daddr as a scheduler reads it. With schedule_icmp the core schedules an ICMP
# error from a descriptor of its embedded packet turned to the client's direction (src/sport =
# the client, dst/dport = the VIP) whose ic_* fields still hold the embedded header as quoted
# (VIP -> client); ordinary packets have ic_proto 0. ip_vs_in_icmp fills the kernel's iph from
# that header with IP_VS_HDR_INVERSE and does not swap it (ip_vs_fill_iph_skb_icmp), so
# iph->daddr is then the client (ic_dst). dh reads iph->daddr as it is. sh and mh read
# "ip_vs_iph_inverse(iph) ? daddr : saddr" and the port the same way (ports[1] with inverse):
# the client and its port both times, i.e. p.src and p.sport of either descriptor.
cdef inline const uint8_t *sched_iph_daddr(const pkt_desc *p) noexcept nogil:
    if p.ic_proto != 0:
        return &p.ic_dst[0]
    return &p.dst[0]
