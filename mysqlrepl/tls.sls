# -*- coding: utf-8 -*-
# vim: ft=sls
---
# CA certificate and signed server certificate in place.
{%- from tpldir ~ "/map.jinja" import mysqlrepl with context %}
include:
  - mysqlrepl.csr
{%- if mysqlrepl.is_ca_minion %}
  - mysqlrepl.ca
{%- endif %}

mysqlrepl-tls:
  mysqlrepl.tls_ready:
    - name: local
    - require:
      - mysqlrepl: mysqlrepl-csr
{%- if mysqlrepl.is_ca_minion %}
      - mysqlrepl: mysqlrepl-ca-sign
{%- endif %}
