# Test harness: the service table of an engine_t exposed to Python, without the rest of the
# engine. Tests add services and real servers through Commands, schedule, and bind / unbind
# stand-in connection entries to move the counters the way the engine core does.
from libc.stdint cimport int32_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, realloc, free
from libc.string cimport memset, memcpy

import ipaddress

from ipvsflow.engine.defs cimport engine_t, service_t, dest_t, DEST_F_OVERLOAD
from ipvsflow.engine.conntab cimport conntab, conn_entry, CONN_NONE, CF_INACTIVE, CF_TEMPLATE
from ipvsflow.io.batch cimport pkt_desc
from ipvsflow.engine.services cimport (
    svc_find, svc_schedule, dest_bind, dest_unbind, svc_table_init, svc_table_free, svc_apply,
    svc_describe, dest_describe, dest_eligible,
)
from ipvsflow.engine.defs cimport SCHED_SH, SCHED_DH, SCHED_MH
from ipvsflow.engine.sched_sh cimport sh_state, SH_TAB_SIZE
from ipvsflow.engine.sched_dh cimport dh_state, DH_TAB_SIZE
from ipvsflow.engine.sched_mh cimport mh_state, MH_TAB_SIZE, MH_KEY1, MH_KEY2, mh_hashkey as _mh_hashkey
from ipvsflow.engine cimport hsiphash as _hs


cdef bytes _addr16(object text):
    a = ipaddress.ip_address(text)
    if a.version == 6:
        return a.packed
    return b"\x00" * 10 + b"\xff\xff" + a.packed


