# -*- coding: utf-8 -*-
# vim: ft=sls
---
# Server settings (config drop-in, live variables, restart when allowed) and
# the replication account on every server.
include:
  - mysqlrepl.tls

mysqlrepl-server:
  mysqlrepl.server_configured:
    - name: local
    - require:
      - mysqlrepl: mysqlrepl-tls

mysqlrepl-users:
  mysqlrepl.users_present:
    - name: local
    - require:
      - mysqlrepl: mysqlrepl-server
