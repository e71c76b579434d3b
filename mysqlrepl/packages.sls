# -*- coding: utf-8 -*-
# vim: ft=sls
---
{%- from tpldir ~ "/map.jinja" import mysqlrepl with context %}
{%- if mysqlrepl.manage_packages %}
{%- set servers = salt['pillar.get']('mysqlrepl:servers', {}) %}
{%- set tunnels = servers.values() | selectattr('tunnels', 'defined') | list %}
mysqlrepl-packages:
  pkg.installed:
    - pkgs: {{ (mysqlrepl.pkgs + (mysqlrepl.tunnel_pkgs if tunnels else [])) | json }}
    - require_in:
      - mysqlrepl: mysqlrepl-preflight
{%- endif %}

include:
  - mysqlrepl.preflight
