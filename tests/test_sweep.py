"""Sweeps: validation before any run, the SQLite table, serial = pool = Ray, kill and resume, failed runs, figures.

Every sweep here is tiny (scikit-learn digits, 300 training examples, 2 epochs) and runs on one torch thread per
run, so its results are bit-for-bit reproducible in any process.
"""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from neuromorph.cli import main
from neuromorph.sweep import RESULTS, SweepError, load_sweep, read_results, run_sweep

BASE = """name = "tiny-sweep"

[model]
layers = [64, 32, 10]
loss = "xent"

[ep]
T = 20
K = 6

[train]
epochs = 2
batch_size = 20
momentum = 0.0
lr = [0.2, 0.1]

[data]
name = "digits"
n_train = 300
n_test = 100

[hardware]
device = "ag_a_si"
"""

# BPTT has no hardware counterpart: those hardware runs raise (and are recorded as failed), their
# references train
SWEEP = """base = "base.toml"
seeds = [0, 1]

[axes]
"device.max_pulses" = [16, 64]
"train.algorithm" = ["ep", "bptt"]
"""

FIELDS = ("status", "kind", "seed", "test_acc", "best_test_acc", "train_acc", "test_loss", "pulses", "energy_J",
          "saturated_fraction", "epochs")


def write_sweep(d: Path, sweep: str = SWEEP, base: str = BASE) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "base.toml").write_text(base)
    (d / "sweep.toml").write_text(sweep)
    return d / "sweep.toml"


def table(out: Path) -> dict:
    """run_id -> the result fields, the per-epoch accuracies and pulses, and the error's first line."""
    _, rows = read_results(out / RESULTS)
    return {r["run_id"]: {**{k: r[k] for k in FIELDS}, "error": (r["error"] or "").split("\n")[0],
                          "curve": [(h["test_acc"], h["train_acc"], h["train_loss"], h.get("pulses"))
                                    for h in r["history"]]} for r in rows}


