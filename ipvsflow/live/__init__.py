"""Live mode: a working IPVS director on AF_PACKET sockets (NAT, DR, TUN).

``ipvsflow live -C rules.conf -i IFACE [-i IFACE2] ...`` reads packets from TPACKET_V3 rings
(ipvsflow.io.afpacket), runs them through the Engine in bursts, has the Forwarder rewrite them
and transmits them again with AF_PACKET, choosing the next hop from the director kernel's own
routes and neighbours. ``ipvsflow ctl`` changes and lists it at run time.

Modules: ``director`` (the control process: sockets, workers, control socket, SIGHUP reload,
stats), ``worker`` (the data path of one worker process), ``_fast`` (the AF_PACKET sink and
decision counting, in Cython), ``netlink`` (routes and neighbours), ``fanout`` (the
PACKET_FANOUT_CBPF program keeping a connection's two directions on one worker), ``control``
(the control-socket protocol), ``listing`` (ipvsadm listings over all workers), ``metrics``
(Prometheus), ``privs`` (dropping privileges), ``cli`` (the two commands' arguments).
"""