cdef class SvcTable:
    """An engine_t holding only services and real servers (the connection table is a bare
    conntab struct, so the dest-array address sync can be checked)."""
    cdef engine_t *e
    cdef conntab *ct
    cdef conn_entry *entries
    cdef uint32_t n_entries
    cdef uint32_t cap_entries

    def __cinit__(self, bint with_conntab=True):
        self.e = <engine_t *>calloc(1, sizeof(engine_t))
        if self.e == NULL:
            raise MemoryError()
        if with_conntab:
            self.ct = <conntab *>calloc(1, sizeof(conntab))
            if self.ct == NULL:
                raise MemoryError()
            self.e.ct = self.ct
        svc_table_init(self.e)
        self.cap_entries = 64
        self.entries = <conn_entry *>calloc(self.cap_entries, sizeof(conn_entry))
        if self.entries == NULL:
            raise MemoryError()

    def __dealloc__(self):
        if self.e != NULL:
            svc_table_free(self.e)
            free(self.e)
        if self.ct != NULL:
            free(self.ct)
        if self.entries != NULL:
            free(self.entries)

    def apply(self, cmd):
        """svc_apply: the affected service id (dest id for real-server commands)."""
        return svc_apply(self.e, cmd)

    def find(self, int proto, str addr, int port, uint32_t fwmark=0, af=None):
        cdef bytes a = _addr16(addr) if addr else b"\x00" * 16
        cdef int fam = af if af is not None else (6 if ":" in addr else 4)
        return svc_find(self.e, <uint8_t>proto, <uint8_t>fam, a, <uint16_t>port, fwmark)

    def schedule(self, int svc, str src="10.0.0.1", int sport=40000, int proto=6, dst=None, int dport=-1):
        """One scheduler call for a stand-in packet from src:sport to dst:dport (default: the
        service's own address and port, as a packet to the VIP); dest id or -1."""
        cdef pkt_desc p
        cdef bytes a = _addr16(src)
        cdef bytes b
        memset(&p, 0, sizeof(pkt_desc))
        p.proto = <uint8_t>proto
        p.af = 6 if ":" in src else 4
        p.sport = <uint16_t>sport
        memcpy(p.src, <const char *>a, 16)
        if 0 <= svc < <int>self.e.n_svcs:
            memcpy(p.dst, self.e.svcs[svc].addr, 16)
            p.dport = self.e.svcs[svc].port
        if dst is not None:
            b = _addr16(dst)
            memcpy(p.dst, <const char *>b, 16)
        if dport >= 0:
            p.dport = <uint16_t>dport
        return svc_schedule(self.e, svc, &p)

    def schedule_many(self, int svc, uint32_t n, str src="198.51.100.1", int sport=1024, int proto=6):
        """n scheduler calls without the GIL, the client address (last 32 bits) and source port
        counting up from src:sport for each; returns how many found a destination."""
        cdef pkt_desc p
        cdef bytes a = _addr16(src)
        cdef uint32_t i, base, found = 0, v
        if not 0 <= svc < <int>self.e.n_svcs:
            raise IndexError(svc)
        memset(&p, 0, sizeof(pkt_desc))
        p.proto = <uint8_t>proto
        p.af = 6 if ":" in src else 4
        memcpy(p.src, <const char *>a, 16)
        memcpy(p.dst, self.e.svcs[svc].addr, 16)
        p.dport = self.e.svcs[svc].port
        base = (<uint32_t>p.src[12] << 24) | (<uint32_t>p.src[13] << 16) | (<uint32_t>p.src[14] << 8) | p.src[15]
        with nogil:
            for i in range(n):
                v = base + i
                p.src[12] = (v >> 24) & 0xff
                p.src[13] = (v >> 16) & 0xff
                p.src[14] = (v >> 8) & 0xff
                p.src[15] = v & 0xff
                p.sport = <uint16_t>(sport + i)
                if svc_schedule(self.e, svc, &p) >= 0:
                    found += 1
        return found

    def sched_table(self, int svc):
        """The hashing scheduler's table of a service (sh/dh: 256 buckets, mh: 4093 slots) as a
        list of dest ids (-1 = empty); None for other schedulers or a service without one."""
        cdef service_t *s
        if not 0 <= svc < <int>self.e.n_svcs:
            raise IndexError(svc)
        s = &self.e.svcs[svc]
        if s.sched_data == NULL:
            return None
        if s.sched == SCHED_SH:
            return [(<sh_state *>s.sched_data).buckets[i] for i in range(SH_TAB_SIZE)]
        if s.sched == SCHED_DH:
            return [(<dh_state *>s.sched_data).buckets[i] for i in range(DH_TAB_SIZE)]
        if s.sched == SCHED_MH:
            return [(<mh_state *>s.sched_data).lookup[i] for i in range(MH_TAB_SIZE)]
        return None

    def mh_weights(self, int svc):
        """(gcd, rshift) of an mh service's last table build."""
        cdef service_t *s
        if not 0 <= svc < <int>self.e.n_svcs:
            raise IndexError(svc)
        s = &self.e.svcs[svc]
        if s.sched != SCHED_MH or s.sched_data == NULL:
            raise ValueError(f"service {svc} has no mh table")
        return ((<mh_state *>s.sched_data).gcd, (<mh_state *>s.sched_data).rshift)

    def bind(self, uint32_t dest, int proto=6, bint template=False):
        """A new stand-in entry bound to `dest` (flags: TEMPLATE if asked, plus the dest's
        conn_flags); returns its handle."""
        cdef conn_entry *cp
        if dest >= self.e.n_dests:
            raise IndexError(dest)
        if self.n_entries == self.cap_entries:
            nc = self.cap_entries * 2
            ne = <conn_entry *>realloc(self.entries, nc * sizeof(conn_entry))
            if ne == NULL:
                raise MemoryError()
            self.entries = ne
            self.cap_entries = nc
        cp = &self.entries[self.n_entries]
        memset(cp, 0, sizeof(conn_entry))
        cp.proto = <uint8_t>proto
        cp.dest = CONN_NONE
        cp.control = CONN_NONE
        if template:
            cp.flags = CF_TEMPLATE
        dest_bind(self.e, dest, cp)
        self.n_entries += 1
        return self.n_entries - 1

    def connect(self, int svc, int n=1, int proto=6, bint active=True, str src="10.0.0.1",
                int sport=40000):
        """n new connections from src:sport as the engine core makes them: schedule, bind, and
        (TCP SYN -> SYN_RECV, an active state) move to active. Returns the chosen dest ids (-1:
        none)."""
        out = []
        for _ in range(n):
            d = self.schedule(svc, src=src, sport=sport, proto=proto)
            if d >= 0:
                h = self.bind(d, proto=proto)
                if active:
                    self.set_active(h, True)
            out.append(d)
        return out

    def unbind(self, uint32_t handle):
        if handle >= self.n_entries:
            raise IndexError(handle)
        dest_unbind(self.e, &self.entries[handle])

    def set_active(self, uint32_t handle, bint active):
        """Move an entry between the inactive and active counters, as a state transition does."""
        cdef conn_entry *cp
        cdef dest_t *d
        if handle >= self.n_entries:
            raise IndexError(handle)
        cp = &self.entries[handle]
        d = &self.e.dests[cp.dest]
        if active and (cp.flags & CF_INACTIVE):
            cp.flags &= ~CF_INACTIVE
            d.inactconns -= 1
            d.activeconns += 1
        elif not active and not (cp.flags & CF_INACTIVE):
            cp.flags |= CF_INACTIVE
            d.activeconns -= 1
            d.inactconns += 1

    def entry(self, uint32_t handle):
        if handle >= self.n_entries:
            raise IndexError(handle)
        return {"dest": self.entries[handle].dest, "flags": self.entries[handle].flags}

    def services(self):
        return svc_describe(self.e)

    def dests(self):
        return dest_describe(self.e)

    def dest(self, uint32_t d):
        return dest_describe(self.e)[d]

    def order(self, int svc):
        """Dest ids of a service in list order (newest first)."""
        return svc_describe(self.e)[svc]["dests"]

    def eligible(self, uint32_t d):
        return bool(dest_eligible(&self.e.dests[d]))

    def sched_state(self, int svc):
        cdef service_t *s = &self.e.svcs[svc]
        return {"rr_cursor": s.rr_cursor, "wrr_cl": s.wrr_cl, "wrr_cw": s.wrr_cw,
                "wrr_mw": s.wrr_mw, "wrr_di": s.wrr_di, "sched": s.sched}

    def set_counts(self, uint32_t d, uint32_t active, uint32_t inactive):
        """Set a dest's counters directly (scheduler tie-break tests with given overheads)."""
        self.e.dests[d].activeconns = active
        self.e.dests[d].inactconns = inactive

    def conntab_sync_ok(self):
        """True if the conntab's view of real-server addresses points at the dest array."""
        if self.ct == NULL:
            return True
        return (self.ct.dest_addr == &self.e.dests[0].addr[0]
                and self.ct.dest_stride == sizeof(dest_t))

    def conntab_addr(self, uint32_t d):
        """Address bytes of dest d as the connection table reads them."""
        return (<const char *>(self.ct.dest_addr + d * self.ct.dest_stride))[:16]

    @property
    def n_dests(self):
        return self.e.n_dests

    @property
    def cap_dests(self):
        return self.e.cap_dests

    @property
    def n_svcs(self):
        return self.e.n_svcs


