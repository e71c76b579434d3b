# -*- coding: utf-8 -*-
# vim: ft=sls
---
{%- from tpldir ~ "/map.jinja" import mysqlrepl with context %}
{%- if mysqlrepl.manage_packages %}
{#- SSH tunnels: ssh and autossh where a local server opens one, sshd where one logs in #}
{%- set servers = salt['pillar.get']('mysqlrepl:servers', {}) %}
{%- set local = [] %}
{%- for name, srv in servers | dictsort %}
{%-   if (srv.get('minion') or name) == grains['id'] %}{% do local.append(name) %}{% endif %}
{%- endfor %}
{%- set extra = [] %}
{%- for name, srv in servers | dictsort %}
{%-   for t in srv.get('tunnels') or [] %}
{%-     if name in local %}{% do extra.extend(mysqlrepl.tunnel_pkgs.near) %}{% endif %}
{%-     if t.get('peer') in local %}{% do extra.extend(mysqlrepl.tunnel_pkgs.peer) %}{% endif %}
{%-   endfor %}
{%- endfor %}
mysqlrepl-packages:
  pkg.installed:
    - pkgs: {{ (mysqlrepl.pkgs + (extra | unique | list)) | json }}
    - require_in:
      - mysqlrepl: mysqlrepl-preflight
{%- endif %}

include:
  - mysqlrepl.preflight