def assert_same_table(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for rid in a:
        for k, v in a[rid].items():
            w = b[rid][k]
            if k == "curve":
                assert len(v) == len(w)
                for x, y in zip(v, w):
                    assert [u is None for u in x] == [u is None for u in y], (rid, k)
                    assert [u for u in x if u is not None] == pytest.approx([u for u in y if u is not None], rel=0,
                                                                            abs=1e-12), (rid, k)
            elif isinstance(v, float):
                assert w == pytest.approx(v, rel=0, abs=1e-12), (rid, k)
            else:
                assert v == w, (rid, k, v, w)


@pytest.fixture(scope="module")
def serial(tmp_path_factory):
    d = tmp_path_factory.mktemp("serial")
    path = write_sweep(d)
    t0 = time.perf_counter()
    counts = run_sweep(load_sweep(path), d / "out", workers=1, log=None)
    return {"path": path, "out": d / "out", "counts": counts, "wall_s": time.perf_counter() - t0}


def test_serial_sweep_writes_one_row_per_run_and_records_failures(serial):
    counts = serial["counts"]
    # 2 x 2 points x 2 seeds hardware runs + 2 reference configs (EP and BPTT) x 2 seeds
    assert counts["ran"] == 12 and counts["skipped"] == 0
    assert counts["failed"] == 4  # the hardware runs with BPTT, which the hardware does not have
    meta, rows = read_results(serial["out"] / RESULTS)
    assert [a[0] for a in meta["axes"]] == ["device.max_pulses", "train.algorithm"]
    assert len(rows) == 12 and len({r["run_id"] for r in rows}) == 12
    for r in rows:
        assert r["attempts"] == 1 and r["finished_at"] >= r["started_at"]
        if r["kind"] == "hardware" and r["params"]["train.algorithm"] == "bptt":
            assert r["status"] == "failed" and "BPTT" in r["error"] and r["history"] == []
            continue
        assert r["status"] == "done" and r["error"] is None
        assert len(r["history"]) == 2 and r["test_acc"] == r["history"][-1]["test_acc"]
        assert r["best_test_acc"] == max(h["test_acc"] for h in r["history"])
        assert r["wall_s"] > 0
        if r["kind"] == "hardware":
            assert r["pulses"] == sum(h["pulses"] for h in r["history"]) > 0
            assert r["energy_J"] is not None
        else:
            assert r["pulses"] is None and "device.max_pulses" not in r["params"]
    refs = [r for r in rows if r["kind"] == "ideal"]
    assert sorted((r["seed"], json.dumps(r["params"])) for r in refs) == sorted(
        (seed, json.dumps({"train.algorithm": a})) for seed in (0, 1) for a in ("ep", "bptt"))
    # the axes are columns (indexed) of the table
    con = sqlite3.connect(serial["out"] / RESULTS)
    n = con.execute('SELECT count(*) FROM runs WHERE "device.max_pulses" = 64 AND status = \'done\'').fetchone()[0]
    assert n == 2
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    con.close()
    # the device card of each hardware run is stored, with the swept value
    hw = next(r for r in rows if r["kind"] == "hardware" and r["params"]["device.max_pulses"] == 16)
    assert 'max_pulses = { value = 16, unit = "levels", source = "sweep axis device.max_pulses" }' in hw["card"]


def test_a_finished_sweep_reruns_nothing_and_retries_failed_runs_only_when_asked(serial, tmp_path):
    out = tmp_path / "out"
    import shutil

    shutil.copytree(serial["out"], out)
    before = table(out)
    counts = run_sweep(load_sweep(serial["path"]), out, workers=1, log=None)
    assert counts["ran"] == 0 and counts["skipped"] == 12
    counts = run_sweep(load_sweep(serial["path"]), out, workers=1, retry_failed=True, log=None)
    assert counts["ran"] == 4 and counts["failed"] == 4
    _, rows = read_results(out / RESULTS)
    assert sorted(r["attempts"] for r in rows) == [1] * 8 + [2] * 4
    assert_same_table(before, table(out))


def test_process_pool_gives_the_serial_table(serial, tmp_path):
    t0 = time.perf_counter()
    counts = run_sweep(load_sweep(serial["path"]), tmp_path / "out", workers=2, log=None)
    wall = time.perf_counter() - t0
    assert counts["ran"] == 12 and counts["failed"] == 4
    assert_same_table(table(serial["out"]), table(tmp_path / "out"))
    print(f"serial {serial['wall_s']:.1f}s, pool of 2 {wall:.1f}s")


@pytest.mark.slow
def test_local_ray_instance_gives_the_serial_table(serial, tmp_path):
    try:
        import ray
    except ImportError:
        if os.environ.get("CI") == "true":
            pytest.fail("ray is not installed (pip install -e '.[dev]' installs it)")
        pytest.skip("ray is not installed")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        counts = run_sweep(load_sweep(serial["path"]), tmp_path / "out", ray_address="local", log=None)
    finally:
        ray.shutdown()
    assert counts["ran"] == 12 and counts["failed"] == 4
    assert_same_table(table(serial["out"]), table(tmp_path / "out"))
    _, rows = read_results(tmp_path / "out" / RESULTS)
    assert len({r["pid"] for r in rows}) >= 1 and all(r["pid"] != os.getpid() for r in rows)


def test_killed_sweep_resumes_with_the_missing_runs_only(serial, tmp_path):
    path = serial["path"]
    out = tmp_path / "out"
    db = out / RESULTS
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    proc = subprocess.Popen([sys.executable, "-m", "neuromorph.cli", "sweep", str(path), "--workers", "1", "--out",
                             str(out)], env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.monotonic() + 180
    n_done = 0
    try:
        while n_done == 0:
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "no run finished in 180 s"
            time.sleep(0.02)
            if db.is_file():
                try:
                    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
                    n_done = con.execute("SELECT count(*) FROM runs WHERE status IN ('done', 'failed')").fetchone()[0]
                    con.close()
                except sqlite3.OperationalError:  # the table is being created
                    pass
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    _, rows = read_results(db)
    finished = {r["run_id"]: r["finished_at"] for r in rows if r["status"] in ("done", "failed")}
    interrupted = {r["run_id"] for r in rows if r["status"] == "running"}
    assert 1 <= len(finished) < 12, "the sweep finished before it was killed: make the runs longer"
    assert len(interrupted) <= 1 and len(rows) == 12  # serial: at most one run was in progress

    counts = run_sweep(load_sweep(path), out, workers=1, log=None)
    assert counts["ran"] == 12 - len(finished) and counts["skipped"] == len(finished)
    _, rows = read_results(db)
    assert all(r["status"] in ("done", "failed") for r in rows)
    for r in rows:
        if r["run_id"] in finished:  # never repeated
            assert r["attempts"] == 1 and r["finished_at"] == finished[r["run_id"]]
        else:
            assert r["attempts"] == (2 if r["run_id"] in interrupted else 1)
            assert r["finished_at"] > max(finished.values())
    assert_same_table(table(serial["out"]), table(out))


@pytest.mark.parametrize("axes, message", [
    ('"hardware.adc_bitz" = [4, 8]', "adc_bitz"),
    ('"device.no_such_parameter" = [1]', "'no_such_parameter' is not a device-card parameter"),
    ('"device.dw_min" = [0.01]', "'device.dw_min' does not apply to the card 'Ag:a-Si' (model 'neurosim')"),
    ('"hardware.adc_bits" = []', "axis 'hardware.adc_bits' is empty"),
    ('"hardware.adc_bits" = ["eight"]', "hardware.adc_bits = 'eight' is invalid: must be an integer"),
    ('"hardware.adc_bits" = [1]', "hardware.adc_bits = 1 is invalid"),
    ('"device.max_pulses" = [8.5]', "axis 'device.max_pulses' value 8.5 is invalid: must be an integer count"),
    ('"device.c2c_sigma" = ["high"]', "axis 'device.c2c_sigma' value 'high' is invalid: must be a number"),
    ('"device.max_pulses" = [0]', "max_pulses"),
    ('"device.max_pulses" = [8, 8]', "repeats the value 8"),
    ('"train.seed" = [1, 2]', "use seeds"),
    ('"hardware.adc_bits" = 8', "must be a list of values"),
    ('"adc_bits" = [8]', "must be section.key"),
    ('"hardware.device" = ["ag_a_si", "no_such_device"]', "unknown device preset 'no_such_device'"),
])
def test_bad_sweep_files_are_refused_before_any_run(tmp_path, capsys, axes, message):
    path = write_sweep(tmp_path, f'base = "base.toml"\nseeds = [0]\n\n[axes]\n{axes}\n')
    with pytest.raises(SweepError, match=None) as e:
        load_sweep(path)
    assert message in str(e.value) and str(path) in str(e.value)
    out = tmp_path / "out"
    assert main(["sweep", str(path), "--workers", "1", "--out", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()  # nothing ran, no table


@pytest.mark.parametrize("sweep, message", [
    ('base = "missing.toml"', "does not exist"),
    ('base = "base.toml"\nseeds = []', "seeds = [] must be a non-empty list"),
    ('base = "base.toml"\nseeds = [0, 0]', "repeats a seed"),
    ('base = "base.toml"\nmode = "random"', "mode = 'random' is not allowed"),
    ('base = "base.toml"\nmode = "zip"\n[axes]\n"hardware.adc_bits" = [4, 8]\n"hardware.dac_bits" = [4]',
     "equal length"),
    ('base = "base.toml"\nmode = "zip"\n[axes]\n"hardware.adc_bits" = [4, 8, 4]\n"hardware.dac_bits" = [4, 4, 4]',
     "point 3 repeats point 1 (hardware.adc_bits = 4, hardware.dac_bits = 4)"),
    ('base = "base.toml"\n[train]\nepochz = 2', "unknown key(s) epochz in [train]"),
    ('base = "base.toml"\n[card]\nparameters = {}', "[device] table"),
])
def test_bad_sweep_settings_are_refused(tmp_path, sweep, message):
    with pytest.raises(SweepError) as e:
        load_sweep(write_sweep(tmp_path, sweep))
    assert message in str(e.value)


def test_run_ids_are_deterministic_and_follow_the_resolved_config(tmp_path):
    a = load_sweep(write_sweep(tmp_path / "a"))
    b = load_sweep(write_sweep(tmp_path / "b"))
    assert [r.run_id for r in a.runs] == [r.run_id for r in b.runs]
    assert len({r.run_id for r in a.runs}) == len(a.runs) == 12
    # zip mode pairs the values; inline sections override the base; a changed base gives other ids
    z = load_sweep(write_sweep(tmp_path / "z", 'base = "base.toml"\nmode = "zip"\n[train]\nepochs = 1\n[axes]\n'
                               '"device.max_pulses" = [16, 64]\n"device.c2c_sigma" = [0.0, 0.02]\n'))
    assert [r.params for r in z.runs if r.kind == "hardware" and r.seed == 0] == [
        {"device.max_pulses": 16, "device.c2c_sigma": 0.0}, {"device.max_pulses": 64, "device.c2c_sigma": 0.02}]
    assert all(r.config["train"]["epochs"] == 1 for r in z.runs)
    # zip: an axis may repeat a value (one-at-a-time ablations), the points differ
    a1 = load_sweep(write_sweep(tmp_path / "a1", 'base = "base.toml"\nmode = "zip"\n[axes]\n'
                                '"device.max_pulses" = [16, 64, 16]\n"device.c2c_sigma" = [0.0, 0.0, 0.02]\n'))
    assert [r.params for r in a1.runs if r.kind == "hardware" and r.seed == 0] == [
        {"device.max_pulses": 16, "device.c2c_sigma": 0.0}, {"device.max_pulses": 64, "device.c2c_sigma": 0.0},
        {"device.max_pulses": 16, "device.c2c_sigma": 0.02}]
    assert sum(r.kind == "ideal" for r in z.runs) == 1  # one seed, only hardware axes: one reference
    c = load_sweep(write_sweep(tmp_path / "c", base=BASE.replace("epochs = 2", "epochs = 3")))
    assert not {r.run_id for r in c.runs} & {r.run_id for r in a.runs}
    # an inline card instead of a preset
    card = ('[card.device]\nname = "linear"\nmodel = "neurosim"\n[card.parameters]\n'
            'g_max = { value = 5, unit = "uS" }\ng_min = { value = 100, unit = "nS" }\n'
            'max_pulses = { value = 64, unit = "levels" }\n')
    s = load_sweep(write_sweep(tmp_path / "s", 'base = "base.toml"\n[axes]\n"device.max_pulses" = [8, 1024]\n'
                               + card))
    hw = [r for r in s.runs if r.kind == "hardware"]
    assert 'name = "linear (max_pulses=8)"' in hw[0].card and "value = 1024" in hw[1].card


def test_plot_writes_every_figure(serial, tmp_path, capsys):
    out = tmp_path / "fig"
    assert main(["plot", str(serial["out"] / RESULTS), "--out", str(out)]) == 0
    names = {p.name for p in out.iterdir()}
    for stem in ("accuracy_vs_device_max_pulses", "accuracy_vs_train_algorithm", "heatmap", "learning_curves",
                 "cost_vs_accuracy"):
        assert {f"{stem}.png", f"{stem}.svg"} <= names, names
        assert (out / f"{stem}.png").stat().st_size > 5000
    svg = (out / "accuracy_vs_device_max_pulses.svg").read_text()
    assert "device max_pulses (levels)" in svg and "ideal reference" in svg
    assert "accuracy_vs_device_max_pulses.png" in capsys.readouterr().out
    # the cost model's energy per training sample is in the table, and its panel draws the Pareto front
    _, rows = read_results(serial["out"] / RESULTS)
    assert all(r["energy_per_sample_J"] > 0 for r in rows if r["kind"] == "hardware" and r["status"] == "done")
    assert "Pareto front" in (out / "cost_vs_accuracy.svg").read_text()
    assert main(["plot", str(tmp_path / "none.sqlite")]) == 2


def test_summary_names_every_parameter_in_full():
    """A point's line names every parameter, however long (one-at-a-time ablations differ in one of many)."""
    from neuromorph.sweep import format_summary

    params = [{"device.dw_min_std": 0.6, "device.dw_min_dtod": d, "device.w_max_dtod": 0.1, "device.A_up": -27.235}
              for d in (0.2, 0.0)]
    rows = [{"kind": "hardware", "point_id": str(i), "params": p, "status": "done", "test_acc": 0.5 + i / 10,
             "pulses": 10.0, "energy_J": 1e-6} for i, p in enumerate(params)]
    lines = format_summary(rows, list(params[0])).splitlines()
    assert "dw_min_dtod=0.2, w_max_dtod=0.1, A_up=-27.235" in lines[1]
    assert "dw_min_dtod=0.0, w_max_dtod=0.1, A_up=-27.235" in lines[2] and "0.6000 ± 0.0000" in lines[2]
