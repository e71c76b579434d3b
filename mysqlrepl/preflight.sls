# -*- coding: utf-8 -*-
# vim: ft=sls
---
# Validate the whole mysqlrepl pillar and reach every local server before
# anything changes. Every other state of the formula requires this one.
mysqlrepl-preflight:
  mysqlrepl.preflight:
    - name: local
