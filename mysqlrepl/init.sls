# -*- coding: utf-8 -*-
# vim: ft=sls
---
# Highstate entry point for db minions: converge TLS, server settings,
# accounts and replication roles from the mysqlrepl pillar. A new topology is
# brought up with `salt-run state.orchestrate mysqlrepl.orch.setup`.
include:
  - mysqlrepl.packages
  - mysqlrepl.replication
