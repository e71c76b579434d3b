# -*- coding: utf-8 -*-
# vim: ft=sls
---
# SSH tunnels (seeds 000, 001): the far side (mysqlrepl.tunnel_access), then on the
# side that opens each tunnel the pinned known_hosts, the autossh service and its
# forward answering. Nothing on minions without tunnels.
include:
  - mysqlrepl.tunnel_access

mysqlrepl-tunnels:
  mysqlrepl.tunnels_ready:
    - name: local
    - side: near
    - require:
      - mysqlrepl: mysqlrepl-tunnel-access
