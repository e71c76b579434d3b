# -*- coding: utf-8 -*-
# vim: ft=sls
---
# The far side of SSH tunnels (seeds 000, 001): the tunnel user and its
# authorized_keys, forwarding only to and from each tunnel's ports. Applied on
# every minion before mysqlrepl.tunnel starts the tunnels (the orchestration runs it
# as a step of its own, so no tunnel knocks before its key is allowed).
include:
  - mysqlrepl.csr

mysqlrepl-tunnel-access:
  mysqlrepl.tunnels_ready:
    - name: local
    - side: peer
    - require:
      - mysqlrepl: mysqlrepl-tunnel-keys
