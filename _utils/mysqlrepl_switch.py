"""
The planned switchover's logic: precheck rules and the critical section.

Nothing here talks to Salt. The critical section gets two ready connections
(old and new master), the statements it will send (built beforehand from
``mysqlrepl_sql`` for the servers' versions) and a ``run(conn, statement)``
function; the prechecks get rows already read from the servers. Unit tests
drive the failure paths with scripted connections; the integration tests run
it against real servers.
"""

import time

# client-side codes and server codes that mean "the connection is gone"
_LOST_CODES = {0, 1053, 1927, 2002, 2003, 2006, 2013, 2014, 2055}
LOCK_WAIT_TIMEOUT = 1205
# MariaDB 10.11 global privilege bit of READ_ONLY ADMIN in mysql.global_priv's
# ``access`` (ALL PRIVILEGES sets every bit)
READ_ONLY_ADMIN_BIT = 1 << 33


def error_code(exc):
    """The MySQL error number behind a ``CommandExecutionError`` from ``mysqlrepl_db.run``."""
    cause = exc.__cause__ if exc.__cause__ is not None else exc
    args = getattr(cause, "args", ())
    if args and isinstance(args[0], int):
        return args[0]
    return None


def error_kind(exc):
    """``timeout`` (lock wait budget), ``lost`` (connection or server gone) or ``sql``."""
    cause = exc.__cause__ if exc.__cause__ is not None else exc
    if isinstance(cause, (OSError, EOFError)):
        return "lost"
    code = error_code(exc)
    if code == LOCK_WAIT_TIMEOUT:
        return "timeout"
    if code in _LOST_CODES or code is None:
        return "lost"
    return "sql"


# ---------------------------------------------------------------------------
# GTID positions (MariaDB: domain-server_id-seq, comma separated)
# ---------------------------------------------------------------------------

def parse_gtid_list(text):
    """``"0-11-5,1-12-3"`` -> ``{(0, 11): 5, (1, 12): 3}`` (a gtid_binlog_state)."""
    out = {}
    for part in (text or "").replace("\n", "").split(","):
        part = part.strip()
        if not part:
            continue
        domain, server_id, seq = (int(x) for x in part.split("-"))
        out[(domain, server_id)] = max(seq, out.get((domain, server_id), 0))
    return out


def errant_gtids(new_state, old_state):
    """
    MariaDB's rule for errant transactions: every (domain, server_id) in the
    candidate's ``gtid_binlog_state`` must be in the old master's, with a
    sequence number not beyond it. Returns the offending ``d-s-n`` entries.
    """
    new, old = parse_gtid_list(new_state), parse_gtid_list(old_state)
    return sorted(f"{d}-{s}-{n}" for (d, s), n in new.items() if n > old.get((d, s), 0))


def position_reached(have_pos, want_pos):
    """
    Is every domain of ``want_pos`` at or beyond its sequence in ``have_pos``? MariaDB
    sequence numbers grow per domain whatever the server_id, so the server_id is
    not compared (as MASTER_GTID_WAIT does not).
    """
    have = {d: (s, n) for (d, s), n in parse_gtid_list(have_pos).items()}
    for (domain, server_id), seq in parse_gtid_list(want_pos).items():
        got = have.get(domain)
        if got is None or got[1] < seq:
            return False
    return True


def purged_domains(replica_pos, binlog_start):
    """
    Domains a replica at ``replica_pos`` (its ``gtid_slave_pos``) would need
    from binary logs a master has purged: ``binlog_start`` is the GTID state
    at the start of the master's oldest binary log (``BINLOG_GTID_POS`` of it).
    A replica behind that state in a domain, or with no position in a domain
    the state holds, would get error 1236 on connecting. Returns
    ``[(domain, replica_seq or None, first_seq_kept)]``.
    """
    def per_domain(text):
        out = {}
        for (domain, _server_id), seq in parse_gtid_list(text).items():
            out[domain] = max(seq, out.get(domain, 0))
        return out

    have, start = per_domain(replica_pos), per_domain(binlog_start)
    return sorted((d, have.get(d), seq) for d, seq in start.items() if have.get(d, -1) < seq)


