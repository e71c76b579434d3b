# -*- coding: utf-8 -*-
# vim: ft=sls
---
# Each server's key (made here, 0600) and CSR, published to the mine; the same for
# SSH tunnel keys (and the host keys of the sshd a tunnel logs into).
include:
  - mysqlrepl.preflight

mysqlrepl-csr:
  mysqlrepl.csr_published:
    - name: local
    - require:
      - mysqlrepl: mysqlrepl-preflight

mysqlrepl-tunnel-keys:
  mysqlrepl.tunnel_keys_ready:
    - name: local
    - require:
      - mysqlrepl: mysqlrepl-preflight
