"""Sweeps under bad input and hard stops: workers die with the sweep process (SIGKILL, SIGTERM, Ctrl-C), one sweep
at a time per results table, bad --workers / --threads-per-run refused before anything is written, no row left
'running', and a dry run of a million-point grid in seconds.

The process tests start a real ``neuromorph sweep --workers 2`` on a tiny sweep (scikit-learn digits, 300
examples) and stop it once its first run has finished (so the workers are past their start-up).
"""

import fcntl
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import test_sweep

from neuromorph import sweep as sweep_mod
from neuromorph.cli import main
from neuromorph.sweep import RESULTS, SweepError, load_sweep, read_results, run_sweep, run_task

# the base config of test_sweep.py, one epoch longer
BASE = test_sweep.BASE.replace("epochs = 2", "epochs = 3")
assert "epochs = 3" in BASE

# 8 hardware runs + 2 references: long enough that a sweep of 2 workers is still running after its first run
SWEEP = """base = "base.toml"
seeds = [0, 1]

[axes]
"device.max_pulses" = [16, 32, 64, 128]
"""

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}


def write_sweep(d: Path, sweep: str = SWEEP) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "base.toml").write_text(BASE)
    (d / "sweep.toml").write_text(sweep)
    return d / "sweep.toml"


def children(pid: int) -> set[int]:
    """Pids whose parent is ``pid`` (from /proc/*/stat)."""
    out = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.add(int(stat.parent.name))
    return out


def alive(pid: int) -> bool:
    """Running (a zombie that nobody reaped is dead)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def is_worker(pid: int) -> bool:
    try:
        return b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def n_finished(db: Path) -> int:
    if not db.is_file():
        return 0
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            return con.execute("SELECT count(*) FROM runs WHERE status IN ('done', 'failed')").fetchone()[0]
        finally:
            con.close()
    except sqlite3.OperationalError:  # the table is being created
        return 0


def start_sweep(tmp_path: Path) -> tuple[subprocess.Popen, Path, set[int]]:
    """A real ``neuromorph sweep --workers 2``, once its first run is finished: (process, out, its children: the 2
    workers and multiprocessing's resource tracker)."""
    path = write_sweep(tmp_path)
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "neuromorph.cli", "sweep", str(path), "--workers", "2", "--out",
                             str(out)], env=ENV, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while n_finished(out / RESULTS) == 0:
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline, "no run finished in 120 s"
        time.sleep(0.05)
    kids = children(proc.pid)
    assert proc.poll() is None and len({p for p in kids if is_worker(p)}) == 2, \
        "the sweep ended before it was stopped: make the runs longer"
    assert n_finished(out / RESULTS) < 10
    return proc, out, kids


def wait_gone(pids: set[int], timeout: float = 10.0) -> set[int]:
    deadline = time.monotonic() + timeout
    while (left := {p for p in pids if alive(p)}) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
