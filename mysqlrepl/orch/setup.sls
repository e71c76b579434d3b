# -*- coding: utf-8 -*-
# vim: ft=sls
---
# Bring up a new topology in the one order that works across minions:
#   sync (only what differs: mysqlrepl/orch/sync.jinja) -> preflight everywhere -> CA + keys/CSRs -> signing -> certificates,
#   server settings, accounts -> SSH tunnels (far sides, then near sides) -> seed replicas -> converge and verify.
#
#   salt-run state.orchestrate mysqlrepl.orch.setup
#   salt-run state.orchestrate mysqlrepl.orch.setup pillar='{"mysqlrepl_orch": {"topology": "staging"}}'
#
# Every step fails hard: nothing runs after a failed step.
{%- from 'mysqlrepl/orch/sync.jinja' import master_stale, sync_steps %}
{%- set orch = salt['pillar.get']('mysqlrepl_orch', {}) %}
{%- set topology = orch.get('topology') %}
{%- set tgt = orch.get('target', 'I@mysqlrepl:*') %}
{%- if topology %}
{%- set tgt = '( ' ~ tgt ~ ' ) and I@mysqlrepl:topology:' ~ topology %}
{%- endif %}

{{ sync_steps(tgt, master_stale() | trim) }}

mysqlrepl-preflight:
  salt.state:
    - tgt: {{ tgt | json }}
    - tgt_type: compound
    - sls: mysqlrepl.preflight
    - failhard: true
    - require:
      - salt: mysqlrepl-sync-minions

mysqlrepl-keys:
  salt.state:
    - tgt: {{ tgt | json }}
    - tgt_type: compound
    - sls: mysqlrepl.csr
    - failhard: true
    - require:
      - salt: mysqlrepl-preflight

mysqlrepl-sign:
  salt.state:
    - tgt: {{ tgt | json }}
    - tgt_type: compound
    - sls: mysqlrepl.ca
    - failhard: true
    - require:
      - salt: mysqlrepl-keys

mysqlrepl-servers:
  salt.state:
    - tgt: {{ tgt | json }}
    - tgt_type: compound
    - sls: mysqlrepl.server
    - failhard: true
    - require:
      - salt: mysqlrepl-sign

# SSH tunnels: every far side first, then the sides that open them (their seeds and
# replication go through them)
mysqlrepl-tunnel-access:
  salt.state:
    - tgt: {{ tgt | json }}
    - tgt_type: compound
    - sls: mysqlrepl.tunnel_access
    - failhard: true
    - require:
      - salt: mysqlrepl-servers

mysqlrepl-tunnels:
  salt.state:
    - tgt: {{ tgt | json }}
    - tgt_type: compound
    - sls: mysqlrepl.tunnel
    - failhard: true
    - require:
      - salt: mysqlrepl-tunnel-access

mysqlrepl-seed:
  salt.runner:
    - name: mysqlrepl.seed
{%- if topology %}
    - topology: {{ topology | json }}
{%- endif %}
    - failhard: true
    - require:
      - salt: mysqlrepl-tunnels

mysqlrepl-converge:
  salt.state:
    - tgt: {{ tgt | json }}
    - tgt_type: compound
    - highstate: false
    - sls: mysqlrepl
    - failhard: true
    - require:
      - salt: mysqlrepl-seed
