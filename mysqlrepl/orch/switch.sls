# -*- coding: utf-8 -*-
# vim: ft=sls
---
# Planned master switchover:
#
#   salt-run state.orchestrate mysqlrepl.orch.switch pillar='{"mysqlrepl": {"new_master": "db2"}}'
#   salt-run state.orchestrate mysqlrepl.orch.switch \
#     pillar='{"mysqlrepl": {"new_master": "db2", "topology": "production"}}'
#
# sync -> salt-run mysqlrepl.switch (prechecks, write block, master record;
# then, side by side, the app minions' hosts entry / app config
# (mysqlrepl_orch:app_sls, default mysqlrepl.app) and pillar refresh, and the
# replicas repointed and caught up) -> the app minions (pillar
# mysqlrepl_app:topology) once more, to confirm. Your own app SLS:
#   pillar='{"mysqlrepl": {"new_master": "db2"}, "mysqlrepl_orch": {"app_sls": ["mysqlrepl.app", "myapp.db"]}}'

# Every step fails hard. test=True does not run runners: see the plan with
#   salt-run mysqlrepl.switch new_master=db2 dry_run=True
{%- set req = salt['pillar.get']('mysqlrepl', {}) %}
{%- set new_master = req.get('new_master') %}
{%- set topology = req.get('topology') if req.get('new_master') else none %}
{%- set orch = salt['pillar.get']('mysqlrepl_orch', {}) %}
{%- set app_sls = orch.get('app_sls', ['mysqlrepl.app']) %}
{%- if topology %}
{%- set db_tgt = 'I@mysqlrepl:topology:' ~ topology %}
{%- set app_tgt = 'I@mysqlrepl_app:topology:' ~ topology %}
{%- else %}
{%- set db_tgt = 'I@mysqlrepl:*' %}
{%- set app_tgt = 'I@mysqlrepl_app:*' %}
{%- endif %}

{#- app minions known to the salt-master (their cached pillar): none, no app steps #}
{%- set app_minions = salt['saltutil.runner']('cache.pillar', tgt=app_tgt, tgt_type='compound') or {} %}

{%- if not new_master %}
mysqlrepl-switch-usage:
  test.fail_without_changes:
    - name: >-
        name the new master in the orchestration's pillar, mysqlrepl:new_master
        (see the header of mysqlrepl/orch/switch.sls)
    - failhard: true
{%- else %}

mysqlrepl-sync-master:
  salt.runner:
    - name: saltutil.sync_all
    - failhard: true

mysqlrepl-sync-minions:
  salt.function:
    - name: saltutil.sync_all
    - tgt: {{ db_tgt | json }}
    - tgt_type: compound
    - failhard: true
    - require:
      - salt: mysqlrepl-sync-master

mysqlrepl-switch:
  salt.runner:
    - name: mysqlrepl.switch
    - new_master: {{ new_master | json }}
    - app_sls: {{ app_sls | join(',') | json }}
{%- if topology %}
    - topology: {{ topology | json }}
{%- endif %}
    - failhard: true
    - require:
      - salt: mysqlrepl-sync-minions

{%- if not app_minions %}

mysqlrepl-apps:
  test.succeed_without_changes:
    - name: no app minion (pillar mysqlrepl_app:topology) to update
    - require:
      - salt: mysqlrepl-switch
{%- else %}

mysqlrepl-apps-pillar:
  salt.function:
    - name: saltutil.refresh_pillar
    - tgt: {{ app_tgt | json }}
    - tgt_type: compound
    - kwarg:
        wait: true
    - failhard: true
    - require:
      - salt: mysqlrepl-switch

mysqlrepl-apps:
  salt.state:
    - tgt: {{ app_tgt | json }}
    - tgt_type: compound
    - sls: {{ app_sls | json }}
    - failhard: true
    - require:
      - salt: mysqlrepl-apps-pillar
{%- endif %}
{%- endif %}
