#!/usr/bin/env python3
"""
Run every ``bench/*.py`` at its small CI size, so a bench that no longer runs
fails the test command (tests/run) instead of rotting unnoticed.

Each bench declares, in two comment lines of its own source:

    # ci-args: --size-mb 20 --runs 1
    # last-line: seed size_mb=<> engines=<> stall_max_ms=<> lock_ms=<> seed_s=<>

``ci-args`` are the arguments of its small run; ``last-line`` is the form of
the one line it ends with: its name, then the keys it must print as
``key=value`` (written ``key`` or ``key=<…>``; more keys are allowed). A bench without both lines fails here.
Figures at this size are printed, never held to targets.

    .venv/bin/python tests/support/run_benches.py [--timeout 1200] [name ...]

Exit 0 when every bench exited 0 and ended with its line; 1 otherwise. Each
bench's whole output is kept in ``bench/out/ci-<name>.log`` (git-ignored).
"""

import argparse
import os
import pathlib
import re
import shlex
import signal
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[2]
BENCH_DIR = REPO / "bench"
OUT_DIR = BENCH_DIR / "out"
KV = re.compile(r"^[a-z][a-z0-9_]*=\S+$")


def declarations(path):
    """(ci args, [name, key, ...]) declared in a bench's source, or a reason it has none."""
    args = line = None
    for text in path.read_text(encoding="utf-8").splitlines():
        stripped = text.strip()
        if stripped.startswith("# ci-args:"):
            args = shlex.split(stripped[len("# ci-args:"):])
        elif stripped.startswith("# last-line:"):
            # "name key key2" or "name key=<> key2=<N>": the keys, in either spelling
            line = [tok.split("=", 1)[0] for tok in stripped[len("# last-line:"):].split()]
    if args is None or not line:
        return None, "declares no '# ci-args:' and '# last-line:' comment lines"
    if line[0] != path.stem:
        return None, f"'# last-line:' must start with the bench's name {path.stem!r}, got {line[0]!r}"
    return (args, line), None


def check_last_line(output, form):
    """None if the output's last non-empty line has the declared form, else what is wrong."""
    lines = [ln for ln in output.splitlines() if ln.strip()]
    if not lines:
        return "printed nothing"
    last = lines[-1].split()
    if last[0] != form[0]:
        return f"last line does not start with {form[0]!r}: {lines[-1]!r}"
    bad = [tok for tok in last[1:] if not KV.match(tok)]
    if bad:
        return f"last line has tokens that are not key=value: {bad}"
    keys = {tok.split("=", 1)[0] for tok in last[1:]}
    missing = [k for k in form[1:] if k not in keys]
    if missing:
        return f"last line lacks {missing}: {lines[-1]!r}"
    return None


class Stopped(Exception):
    """SIGTERM or SIGINT reached the runner: the running bench was stopped, no other starts."""


CURRENT = {"proc": None}


def _stop(signum, _frame):
    # the bench runs in its own session (so a Ctrl-C on the terminal reaches only this runner):
    # pass the signal on, let it clean up (servers, Salt daemons), then stop
    proc = CURRENT["proc"]
    if proc is not None and proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    raise Stopped(signal.Signals(signum).name)


def run_one(path, args, form, timeout):
    OUT_DIR.mkdir(exist_ok=True)
    log = OUT_DIR / f"ci-{path.stem}.log"
    cmd = [sys.executable, str(path), *args]
    print(f"==> bench {path.stem}: {' '.join(shlex.quote(c) for c in cmd[1:])}", flush=True)
    started = time.monotonic()
    with open(log, "w", encoding="utf-8") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True)
        CURRENT["proc"] = proc
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            # SIGTERM: the bench stops its servers and daemons itself; then make sure
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            rc = f"timeout after {timeout} s"
        finally:
            CURRENT["proc"] = None
    elapsed = time.monotonic() - started
    output = log.read_text(encoding="utf-8", errors="replace")
    problem = f"exit {rc}" if rc != 0 else check_last_line(output, form)
    tail = [ln for ln in output.splitlines() if ln.strip()][-1:] or ["(no output)"]
    print(f"    {elapsed:.0f} s, {'FAILED: ' + problem if problem else 'ok'}", flush=True)
    print(f"    {tail[0]}", flush=True)
    if problem:
        print(f"    last lines of {log}:", flush=True)
        for ln in output.splitlines()[-25:]:
            print(f"      {ln}", flush=True)
    return problem


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--timeout", type=int, default=1200, help="seconds per bench")
    parser.add_argument("names", nargs="*", help="only these benches (file stems)")
    opts = parser.parse_args()
    benches = sorted(BENCH_DIR.glob("*.py"))
    if opts.names:
        benches = [b for b in benches if b.stem in opts.names]
    if not benches:
        print("run_benches: no bench found", file=sys.stderr)
        return 1
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    failures = {}
    for path in benches:
        decl, why = declarations(path)
        if decl is None:
            failures[path.stem] = why
            print(f"==> bench {path.stem}: FAILED: {why}", flush=True)
            continue
        problem = run_one(path, *decl, opts.timeout)
        if problem:
            failures[path.stem] = problem
    if failures:
        print(f"run_benches: {len(failures)} of {len(benches)} failed: {failures}", file=sys.stderr)
        return 1
    print(f"run_benches: {len(benches)} benches ran at their CI size", flush=True)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Stopped as exc:
        print(f"run_benches: stopped by {exc}; the running bench was stopped and cleaned up", file=sys.stderr)
        sys.exit(1)