# ---------------------------------------------------------------------------
# Who can write through read_only
# ---------------------------------------------------------------------------

def read_only_bypass(accounts, role_grants, exempt, bit=READ_ONLY_ADMIN_BIT, include_locked=False):
    """
    Accounts that can write on a read-only server: READ_ONLY ADMIN (``bit`` in
    ``mysql.global_priv`` access) granted directly, through any role they hold
    (transitively; the default role is named) or to PUBLIC.

    ``accounts``: rows of ``ACCOUNT_PRIVILEGES``; ``role_grants``: rows of
    ``ROLE_GRANTS``; ``exempt``: ``{(user, host)}`` allowed to (mysqlrepl's own
    accounts, the local admin, operator-listed ones). Locked accounts cannot
    log in and are skipped unless ``include_locked`` (an event runs as its
    definer all the same). Returns ``{"user@host": "how"}``.
    """
    def skip(row):
        return not include_locked and str(row["locked"]).lower() == "true"

    roles = {}
    users = []
    for row in accounts:
        access = int(row["access"] or 0)
        if str(row["is_role"]).lower() == "true" or row["user"] == "PUBLIC":
            roles[row["user"]] = access
        else:
            users.append(row)
    held = {}
    for grant in role_grants:
        held.setdefault((grant["user"], grant["host"]), set()).add(grant["role"])

    def role_has(role, seen):
        if role in seen:
            return False
        seen.add(role)
        if roles.get(role, 0) & bit:
            return True
        return any(role_has(r, seen) for r in held.get((role, ""), ()))

    out = {}
    if roles.get("PUBLIC", 0) & bit:
        for row in users:
            if (row["user"], row["host"]) not in exempt and not skip(row):
                out[f"{row['user']}@{row['host']}"] = "READ_ONLY ADMIN granted to PUBLIC"
    for row in users:
        key = (row["user"], row["host"])
        name = f"{row['user']}@{row['host']}"
        if key in exempt or name in out or skip(row):
            continue
        if int(row["access"] or 0) & bit:
            out[name] = "READ_ONLY ADMIN granted directly" + (
                " (ALL PRIVILEGES)" if int(row["access"]) == (1 << 64) - 1 else "")
            continue
        for role in sorted(held.get(key, ())):
            if role_has(role, set()):
                how = "default role" if row.get("default_role") == role else "role"
                out[name] = f"READ_ONLY ADMIN through {how} {role}"
                break
    return out


def definer_can_bypass(definer, accounts, role_grants, bit=READ_ONLY_ADMIN_BIT):
    """How the event definer ``user@host`` writes through read_only, or ``None``."""
    user, _, host = definer.rpartition("@")
    return read_only_bypass(accounts, role_grants, set(), bit, include_locked=True).get(f"{user}@{host}")


# ---------------------------------------------------------------------------
# The critical section
# ---------------------------------------------------------------------------

class Endpoint:
    """
    A server inside the critical section: its name, an open connection, ``run``,
    and the server's id for that connection's session (``CONNECTION_ID()``, read
    when it was opened; ``None`` when unknown).
    """

    def __init__(self, name, conn, run, session_id=None):
        self.name = name
        self.conn = conn
        self._run = run
        self.session_id = session_id

    def run(self, statement):
        return self._run(self.conn, statement)

    def close(self):
        try:
            self.conn.close()
        except Exception:  # pylint: disable=broad-except
            pass


def endpoint(name, conn, run, session_id=None):
    """An :class:`Endpoint` (Salt's ``__utils__`` exposes functions, not classes)."""
    return Endpoint(name, conn, run, session_id)


