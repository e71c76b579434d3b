# -*- coding: utf-8 -*-
# vim: ft=sls
---
# The topology CA and the signing of published CSRs. Renders to nothing but
# the preflight on minions other than mysqlrepl:ca:minion.
{%- from tpldir ~ "/map.jinja" import mysqlrepl with context %}
include:
  - mysqlrepl.preflight
{%- if mysqlrepl.is_ca_minion %}
  - mysqlrepl.csr

mysqlrepl-ca:
  mysqlrepl.ca_present:
    - require:
      - mysqlrepl: mysqlrepl-preflight

mysqlrepl-ca-sign:
  mysqlrepl.certificates_signed:
    - require:
      - mysqlrepl: mysqlrepl-ca
      - mysqlrepl: mysqlrepl-csr
{%- endif %}
