# -*- coding: utf-8 -*-
# vim: ft=sls
---
# Planned master switchover:
#
#   salt-run state.orchestrate mysqlrepl.orch.switch pillar='{"mysqlrepl": {"new_master": "db2"}}'
#   salt-run state.orchestrate mysqlrepl.orch.switch \
#     pillar='{"mysqlrepl": {"new_master": "db2", "topology": "production"}}'
#
# sync (only what differs: mysqlrepl/orch/sync.jinja) -> salt-run mysqlrepl.switch:
# prechecks, write block, master record; then, side by side, the app minions
# (pillar mysqlrepl_app:topology) apply mysqlrepl_orch:app_sls (default
# mysqlrepl.app: the masterdb hosts entry) and refresh their pillar, and every
# db minion repoints its servers and waits until they have caught up. An app
# minion that fails or does not answer fails the switch's result; with no app
# minion the runner says so once. Your own app SLS:
#   pillar='{"mysqlrepl": {"new_master": "db2"}, "mysqlrepl_orch": {"app_sls": ["mysqlrepl.app", "myapp.db"]}}'

# Every step fails hard. test=True does not run runners: see the plan with
#   salt-run mysqlrepl.switch new_master=db2 dry_run=True
{%- from 'mysqlrepl/orch/sync.jinja' import master_stale, sync_steps %}
{%- set req = salt['pillar.get']('mysqlrepl', {}) %}
{%- set new_master = req.get('new_master') %}
{%- set topology = req.get('topology') if req.get('new_master') else none %}
{%- set orch = salt['pillar.get']('mysqlrepl_orch', {}) %}
{%- set app_sls = orch.get('app_sls', ['mysqlrepl.app']) %}
{%- set db_tgt = 'I@mysqlrepl:topology:' ~ topology if topology else 'I@mysqlrepl:*' %}

{%- if not new_master %}
mysqlrepl-switch-usage:
  test.fail_without_changes:
    - name: >-
        name the new master in the orchestration's pillar, mysqlrepl:new_master
        (see the header of mysqlrepl/orch/switch.sls)
    - failhard: true
{%- else %}

{%- set stale = master_stale() | trim %}
{{ sync_steps(db_tgt, stale, false) }}

mysqlrepl-switch:
  salt.runner:
    - name: mysqlrepl.switch
    - new_master: {{ new_master | json }}
{#- the runner syncs the db minions whose modules differ first (one runner step less) #}
    - sync_tgt: {{ db_tgt | json }}
    - app_sls: {{ app_sls | join(',') | json }}
{%- if topology %}
    - topology: {{ topology | json }}
{%- endif %}
    - failhard: true
    - require:
      - {{ 'salt' if stale else 'test' }}: mysqlrepl-sync-master

{%- endif %}
