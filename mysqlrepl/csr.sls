# -*- coding: utf-8 -*-
# vim: ft=sls
---
# Each server's key (made here, 0600) and CSR, published to the mine.
include:
  - mysqlrepl.preflight

mysqlrepl-csr:
  mysqlrepl.csr_published:
    - name: local
    - require:
      - mysqlrepl: mysqlrepl-preflight