# a lost connection to the new master is settled over one fresh connection:
# each of its answers is bounded by FRESH_IO_S, and a killed session must have
# left the process list within SESSION_GONE_S
FRESH_IO_S = 2
SESSION_GONE_S = 2
UNKNOWN_THREAD = 1094


def end_session(conn, session_id, st, clock=time.monotonic, sleep=time.sleep, timeout=SESSION_GONE_S,
                interval=0.05):
    """
    Make sure the session ``session_id`` is over, through ``conn`` (an
    :class:`Endpoint` on a fresh connection to the same server): ``KILL
    CONNECTION`` (no such thread is fine), then wait until the process list no
    longer shows it, at most ``timeout`` seconds. Once it is gone, a statement
    it was running has either taken effect or never will. ``st["kill"](id)``
    and ``st["session"](id)`` are the statements. Returns ``"gone"`` or
    ``"unknown: <why>"``.
    """
    if session_id is None:
        return "unknown: its session id was not read when the connection was opened"
    try:
        conn.run(st["kill"](session_id))
    except Exception as exc:  # pylint: disable=broad-except
        if error_code(exc) != UNKNOWN_THREAD:
            return f"unknown: KILL CONNECTION {session_id} failed ({exc})"
    deadline = clock() + timeout
    while True:
        try:
            rows = conn.run(st["session"](session_id))
        except Exception as exc:  # pylint: disable=broad-except
            return f"unknown: cannot read the process list ({exc})"
        if not rows:
            return "gone"
        if clock() >= deadline:
            row = rows[0]
            return (f"unknown: session {session_id} is still listed after {timeout}s "
                    f"({row.get('command')}, {row.get('state')})")
        sleep(interval)


def time_limits(lock_budget, catchup_timeout, hold_s=0):
    """
    The write block's time limits, shared by the runner and the minion:
    ``io_s`` bounds every answer inside it, ``deadline_s`` (from its start)
    is the last moment the new master may be promoted, ``lost_s`` bounds
    settling a connection to the new master lost while it is made writable
    (one fresh connection: connect, KILL, the session gone, read_only),
    ``worst_s`` is the longest the block can take from its start (deadline,
    one promotion statement, ``lost_s``, two rollback statements), and
    ``runner_s`` is how long the runner waits for the job by default
    (``worst_s`` plus 20 s for connecting first).
    """
    io_s = int(lock_budget + catchup_timeout + hold_s + 10)
    deadline_s = lock_budget + catchup_timeout + hold_s + 30
    lost_s = 4 * FRESH_IO_S + SESSION_GONE_S
    worst_s = deadline_s + 3 * io_s + lost_s
    return {"io_s": io_s, "deadline_s": deadline_s, "lost_s": lost_s, "worst_s": worst_s,
            "fresh_io_s": FRESH_IO_S, "runner_s": int(worst_s + 20)}


def settle_lost(new, st, clock=time.monotonic, sleep=time.sleep):
    """
    The block's connection to ``new`` was lost while making it writable. Over
    one fresh connection (``st["fresh_new"]()``): end the block's session
    (:func:`end_session`), then read read_only. Returns ``(state, session,
    conn)``: state 0/1, ``None`` (the server is down) or ``"unknown"``;
    session ``"gone"``, ``"down"`` or ``"unknown: <why>"``; ``conn`` the fresh
    :class:`Endpoint` (for a rollback's START SLAVE), or ``None``: the caller
    closes it.
    """
    fresh = st.get("fresh_new")
    if fresh is None:
        return "unknown", "unknown: no way to open a fresh connection", None
    try:
        conn = fresh()
    except Exception as exc:  # pylint: disable=broad-except
        return "unknown", f"unknown: cannot connect ({exc})", None
    if conn is None:
        return None, "down", None
    session = end_session(conn, new.session_id, st, clock, sleep)
    try:
        state = int(conn.run(st["read_only"])[0]["ro"])
    except Exception:  # pylint: disable=broad-except
        state = "unknown"
    return state, session, conn