def test_workers_die_with_the_sweep_process(tmp_path, sig):
    proc, out, kids = start_sweep(tmp_path)
    try:
        os.kill(proc.pid, sig)  # the parent only, not its process group
        rc = proc.wait(timeout=30)
        left = wait_gone(kids)
        assert not left, f"children {sorted(left)} outlived the sweep process ({sig.name}): " + " | ".join(
            Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ").decode() for p in left)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # whatever is left of this test's session
        except ProcessLookupError:
            pass
        proc.wait()
    err = proc.stderr.read().decode()
    assert rc == {signal.SIGKILL: -9, signal.SIGTERM: 143, signal.SIGINT: 130}[sig], err
    if sig == signal.SIGINT:
        assert "interrupted" in err
    _, rows = read_results(out / RESULTS)
    status = [r["status"] for r in rows]
    assert len(rows) == 10 and 1 <= status.count("done") + status.count("failed") < 10
    if sig != signal.SIGKILL:  # stopped in order: nothing is left 'running'
        assert "running" not in status, status


def test_a_second_sweep_into_the_same_table_stops_at_once(tmp_path, capsys):
    path = write_sweep(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    # another sweep holds the table (flock conflicts between two opens, in one process too)
    with open(out / (RESULTS + ".lock"), "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        f.write("4242\n")
        f.flush()
        t0 = time.perf_counter()
        assert main(["sweep", str(path), "--workers", "1", "--out", str(out)]) == 2
        assert time.perf_counter() - t0 < 10
        err = capsys.readouterr().err
        assert f"{out / RESULTS} is in use by neuromorph sweep pid 4242" in err and "another --out" in err
        assert not (out / RESULTS).exists()  # nothing written
        with pytest.raises(SweepError, match="in use by neuromorph sweep pid 4242"):
            run_sweep(load_sweep(path), out, workers=1, log=None)
    # released with its holder: the lock is taken and given back
    with sweep_mod._lock(out):
        assert (out / (RESULTS + ".lock")).read_text().strip() == str(os.getpid())
        with pytest.raises(SweepError, match=f"pid {os.getpid()}"):
            with sweep_mod._lock(out):
                pass
    with sweep_mod._lock(out):
        pass


def test_a_second_sweep_process_on_one_table_stops_naming_the_first(tmp_path):
    # 40 hardware runs: the first sweep is still running when the second has started (its start takes seconds)
    path = write_sweep(tmp_path, SWEEP.replace("[16, 32, 64, 128]", str(list(range(16, 36)))))
    out = tmp_path / "out"
    out.mkdir()
    cmd = [sys.executable, "-m", "neuromorph.cli", "sweep", str(path), "--workers", "1", "--out", str(out)]
    first = subprocess.Popen(cmd, env=ENV, start_new_session=True, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE)
    try:
        lock = out / (RESULTS + ".lock")
        deadline = time.monotonic() + 60
        while not (lock.is_file() and lock.read_text().strip() == str(first.pid)):
            assert first.poll() is None, first.stderr.read().decode()
            assert time.monotonic() < deadline, "the first sweep did not take the lock in 60 s"
            time.sleep(0.05)
        second = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=60)
        assert second.returncode == 2
        assert f"is in use by neuromorph sweep pid {first.pid}" in second.stderr
    finally:
        try:
            os.killpg(first.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        first.wait()


@pytest.mark.parametrize("args, message", [
    (["--threads-per-run", "0"], "--threads-per-run 0 is invalid: must be an integer >= 1"),
    (["--threads-per-run", "-3"], "--threads-per-run -3 is invalid: must be an integer >= 1"),
    (["--workers", "0"], "--workers 0 is invalid: must be an integer >= 1"),
    (["--workers", "-2"], "--workers -2 is invalid: must be an integer >= 1"),
    (["--workers", "0", "--dry-run"], "--workers 0 is invalid"),
])
def test_bad_workers_and_threads_are_refused_before_anything_is_written(tmp_path, capsys, args, message):
    path = write_sweep(tmp_path)
    out = tmp_path / "out"
    assert main(["sweep", str(path), "--out", str(out), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not out.exists()
    with pytest.raises(SweepError, match="must be an integer >= 1"):
        run_sweep(load_sweep(path), out, threads_per_run=0, log=None)
    with pytest.raises(SweepError, match="must be an integer >= 1"):
        run_sweep(load_sweep(path), out, workers=-1, log=None)
    assert not out.exists()


def test_a_run_task_with_bad_threads_fails_instead_of_raising(tmp_path):
    spec = load_sweep(write_sweep(tmp_path)).runs[0]
    res = run_task(spec.task(threads=0))
    assert res["status"] == "failed" and "--threads-per-run 0 is invalid" in res["error"]


def test_no_row_is_left_running(tmp_path, monkeypatch):
    """An interrupted sweep leaves its unfinished runs 'pending'; rows left 'running' by a process that died are
    run again (their attempts counted); failed runs stay failed (rerun with retry_failed)."""
    path = write_sweep(tmp_path)
    out = tmp_path / "out"
    calls, interrupt = [], [True]

    def fake(task):
        calls.append(task["run_id"])
        if len(calls) == 3 and interrupt[0]:
            raise KeyboardInterrupt
        return {"run_id": task["run_id"], "status": "failed" if len(calls) == 1 else "done", "error": "boom",
                "history": [], "wall_s": 0.0}

    monkeypatch.setattr(sweep_mod, "run_task", fake)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(load_sweep(path), out, workers=1, log=None)
    _, rows = read_results(out / RESULTS)
    by_status = {s: [r["run_id"] for r in rows if r["status"] == s] for s in ("failed", "done", "pending")}
    assert by_status == {"failed": calls[:1], "done": calls[1:2], "pending": by_status["pending"]}
    interrupted = calls[2]
    assert len(by_status["pending"]) == 8 and interrupted in by_status["pending"]
    # a process killed while a run was in progress leaves the row 'running': the next sweep runs it again
    con = sqlite3.connect(out / RESULTS)
    con.execute("UPDATE runs SET status = 'running' WHERE run_id = ?", (interrupted,))
    con.commit()
    con.close()
    interrupt[0] = False
    logged = []
    counts = run_sweep(load_sweep(path), out, workers=1, log=logged.append)
    assert counts["ran"] == 8 and counts["skipped"] == 2
    assert any("1 of them were left running by a sweep process that ended" in line for line in logged)
    _, rows = read_results(out / RESULTS)
    assert sorted(r["status"] for r in rows) == ["done"] * 9 + ["failed"]
    assert {r["run_id"]: r["attempts"] for r in rows}[interrupted] == 2


def million(tmp_path: Path, last_epochs: int = 10) -> Path:
    """A grid of 10^6 points (six axes of 10 values); ``last_epochs``: the last value of the last axis."""
    ten = lambda vals: "[" + ", ".join(map(str, vals)) + "]"  # noqa: E731
    return write_sweep(tmp_path, f"""base = "base.toml"
seeds = [0, 1]

[axes]
"device.max_pulses" = {ten(range(8, 18))}
"device.c2c_sigma" = {ten(i / 100 for i in range(10))}
"hardware.dac_bits" = {ten(range(2, 12))}
"hardware.activity_bits" = {ten(range(2, 12))}
"train.batch_size" = {ten(range(10, 20))}
"train.epochs" = {ten([*range(1, 10), last_epochs])}
""")


def test_dry_run_of_a_million_points_is_prompt(tmp_path):
    path = million(tmp_path)
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "neuromorph.cli", "sweep", str(path), "--dry-run"], env=ENV,
                         capture_output=True, text=True, timeout=120)
    wall = time.perf_counter() - t0
    assert res.returncode == 0, res.stderr
    # 10^6 points x 2 seeds + 2 seeds x 100 references (batch size x epochs)
    assert "1000000 points x 2 seeds, 2000200 runs (valid; nothing run)" in res.stdout
    assert "points checked (every axis value" in res.stdout
    assert wall < 30, f"the dry run took {wall:.1f}s"


def test_dry_run_finds_a_bad_value_anywhere_in_a_large_grid(tmp_path, capsys):
    path = million(tmp_path, 0)  # train.epochs = 0, the last value of the last axis
    assert main(["sweep", str(path), "--dry-run"]) == 2
    assert "train.epochs = 0 is invalid: must be an integer >= 1" in capsys.readouterr().err


@pytest.mark.parametrize("mode", ["grid", "zip"])
def test_dry_run_counts_match_the_expansion(tmp_path, monkeypatch, mode):
    axes = ('"device.max_pulses" = [16, 32, 64]\n"train.batch_size" = [10, 20, 30]\n"hardware.dac_bits" = [4, 6, 8]'
            if mode == "zip" else '"device.max_pulses" = [16, 32, 64]\n"train.batch_size" = [10, 20]\n')
    path = write_sweep(tmp_path, f'base = "base.toml"\nseeds = [0, 1]\nmode = "{mode}"\n[axes]\n{axes}\n')
    full = load_sweep(path)
    monkeypatch.setattr(sweep_mod, "EXPAND_LIMIT", 2)  # count, check a sample
    dry = load_sweep(path, expand=False)
    assert dry.runs == [] and (dry.n_points, dry.n_runs) == (full.n_points, full.n_runs)
    with pytest.raises(ValueError, match="needs the expanded sweep"):
        run_sweep(dry, tmp_path / "out", workers=1, log=None)
    assert full.n_runs == len(full.runs) == (3 * 2 + 3 * 2 if mode == "zip" else 6 * 2 + 2 * 2)
