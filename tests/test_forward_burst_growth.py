"""A burst whose copies outgrow the forwarder's copy buffer mid-burst (the buffer grows inside
the burst loop, the frames already copied stay where they are): the output is the in-place
path's, frame for frame."""
from scapy.all import Ether, IP, UDP

from forward_helpers import (
    ACT_HIT, DIR_IN, CF_MASQ, RS, RS_NAT_UDP4, batch_of, decisions, make_engine,
    check_accounting, check_all_checksums, forward_to_file, l3_offset,
)
from ipvsflow.forward import Forwarder

V4 = "10.0.0.100"
NEIGH = {RS[RS_NAT_UDP4]: "02:00:00:00:01:02"}


def _frames(n):
    base = [bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:fe")
                  / IP(src="192.0.2.10", dst=V4, ttl=64) / UDP(sport=1000 + i, dport=53)
                  / (bytes([i]) * (100 + 7 * i))) for i in range(40)]
    return [base[i % len(base)] for i in range(n)]


def _forward(frames, in_place, tmp_path, name, fw=None):
    fw = fw or Forwarder(make_engine(), neighbours=NEIGH, learn_neighbours=False, in_place=in_place)
    b = batch_of(frames, writable=True)[0] if in_place else batch_of(frames)
    dec = decisions(len(frames), action=ACT_HIT, dir=DIR_IN, fwd=CF_MASQ, rs=RS_NAT_UDP4,
                    dport=5353, vport=53, vaddr=V4)
    got, _, _ = forward_to_file(fw, b, dec, tmp_path / name)
    return [g[3] for g in got], fw


def test_copies_beyond_the_buffer_keep_every_frame(tmp_path):
    frames = _frames(3000)          # about 1 MB of copies: the buffer grows several times
    ip_outs, ip_fw = _forward(frames, True, tmp_path, "ip.pcap")
    cp_outs, cp_fw = _forward(frames, False, tmp_path, "cp1.pcap")
    assert len(cp_outs) == len(frames)
    assert cp_outs == ip_outs
    assert cp_fw.counters["copied"] == len(frames) and cp_fw.counters["nat_in"] == len(frames)
    check_accounting(cp_fw.counters)
    for out in cp_outs[:50] + cp_outs[-50:]:
        check_all_checksums(out[l3_offset(out, 1):])
    # the same forwarder again: the grown buffer is reused, the output the same
    again, _ = _forward(frames, False, tmp_path, "cp2.pcap", fw=cp_fw)
    assert again == ip_outs
    assert cp_fw.counters["copied"] == 2 * len(frames)

