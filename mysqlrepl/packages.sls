# -*- coding: utf-8 -*-
# vim: ft=sls
---
{%- from tpldir ~ "/map.jinja" import mysqlrepl with context %}
{%- if mysqlrepl.manage_packages %}
mysqlrepl-packages:
  pkg.installed:
    - pkgs: {{ mysqlrepl.pkgs | json }}
    - require_in:
      - mysqlrepl: mysqlrepl-preflight
{%- endif %}

include:
  - mysqlrepl.preflight
