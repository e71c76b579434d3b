# -*- coding: utf-8 -*-
# vim: ft=sls
---
# Each server plays the role pillar gives it: the master of record writable,
# replicas read-only and replicating over verified TLS.
include:
  - mysqlrepl.server
  - mysqlrepl.tunnel

mysqlrepl-replication:
  mysqlrepl.replication_running:
    - name: local
    - require:
      - mysqlrepl: mysqlrepl-users
      - mysqlrepl: mysqlrepl-tunnels
