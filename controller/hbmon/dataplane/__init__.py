"""The data plane as the controller programs and reads it, over the P4Runtime layer (`hbmon.p4`).

  targets     start and describe a target (bmv2 `simple_switch_grpc`, the kernel target)
  inventory   peers -> the table entries, multicast replicas and register indexes of a switch
  neighbours  next hops: the MAC and port a peer is reached through (netlink, ARP)
  registers   the health-check registers read in one batch per array (`RegisterAccess`)
"""