# ---- hash primitives of the hashing schedulers, for tests -----------------------------------

MH_TAB_SIZE_ = MH_TAB_SIZE
MH_KEYS = (MH_KEY1, MH_KEY2)


def hsiphash(bytes data, uint64_t k0, uint64_t k1):
    """The kernel's 64-bit hsiphash of a byte string with key (k0, k1)."""
    return _hs.hsiphash_bytes(<const uint8_t *>data, len(data), k0, k1)


def hsiphash_u32(uint32_t v, uint64_t k0, uint64_t k1):
    """hsiphash of the 4 bytes of a little-endian u32 (hsiphash(&v, 4, key) on x86_64)."""
    return _hs.hsiphash_u32(v, k0, k1)


def hash_32(uint32_t v, unsigned int bits):
    return _hs.hash_32(v, bits)


def addr_fold(str addr, int svc_af=0):
    """ntohl(addr_fold) of an address for a service of family svc_af (default: the address's)."""
    cdef bytes a = _addr16(addr)
    cdef int af = 6 if ":" in addr else 4
    return _hs.addr_fold(<const uint8_t *>a, <uint8_t>af, <uint8_t>(svc_af or af))


def mh_hashkey(uint32_t fold, uint32_t port, int key, uint32_t offset=0):
    """ip_vs_mh_hashkey with key 1 (lookup, offsets) or 2 (skips)."""
    if key not in (1, 2):
        raise ValueError("key is 1 or 2")
    return _mh_hashkey(fold, port, MH_KEY1 if key == 1 else MH_KEY2, offset)
