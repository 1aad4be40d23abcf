# The burst container shared by every stage: readers fill it, the parser completes it, the
# engine and the forwarders read it. One fixed-size C struct per packet, nothing per packet in
# Python. Field order is part of the public numpy view (PacketBatch.to_numpy): append, never
# reorder.
from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t

# Parse status. 0 = every header up to L4 parsed. Append new codes at the end; the Python enum
# ipvsflow.io.ParseStatus mirrors these values and names.
cpdef enum ParseStatus:
    OK = 0
    FRAGMENT = 1            # non-first IP fragment: L3 parsed, no L4 header, no ports
    NOT_IP = 2              # link layer parsed, payload is not IPv4/IPv6 (ARP, LLDP, ...)
    UNKNOWN_LINKTYPE = 3
    TRUNC_L2 = 4            # caplen shorter than the link-layer header (incl. VLAN tags)
    TRUNC_L3 = 5            # caplen shorter than the fixed IP header
    BAD_IP_VERSION = 6      # version nibble disagrees with the link type / ethertype
    BAD_IHL = 7             # IPv4 IHL < 5, or IHL*4 beyond the packet
    BAD_IP_LEN = 8          # IPv4 total length < IHL*4 / IPv6 payload length inconsistent
    TRUNC_EXTHDR = 9        # IPv6 extension header chain runs past caplen or the IP length
    TRUNC_L4 = 10           # L4 header (TCP 20+ / UDP 8 / SCTP 12+chunk hdr / ICMP 8) cut short
    BAD_L4_HDR = 11         # TCP data offset < 5 or past the IP payload, UDP length < 8, ...
    TRUNC_ICMP_INNER = 12   # ICMP error whose embedded IP header or its 4 port bytes are cut short
    BAD_ICMP_INNER = 13     # ICMP error whose embedded header is malformed

# frag bits
cdef enum:
    FRAG_IS = 1             # packet is an IP fragment (MF set, offset != 0, or IPv6 fragment header)
    FRAG_MF = 2             # more-fragments flag
    FRAG_NONFIRST = 4       # fragment offset != 0 (no L4 header in this packet)

# sctp_flags bits
cdef enum:
    SCTP_ABORT_AFTER_COOKIE = 1   # first chunk COOKIE_ECHO/COOKIE_ACK followed by ABORT

ctypedef struct pkt_desc:
    const uint8_t *data     # first byte of the frame (link-layer header), caplen bytes valid
    int64_t ts_ns           # capture time, ns since the epoch
    uint64_t index          # packet index in the input (0-based, every record counted)
    uint32_t caplen
    uint32_t wirelen
    uint32_t ifindex        # pcapng interface id / live ifindex (0 for classic pcap)
    uint32_t fwmark         # firewall mark given by a classifier (0 = none)
    uint16_t linktype       # LINKTYPE_* of the record's interface
    uint16_t status         # ParseStatus
    uint16_t l3_off         # offset of the (outer) IP header; 0xffff if none
    uint16_t l4_off         # offset of the L4 header; 0xffff if none
    uint16_t l3_len         # IP packet length from its header (IPv4 total length, IPv6 40 + payload length)
    uint16_t l4_len         # bytes from l4_off to the end of the IP packet (per header, not caplen)
    uint16_t vlan_outer     # VLAN ids (12 bits); valid when vlan_count > 0 / > 1
    uint16_t vlan_inner
    uint16_t sport          # host byte order; 0 when the protocol has no ports
    uint16_t dport
    uint8_t af              # 0 (no IP), 4, 6
    uint8_t proto           # L4 protocol number (after IPv6 extension headers)
    uint8_t tcp_flags       # FIN 0x01 SYN 0x02 RST 0x04 PSH 0x08 ACK 0x10 URG 0x20 ECE 0x40 CWR 0x80
    uint8_t sctp_chunk      # first chunk type; 0xff when not SCTP or no chunk
    uint8_t sctp_flags      # SCTP_ABORT_AFTER_COOKIE
    uint8_t frag            # FRAG_* bits
    uint8_t icmp_type       # ICMP/ICMPv6 type and code (0 when not ICMP)
    uint8_t icmp_code
    uint8_t vlan_count      # 0, 1 or 2 tags
    uint8_t ttl             # IPv4 TTL / IPv6 hop limit
    uint8_t ic_proto        # ICMP error: protocol of the embedded packet (0 = not an error / none)
    uint8_t l2_len          # bytes of link-layer header before l3_off (incl. VLAN tags)
    uint16_t ic_sport       # ICMP error: embedded packet's ports (host order)
    uint16_t ic_dport
    uint32_t frag_id        # IPv4 identification / IPv6 fragment identification
    uint16_t frag_off       # fragment offset in 8-byte units
    uint16_t ic_l3_off      # ICMP error: offset of the embedded IP header; 0xffff if none
    uint8_t src[16]         # addresses, IPv4 mapped as ::ffff:a.b.c.d
    uint8_t dst[16]
    uint8_t ic_src[16]      # ICMP error: embedded packet's addresses (its src is our side's dst)
    uint8_t ic_dst[16]


cdef class PacketBatch:
    cdef pkt_desc *pkts
    cdef readonly uint32_t capacity
    cdef readonly uint32_t count
    # Keeps whatever the packets point into alive (mmap, bytes, ring block, copy buffer).
    cdef public object owner
