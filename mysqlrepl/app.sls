# -*- coding: utf-8 -*-
# vim: ft=sls
---
# App minions (pillar mysqlrepl_app:topology): the hosts entries of
# infra:hosts_entries (seed 002), masterdb among them, which the formula's
# ext_pillar points at the master of record. Other minions: nothing.
{%- set app = salt['pillar.get']('mysqlrepl_app', {}) %}
{%- set entries = salt['pillar.get']('infra:hosts_entries', {}) %}
{%- if app and entries %}
{%- for hostname, address in entries | dictsort %}

mysqlrepl-hosts-{{ hostname }}:
  host.present:
    - name: {{ hostname | json }}
    - ip: {{ address | json }}
    - clean: true
{%- endfor %}
{%- else %}

mysqlrepl-app-nothing:
  test.nop:
    - name: not an app minion of a mysqlrepl topology
{%- endif %}
