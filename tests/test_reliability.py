"""Bad input, concurrent runs, resumes, divergence and full disks: nothing lost, no raw traceback, no silent lie.

Each test reproduces one finding of a bad-input campaign against ``neuromorph train``, ``evaluate``,
``ep-vs-bptt``, ``curves`` and ``compare`` (the sweep, device and SPICE commands have their own files).
"""

import errno
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from neuromorph import train as train_mod
from neuromorph.cli import main
from neuromorph.config import ConfigError, dump_toml, load_config
from neuromorph.runio import RunLock, RunLocked, WriteFailed, atomic_write, json_line
from neuromorph.train import CheckpointError, Trainer, load_checkpoint, save_checkpoint

TINY = ["model.layers=[64,32,10]", "train.epochs=2", "train.progress=false", "ep.T=12", "ep.K=4",
        "train.batch_size=64", "data.n_train=300", "data.n_test=100"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def tiny_cfg(out, *extra):
    return load_config(None, TINY + [f"output.dir={json.dumps(str(out))}", *extra])


def cli(*args):
    return [sys.executable, "-m", "neuromorph.cli", *args]


def strict_lines(path: Path) -> list[dict]:
    """Every line of a JSON-lines file through a strict parser (no NaN/Infinity tokens)."""
    def refuse(token):
        raise ValueError(f"non-standard JSON token {token} in {path}")
    return [json.loads(line, parse_constant=refuse) for line in path.read_text().splitlines()]


@pytest.fixture
def tiny_toml(tmp_path):
    p = tmp_path / "tiny.toml"
    p.write_text('[model]\nlayers = [64, 32, 10]\n[ep]\nT = 12\nK = 4\n[train]\nepochs = 2\nprogress = false\n'
                 'batch_size = 64\n[data]\nn_train = 300\nn_test = 100\n')
    return p


# ---------------------------------------------------------------------------------------------- data loss and lies
def test_existing_run_is_refused_without_resume_or_overwrite(tmp_path, tiny_toml, capsys):
    out = tmp_path / "run"
    assert main(["train", "--config", str(tiny_toml), "--out", str(out)]) == 0
    before = (out / "metrics.jsonl").read_text()
    ck_before = (out / "checkpoint.pt").read_bytes()
    capsys.readouterr()
    assert main(["train", "--config", str(tiny_toml), "--out", str(out), "--set", "train.lr=0.05"]) == 2
    err = capsys.readouterr().err
    assert "already holds a run" in err and "checkpoint.pt" in err
    assert "--resume" in err and "--out" in err and "--overwrite" in err
    assert (out / "metrics.jsonl").read_text() == before and (out / "checkpoint.pt").read_bytes() == ck_before
    assert main(["train", "--config", str(tiny_toml), "--out", str(out), "--resume", "--overwrite"]) == 2
    assert "give one" in capsys.readouterr().err
    # an explicit --overwrite replaces it, and nothing of the old run survives
    assert main(["train", "--config", str(tiny_toml), "--out", str(out), "--overwrite", "--set", "train.epochs=1"]) == 0
    assert len(strict_lines(out / "metrics.jsonl")) == 1
    assert load_checkpoint(out / "checkpoint.pt")["epoch"] == 0


def test_out_that_is_a_file_or_under_a_file(tmp_path, tiny_toml, capsys):
    f = tmp_path / "afile"
    f.write_text("x")
    assert main(["train", "--config", str(tiny_toml), "--out", str(f)]) == 2
    assert "is a file" in capsys.readouterr().err
    assert main(["train", "--config", str(tiny_toml), "--out", str(f / "sub")]) == 2
    err = capsys.readouterr().err
    assert "Not a directory" in err and "Traceback" not in err
    assert f.read_text() == "x"


def test_concurrent_train_on_one_directory_is_refused_naming_the_holder(tmp_path, tiny_toml):
    out = tmp_path / "run"
    first = subprocess.Popen(cli("train", "--config", str(tiny_toml), "--out", str(out), "--set",
                                 "train.epochs=100000"),
                             env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not (out / "metrics.jsonl").exists():
            time.sleep(0.05)
        assert (out / "metrics.jsonl").exists(), first.stderr.read() if first.poll() is not None else "no start"
        for extra in ([], ["--resume"], ["--overwrite"]):
            r = subprocess.run(cli("train", "--config", str(tiny_toml), "--out", str(out), *extra), env=ENV,
                               capture_output=True, text=True, timeout=120)
            assert r.returncode == 2, (extra, r.stderr)
            assert f"pid {first.pid}" in r.stderr and "in use" in r.stderr, r.stderr
            assert "Traceback" not in r.stderr
        assert first.poll() is None  # the holder is untouched
    finally:
        first.kill()
        first.wait()
    # the kernel dropped the dead holder's lock: the directory resumes
    assert subprocess.run(cli("train", "--config", str(tiny_toml), "--out", str(out), "--resume", "--set",
                              "train.epochs=1"), env=ENV, capture_output=True, timeout=120).returncode == 0


def test_run_lock_in_process(tmp_path):
    with RunLock(tmp_path):
        with pytest.raises(RunLocked, match=f"pid {os.getpid()}"):
            RunLock(tmp_path).acquire()
    RunLock(tmp_path).acquire().release()  # free again


@pytest.mark.parametrize("override,key", [
    ("train.lr=[3e38]", "train.lr"), ("train.seed=5", "train.seed"), ("train.optimizer=\"adam\"", "train.optimizer"),
    ("model.layers=[64,16,10]", "model.layers"), ("ep.beta=0.2", "ep.beta"), ("train.decay_epochs=1", "decay_epochs"),
])
def test_resume_refuses_changes_it_cannot_honour(tmp_path, override, key):
    out = tmp_path / "run"
    Trainer(tiny_cfg(out)).fit(log=None)
    stored = (out / "config.toml").read_text()
    with pytest.raises(CheckpointError, match=key.replace(".", r"\.")) as e:
        Trainer(tiny_cfg(out, "train.epochs=4", override), resume=True).fit(log=None)
    assert "may not change" in str(e.value)
    assert (out / "config.toml").read_text() == stored  # nothing rewritten to claim the refused value


def test_resume_applies_and_records_allowed_changes(tmp_path, capsys):
    out = tmp_path / "run"
    Trainer(tiny_cfg(out, "train.decay_epochs=3")).fit(log=None)
    tr = Trainer(tiny_cfg(out, "train.epochs=4", "train.decay_epochs=6", "train.eval_batch_size=50",
                          "ep.convergence_tol=1e-2"), resume=True)
    assert tr.start_epoch == 2
    hist = tr.fit(log=print)
    assert "train.epochs 2 -> 4" in capsys.readouterr().out
    assert [h["epoch"] for h in strict_lines(out / "metrics.jsonl")] == [1, 2, 3, 4]
    assert [h["epoch"] for h in hist] == [1, 2, 3, 4]
    saved = load_config(out / "config.toml")
    assert saved.train.epochs == 4 and saved.train.decay_epochs == 6 and saved.train.eval_batch_size == 50
    (rec,) = strict_lines(out / "resumes.jsonl")
    assert rec["epoch"] == 2 and rec["changed"]["train.decay_epochs"] == {"from": 3, "to": 6}
    assert load_checkpoint(out / "checkpoint.pt")["resumes"] == [rec]
    # the epochs after the resume follow the new schedule
    assert hist[2]["lr"][0] == pytest.approx(train_mod.learning_rate(2, 0.1, 0.0, 6))


def test_resume_from_sgd_with_adam_is_a_clear_error_not_keyerror(tmp_path, tiny_toml, capsys):
    out = tmp_path / "run"
    assert main(["train", "--config", str(tiny_toml), "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["train", "--config", str(tiny_toml), "--out", str(out), "--resume",
                 "--set", "train.optimizer=adam"]) == 2
    err = capsys.readouterr().err
    assert "train.optimizer: 'sgd' in the checkpoint, 'adam' now" in err and "KeyError" not in err


def test_diverged_run_keeps_best_checkpoint_warns_once_and_writes_strict_json(tmp_path, capsys):
    out = tmp_path / "run"
    Trainer(tiny_cfg(out, "train.epochs=1", "train.lr=0.1")).fit(log=None)
    good = load_checkpoint(out / "checkpoint.pt")
    # continue with absurd rates in a new run that starts from scratch: it collapses to chance
    hist = Trainer(tiny_cfg(out, "train.epochs=5", "train.lr=1e20"), overwrite=True).fit(log=None)
    err = capsys.readouterr().err
    assert err.count("at chance") == 1 and "likely diverged" in err
    assert all(h["train_acc"] <= 0.15 for h in hist[1:])
    best, last = load_checkpoint(out / "checkpoint_best.pt"), load_checkpoint(out / "checkpoint.pt")
    accs = [h["test_acc"] for h in hist]
    assert best["epoch"] == accs.index(max(accs)) and last["epoch"] == 4
    assert good["epoch"] == 0
    assert len(strict_lines(out / "metrics.jsonl")) == 5


def test_slow_start_is_not_called_divergence(tmp_path, capsys):
    hist = Trainer(tiny_cfg(tmp_path / "run", "train.epochs=4", "train.batch_size=100")).fit(log=None)
    assert hist[0]["train_acc"] <= 0.15  # starts at chance, but its loss falls
    assert "at chance" not in capsys.readouterr().err


def test_non_finite_numbers_are_written_as_null():
    line = json_line({"train_loss": math.inf, "x": [math.nan, 1.0], "y": {"z": -math.inf}, "ok": 2})
    assert json.loads(line, parse_constant=lambda t: pytest.fail(t)) == {
        "train_loss": None, "x": [None, 1.0], "y": {"z": None}, "ok": 2}


def test_metrics_jsonl_of_every_run_here_is_strict_json(tmp_path):
    out = tmp_path / "run"
    Trainer(tiny_cfg(out, "train.epochs=1")).fit(log=None)
    for p in tmp_path.rglob("*.jsonl"):
        strict_lines(p)


def test_disk_full_keeps_the_previous_checkpoint_and_leaves_no_temporary(tmp_path, monkeypatch, tiny_toml, capsys):
    out = tmp_path / "run"
    assert main(["train", "--config", str(tiny_toml), "--out", str(out), "--set", "train.epochs=1"]) == 0
    before = (out / "checkpoint.pt").read_bytes()
    capsys.readouterr()

    def full(obj, f, *a, **k):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(train_mod.torch, "save", full)
    assert main(["train", "--config", str(tiny_toml), "--out", str(out), "--resume", "--set", "train.epochs=2"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "No space left on device" in err and "previous version is kept" in err
    assert (out / "checkpoint.pt").read_bytes() == before
    assert [p.name for p in out.iterdir() if ".tmp" in p.name] == []
    with pytest.raises(WriteFailed):
        atomic_write(tmp_path / "x.bin", lambda f: (_ for _ in ()).throw(OSError(errno.ENOSPC, "full")))
    assert not list(tmp_path.glob(".x.bin.tmp-*"))


# ------------------------------------------------------------------------------------------- clear error messages
def test_huge_network_is_refused_before_allocating(tmp_path, capsys):
    cfg = tmp_path / "huge.toml"
    cfg.write_text('[model]\nlayers = [64, 1000000, 1000000, 10]\n')
    assert main(["train", "--config", str(cfg), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "model.layers = [64, 1000000, 1000000, 10]" in err and "GiB" in err and "memory" in err


def test_checkpoint_of_another_architecture_in_ep_vs_bptt(tmp_path, tiny_toml, capsys):
    out = tmp_path / "run"
    assert main(["train", "--config", str(tiny_toml), "--out", str(out), "--set", "train.epochs=1"]) == 0
    capsys.readouterr()
    assert main(["ep-vs-bptt", "--config", str(tiny_toml), "--set", "model.layers=[64,20,10]", "--checkpoint",
                 str(out / "checkpoint.pt"), "--out", str(tmp_path / "e.png")]) == 2
    err = capsys.readouterr().err
    assert "another network" in err and "layer sizes 64-32-10" in err and "32x64 vs 20x64" in err


@pytest.mark.parametrize("args,needle", [
    (["--batch", "0"], "--batch 0"), (["--T", "0"], "--T 0"), (["--K", "-2"], "--K -2"),
    (["--beta", "nan"], "--beta nan"), (["--seed", str(2**63 - 1)], "--seed"),
])
def test_ep_vs_bptt_arguments(tiny_toml, tmp_path, capsys, args, needle):
    assert main(["ep-vs-bptt", "--config", str(tiny_toml), "--out", str(tmp_path / "e.png"), *args]) == 2
    assert needle in capsys.readouterr().err


def test_ep_vs_bptt_uses_the_given_steps(tiny_toml, tmp_path, capsys):
    assert main(["ep-vs-bptt", "--config", str(tiny_toml), "--out", str(tmp_path / "e.png"), "--batch", "4",
                 "--T", "9", "--K", "3"]) == 0
    assert "t = K = 3" in capsys.readouterr().out


@pytest.mark.parametrize("mutate,needle", [
    (lambda ck: ck.pop("model"), "no 'model' entry"),
    (lambda ck: ck.pop("config"), "no 'config' entry"),
    (lambda ck: ck.update(epoch="three"), "'epoch' is a str"),
    (lambda ck: ck.update(model={"w": [1, 2]}), "not named tensors"),
    (lambda ck: ck.update(input_shape=["a"]), "input_shape"),
    (lambda ck: ck["config"]["train"].update(epochs=-1), "invalid config"),
    (lambda ck: ck["model"].pop(next(iter(ck["model"]))), "lacks params.0"),
])
def test_hand_made_checkpoints_in_evaluate(tmp_path, tiny_toml, capsys, mutate, needle):
    out = tmp_path / "run"
    assert main(["train", "--config", str(tiny_toml), "--out", str(out), "--set", "train.epochs=1"]) == 0
    ck = torch.load(out / "checkpoint.pt", weights_only=True)
    mutate(ck)
    bad = tmp_path / "bad.pt"
    torch.save(ck, bad)
    capsys.readouterr()
    assert main(["evaluate", str(bad)]) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err


@pytest.mark.parametrize("content", [b"", b"\x00garbage" * 50, "truncate"])
def test_unreadable_checkpoint_never_suggests_weights_only_false(tmp_path, content):
    p = tmp_path / "c.pt"
    if content == "truncate":
        buf = tmp_path / "full.pt"
        save_checkpoint(buf, {"format": 1, "model": {"w": torch.ones(1000)}})
        p.write_bytes(buf.read_bytes()[:500])
    else:
        p.write_bytes(content)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(p)
    assert "weights_only" not in str(e.value) and "truncated, corrupted" in str(e.value)
    with pytest.raises(CheckpointError, match="is a directory"):
        load_checkpoint(tmp_path)


def test_curves_out_under_a_file(tmp_path, tiny_toml, capsys):
    out = tmp_path / "run"
    assert main(["train", "--config", str(tiny_toml), "--out", str(out), "--set", "train.epochs=1"]) == 0
    (tmp_path / "f").write_text("x")
    capsys.readouterr()
    assert main(["curves", str(out), "--out", str(tmp_path / "f" / "c.png")]) == 2
    err = capsys.readouterr().err
    assert "Not a directory" in err and str(tmp_path / "f") in err


@pytest.mark.parametrize("argv", [["device", "list"], ["train", "--config", "TINY", "--out", "OUT"]])
def test_broken_pipe_exits_quietly(tmp_path, tiny_toml, argv):
    argv = [a.replace("TINY", str(tiny_toml)).replace("OUT", str(tmp_path / "r")) for a in argv]
    argv = [*argv, "--set", "train.epochs=3"] if argv[0] == "train" else argv
    p = subprocess.Popen(cli(*argv), env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.readline()  # `| head -1`
    p.stdout.close()
    err = p.stderr.read().decode()
    assert p.wait(timeout=120) == 0, err
    assert "Traceback" not in err and "BrokenPipe" not in err


# ------------------------------------------------------------------------------------ silent acceptance refused
def test_control_characters_in_paths_names_and_overrides(tmp_path, tiny_toml, capsys):
    assert main(["train", "--config", str(tiny_toml), "--out", str(tmp_path / "a\nb")]) == 2
    assert "control character" in capsys.readouterr().err
    assert not list(tmp_path.glob("a*"))
    with pytest.raises(ConfigError, match="newline"):
        load_config(None, ['train.lr=0.1\n[model]\nlayers = [64, 5, 10]'])
    with pytest.raises(ConfigError, match="name"):
        load_config(None, ['name="a\\nb"'])
    with pytest.raises(ConfigError, match="1 to 200 characters"):
        load_config(None, [f'name="{"x" * 4000}"'])
    cfg = load_config(None, ['name="ünïcödé \\"quoted\\" \\\\ back"'])
    p = tmp_path / "c.toml"
    p.write_text(dump_toml(cfg))
    assert load_config(p) == cfg


def test_seed_range(capsys):
    with pytest.raises(ConfigError, match=r"train.seed = 9223372036854775807 is invalid: must be an integer in \[0, "):
        load_config(None, [f"train.seed={2**63 - 1}"])
    with pytest.raises(ConfigError, match="hardware.seed"):
        load_config(None, ["hardware.seed=-1"])


def test_config_path_messages(tmp_path, capsys):
    assert main(["train", "--config", str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().err
    b = tmp_path / "bin.toml"
    b.write_bytes(b"\xff\xfe\x00\x01binary")
    assert main(["train", "--config", str(b)]) == 2
    err = capsys.readouterr().err
    assert str(b) in err and "not UTF-8" in err


# ------------------------------------------------------------------------------------------------- validate early
def test_compare_rejects_bad_device_and_unsupported_networks_before_training(tmp_path, capsys):
    cfg = Path(__file__).resolve().parents[1] / "configs" / "compare_digits.toml"
    for args, needle in ((["--device", "taox_hfoxx"], "taox_hfoxx"),
                         (["--set", "model.conv_channels=[4]", "--set", "model.conv_kernels=[3]", "--set",
                           "model.layers=[10]", "--set", "model.unidirectional=true", "--set", "ep.rule=vf"],
                          "\"vf\" on conv"),
                         (["--set", "train.algorithm=bptt"], "BPTT")):
        out = tmp_path / args[-1].replace("/", "_")
        t0 = time.perf_counter()
        assert main(["compare", "--config", str(cfg), "--out", str(out), *args]) == 2
        assert needle in capsys.readouterr().err
        assert not (out / "ideal" / "metrics.jsonl").exists()  # the reference never trained
        assert time.perf_counter() - t0 < 60


def test_train_interrupted_by_ctrl_c_says_how_to_continue(tmp_path, tiny_toml):
    out = tmp_path / "run"
    p = subprocess.Popen(cli("train", "--config", str(tiny_toml), "--out", str(out), "--set", "train.epochs=100000"),
                         env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not (out / "checkpoint.pt").exists():
        time.sleep(0.05)
    p.send_signal(signal.SIGINT)
    err = p.stderr.read()
    assert p.wait(timeout=60) == 130, err  # stderr says where the interrupt landed when it is not the handler
    assert "--resume" in err and "Traceback" not in err
    r = subprocess.run(cli("train", "--config", str(tiny_toml), "--out", str(out), "--resume", "--set",
                           f"train.epochs={load_checkpoint(out / 'checkpoint.pt')['epoch'] + 2}"), env=ENV,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    strict_lines(out / "metrics.jsonl")