def critical_section(old, new, st, hold=None, clock=time.monotonic, sleep=time.sleep):
    """
    Move the write role from ``old`` to ``new`` (both :class:`Endpoint`, with
    connections opened and tested before the call; ``new.session_id`` is its
    connection's ``CONNECTION_ID()``). ``st`` holds the statements, built
    beforehand::

        old_read_only        SET STATEMENT lock_wait_timeout=<budget> FOR SET GLOBAL read_only=1
        old_writable         SET GLOBAL read_only=0 (rollback)
        gtid_pos             the old master's @@gtid_binlog_pos
        wait(pos)            MASTER_GTID_WAIT(pos, <timeout>) on the new master
        stop_replica / start_replica / new_writable / replica_status
        enable_events        ALTER EVENT ... ENABLE for events the new master must run
        fresh_new()          optional: an Endpoint on a fresh connection to the new
                             master, None when the server is down (it raises when it
                             cannot tell); used only when the block's own connection
                             to it is lost while making it writable
        kill(id) / session(id) / read_only
                             KILL CONNECTION, that session's process-list row,
                             SELECT @@GLOBAL.read_only AS ro (on the fresh connection)
        deadline_s           optional: past it, roll back instead of promoting

    ``hold``: ``{"after": step, "seconds": s}`` pauses after a step (fault
    drills). Returns what happened, step by step::

        {"outcome": "promoted" | "aborted" | "stopped", "reason": ..., "pos": ...,
         "old_read_only": True/False/None (unknown), "new_writable": bool,
         "steps": [{"step", "ms", "ok"}], "block_ms": read_only to writable}

    What each outcome guarantees (the reason says which case it is):

    * ``promoted``: the new master is writable (it answered, or its answer was
      lost and a fresh session read read_only=0), at ``pos`` or beyond; the
      old master answered that read_only is set and nothing here undid it.
    * ``aborted``: the old master answered that it is writable again; the new
      master is read-only (never asked, or asked and then read read_only=1 with
      the asking session over) or down (it restarts read-only); its
      replication was restarted, or the reason says to restart it by hand.
    * ``stopped``: an operator decides; which server may be writable depends
      on where it stopped, and the reason names it:

      - the old master lost while setting read_only (step 1): the old master
        may still be writable (its state is unknown); the new one is untouched
        (read-only, replicating);
      - the old master lost after going read-only, before its position was
        read: both are read-only;
      - a rollback whose ``read_only=0`` on the old master failed: both are
        read-only, unless that statement's answer was lost: then the old
        master may be writable and the new one is read-only;
      - the new master's answer to ``read_only=0`` lost and what took unknown
        (no fresh connection, no answer, or its session not known to be
        over): the old master is read-only, the new one may be writable.

      So at most one server may be writable, and "stopped" alone does not say
      none is: read the reason (and the servers) before naming a master.

    At no point are both writable: the new master is made writable only after
    the old one answered that read_only is set, and the old one is made
    writable again only while the new one is certainly read-only and cannot
    become writable later (never asked to, or its session that was asked is
    known to be over, or the server is down and restarts read-only).
    """
    out = {"outcome": None, "reason": "", "pos": None, "old_read_only": False,
           "new_writable": False, "replica_stopped": False, "steps": [], "block_ms": None}
    started = clock()

    def done(step, t0, ok=True, **extra):
        out["steps"].append(dict({"step": step, "ms": round((clock() - t0) * 1000, 2), "ok": ok}, **extra))
        if ok and hold and hold.get("after") == step:
            sleep(float(hold.get("seconds", 5)))

    def finish(outcome, reason):
        out["outcome"] = outcome
        out["reason"] = reason
        out["total_ms"] = round((clock() - started) * 1000, 2)
        return out

    def rollback(reason, via=None):
        """
        Undo in reverse: the new master replicates again (through ``via``, a fresh
        connection, when the block's own was lost), then the old one takes writes.
        """
        notes = []
        if out["replica_stopped"]:
            t0 = clock()
            try:
                (via or new).run(st["start_replica"])
                out["replica_stopped"] = False
                done("rollback_start_replica", t0)
            except Exception as exc:  # pylint: disable=broad-except
                done("rollback_start_replica", t0, ok=False, error=str(exc))
                notes.append(f"START SLAVE on {new.name} failed ({exc}): restart its replication by hand")
        t0 = clock()
        try:
            old.run(st["old_writable"])
            out["old_read_only"] = False
            done("rollback_old_writable", t0)
        except Exception as exc:  # pylint: disable=broad-except
            done("rollback_old_writable", t0, ok=False, error=str(exc))
            if error_kind(exc) == "lost":
                out["old_read_only"] = None
                return finish("stopped", f"{reason}; putting {old.name} back failed ({exc}): whether it "
                                         f"took is unknown ({old.name} may be writable); {new.name} is "
                                         "read-only")
            return finish("stopped", f"{reason}; putting {old.name} back failed ({exc}): every server is "
                                     "read-only, no master takes writes")
        if notes:
            return finish("aborted", f"{reason}; {old.name} is writable again; " + "; ".join(notes))
        return finish("aborted", f"{reason}; {old.name} is writable again, {new.name} replicates as before")

    # 1. The old master stops taking writes. read_only takes the global read
    #    lock: running writes finish first, new ones queue; the budget bounds
    #    the wait and a timeout leaves read_only at 0.
    t0 = clock()
    try:
        old.run(st["old_read_only"])
    except Exception as exc:  # pylint: disable=broad-except
        kind = error_kind(exc)
        done("old_read_only", t0, ok=False, error=str(exc))
        if kind == "timeout":
            return finish("aborted", f"{old.name} did not get read_only within the "
                                     f"{st['budget_s']}s budget (writes or locks held it up: {exc}); "
                                     "read_only stays 0, nothing changed")
        if kind == "lost":
            out["old_read_only"] = None
            return finish("stopped", f"lost {old.name} while setting read_only ({exc}): its state is "
                                     f"unknown; {new.name} is untouched and read-only")
        return finish("aborted", f"{old.name} refused read_only ({exc}); nothing changed")
    out["old_read_only"] = True
    blocked_at = t0
    done("old_read_only", t0)

    # 2. Everything the old master will ever have committed.
    t0 = clock()
    try:
        pos = old.run(st["gtid_pos"])[0]["pos"]
    except Exception as exc:  # pylint: disable=broad-except
        done("old_gtid_pos", t0, ok=False, error=str(exc))
        if error_kind(exc) == "lost":
            return finish("stopped", f"{old.name} was lost after going read-only, before its GTID position "
                                     f"could be read ({exc}): what it committed last is unknown, so "
                                     f"{new.name} is not promoted; every server is read-only")
        return rollback(f"reading {old.name}'s GTID position failed ({exc})")
    out["pos"] = pos
    done("old_gtid_pos", t0, pos=pos)

    # 3. The new master applies all of it (bounded wait).
    t0 = clock()
    try:
        reached = int(new.run(st["wait"](pos))[0]["result"]) == 0
    except Exception as exc:  # pylint: disable=broad-except
        done("new_catch_up", t0, ok=False, error=str(exc))
        return rollback(f"waiting for {pos} on {new.name} failed ({exc})")
    if not reached:
        detail = ""
        try:
            rs = new.run(st["replica_status"])
            rs = rs[0] if rs else {}
            detail = (f" (IO {rs.get('Slave_IO_Running')}, SQL {rs.get('Slave_SQL_Running')}"
                      f"{': ' + rs['Last_SQL_Error'] if rs.get('Last_SQL_Error') else ''}"
                      f"{'; applied up to ' + rs['Gtid_Slave_Pos'] if rs.get('Gtid_Slave_Pos') else ''})")
        except Exception:  # pylint: disable=broad-except
            pass
        done("new_catch_up", t0, ok=False, error="timeout")
        return rollback(f"{new.name} did not apply {pos} within {st['catchup_s']}s{detail}")
    done("new_catch_up", t0)

    # 4. The new master stops replicating (RESET comes after the window, so a
    #    rollback is a START SLAVE).
    t0 = clock()
    try:
        new.run(st["stop_replica"])
        out["replica_stopped"] = True
    except Exception as exc:  # pylint: disable=broad-except
        done("new_stop_replica", t0, ok=False, error=str(exc))
        out["replica_stopped"] = error_kind(exc) == "lost"  # unknown: try START SLAVE on rollback
        return rollback(f"STOP SLAVE on {new.name} failed ({exc})")
    done("new_stop_replica", t0)

    # 5. The new master takes writes -- unless the caller has stopped waiting
    #    (a stalled peer): then put everything back instead.
    if st.get("deadline_s") and clock() - started > st["deadline_s"]:
        return rollback(f"the write block took longer than {st['deadline_s']}s before {new.name} "
                        "could be made writable")
    t0 = clock()
    try:
        new.run(st["new_writable"])
    except Exception as exc:  # pylint: disable=broad-except
        done("new_writable", t0, ok=False, error=str(exc))
        if error_kind(exc) == "lost":
            # The new master is local to this minion (unix socket): a lost
            # connection means the server died, the session was killed, or its
            # answer did not come in time -- and then its SET GLOBAL read_only=0
            # may still be running. Over one fresh connection: end that session
            # and wait until it is gone (so the statement cannot land after a
            # rollback), then read read_only: 0 -> it took; 1 -> it never will;
            # down -> it restarts read-only (read_only=ON in its config file).
            t1 = clock()
            state, session, fresh = settle_lost(new, st, clock, sleep)
            try:
                done("new_settle_lost", t1, ok=state == 0 or session in ("gone", "down"),
                     session_id=new.session_id, session=session, read_only=state)
                if state == 0:
                    out["new_writable"] = True
                    out["block_ms"] = round((clock() - blocked_at) * 1000, 2)
                    return finish("promoted", f"{new.name} is writable at {pos} (its answer was lost, a new "
                                              f"session confirms read_only=0); {old.name} is read-only")
                if state is None or (state == 1 and session == "gone"):
                    return rollback(f"lost {new.name} while making it writable ({exc}); it is "
                                    + ("down (it restarts read-only)" if state is None else
                                       f"read-only and the session that was asked ({new.session_id}) is over"),
                                    via=fresh)
                why = (f"it reads read_only=1 but its session that was asked could not be ended ({session}): "
                       "a late read_only=0 could still land" if state == 1 else
                       f"its state is unknown ({session})")
                return finish("stopped", f"lost {new.name} while making it writable ({exc}): {why}, so "
                                         f"{old.name} stays read-only; {new.name} may be writable")
            finally:
                if fresh is not None:
                    fresh.close()
        return rollback(f"{new.name} refused read_only=0 ({exc})")
    out["new_writable"] = True
    out["block_ms"] = round((clock() - blocked_at) * 1000, 2)
    out["writable_at"] = time.time()  # wall clock, for figures taken elsewhere (bench)
    done("new_writable", t0)

    # 6. Events that ran on the old master run here now (failures reported, not undone).
    for stmt in st.get("enable_events", []):
        t0 = clock()
        try:
            new.run(stmt)
            done("enable_event", t0)
        except Exception as exc:  # pylint: disable=broad-except
            done("enable_event", t0, ok=False, error=str(exc))
    return finish("promoted", f"{new.name} is the writable master at {pos}; {old.name} is read-only")
