"""Training loop, schedule, checkpoints, resume after a kill, errors, CLI."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from neuromorph.cli import main
from neuromorph.config import ConfigError, load_config
from neuromorph.train import (
    CheckpointError,
    Trainer,
    TrainingDiverged,
    learning_rate,
    load_checkpoint,
    save_checkpoint,
)

TINY = ["model.layers=[64,32,10]", "train.epochs=3", "train.progress=false", "ep.T=15", "ep.K=5",
        "train.batch_size=64", "data.n_train=600", "data.n_test=200"]


def tiny_cfg(tmp_path, *extra):
    return load_config(None, TINY + [f"output.dir={json.dumps(str(tmp_path))}", *extra])


@pytest.mark.parametrize("after", ["continue", "hold"])
def test_cosine_schedule_matches_torch_scheduler(after):
    """Table 2: 100 epochs of decay inside 120; "continue" is torch's CosineAnnealingLR stepped past T_max."""
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.25)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=100, eta_min=1e-5)
    for epoch in range(120):
        ours = learning_rate(epoch, 0.25, 1e-5, 100, after)
        ref = opt.param_groups[0]["lr"] if (after == "continue" or epoch < 100) else 1e-5
        assert ours == pytest.approx(ref, rel=1e-9, abs=1e-12), epoch
        opt.step()
        sched.step()
    assert learning_rate(7, 0.3, 0.0, 0) == 0.3


@pytest.mark.parametrize("alg,loss,extra", [
    ("ep", "mse", ()), ("ep", "xent", ()), ("bptt", "xent", ()), ("ep", "xent", ("train.precision=bfloat16",)),
    ("ep", "xent", ("model.unidirectional=true", "ep.rule=kp_vf", "train.weight_decay=1e-3")),
])
def test_training_learns_digits(tmp_path, alg, loss, extra):
    cfg = tiny_cfg(tmp_path, f"train.algorithm={alg}", f"model.loss={loss}", "data.n_train=0", "data.n_test=0",
                   "train.epochs=4", "train.batch_size=32", "ep.beta=0.5", "train.lr=0.05", *extra)
    hist = Trainer(cfg).fit(log=None)
    assert hist[-1]["test_acc"] > 0.85, hist[-1]
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(s)["epoch"] for s in lines] == [1, 2, 3, 4]
    assert (tmp_path / "config.toml").exists()


def test_checkpoint_roundtrip_weights_only_and_bad_files(tmp_path):
    cfg = tiny_cfg(tmp_path, "train.epochs=1")
    tr = Trainer(cfg)
    tr.fit(log=None)
    ck = load_checkpoint(tmp_path / "checkpoint.pt")
    assert ck["epoch"] == 0 and ck["config"]["model"]["layers"] == [64, 32, 10]
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="bad.pt"):
        load_checkpoint(bad)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")
    # an object that is not plain data is refused by weights_only=True
    evil = tmp_path / "evil.pt"
    torch.save({"format": 1, "x": Path("/")}, evil)
    with pytest.raises(CheckpointError):
        load_checkpoint(evil)
    save_checkpoint(tmp_path / "a.pt", {"format": 1, "w": torch.ones(2)})
    assert not list(tmp_path.glob(".a.pt.tmp*"))


def test_resume_continues_exactly(tmp_path):
    ref_dir, cut_dir = tmp_path / "ref", tmp_path / "cut"
    ref = Trainer(tiny_cfg(ref_dir, "ep.estimator=random_sign")).fit(log=None)
    Trainer(tiny_cfg(cut_dir, "ep.estimator=random_sign", "train.epochs=1")).fit(log=None)
    tr = Trainer(tiny_cfg(cut_dir, "ep.estimator=random_sign"), resume=True)
    assert tr.start_epoch == 1
    hist = tr.fit(log=None)
    assert [h["test_acc"] for h in hist] == [h["test_acc"] for h in ref]
    a = load_checkpoint(ref_dir / "checkpoint.pt")["model"]
    b = load_checkpoint(cut_dir / "checkpoint.pt")["model"]
    for k in a:
        assert torch.equal(a[k], b[k]), k
    with pytest.raises(CheckpointError, match=r"model.layers: \[64, 32, 10\] in the checkpoint"):
        Trainer(tiny_cfg(cut_dir, "ep.estimator=random_sign", "model.layers=[64,16,10]"), resume=True)


def test_kill_during_training_loses_at_most_one_epoch(tmp_path):
    """SIGKILL a real `neuromorph train` process mid-run; --resume finishes it."""
    cfg_file = tmp_path / "run.toml"
    cfg_file.write_text('[model]\nlayers = [64, 64, 10]\n[ep]\nT = 20\nK = 6\n'
                        '[train]\nepochs = 40\nprogress = false\nbatch_size = 16\n[data]\nname = "digits"\n')
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "neuromorph.cli", "train", "--config", str(cfg_file), "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and not (out / "checkpoint.pt").exists():
        time.sleep(0.05)
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    ck = load_checkpoint(out / "checkpoint.pt")  # never torn
    done = ck["epoch"] + 1
    assert 1 <= done < 40
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert len(lines) >= done
    r = subprocess.run(cmd + ["--resume", "--set", "train.epochs=" + str(done + 2)], env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "resuming" in r.stdout
    hist = [json.loads(s) for s in (out / "metrics.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in hist] == list(range(1, done + 3))


def test_divergence_is_reported(tmp_path):
    cfg = tiny_cfg(tmp_path, "model.loss=xent", "train.lr=1e38", "model.activation=sigmoid")
    with pytest.raises(TrainingDiverged, match=r"epoch 1, batch \d+"):
        Trainer(cfg).fit(log=None)


def test_layerwise_lr_count_checked(tmp_path):
    with pytest.raises(ValueError, match="train.lr has 3 values but the network has 2"):
        Trainer(tiny_cfg(tmp_path, "train.lr=[0.1,0.1,0.1]"))
    with pytest.raises(ValueError, match="input features"):
        Trainer(tiny_cfg(tmp_path, "model.layers=[60,32,10]"))


@pytest.mark.parametrize("override,needle", [
    ("train.lr=-1", "train.lr"), ("model.loss=hinge", "model.loss"), ("train.epochs=1.5", "train.epochs"),
    ("ep.beta=0", "ep.beta"), ("train.nope=1", "nope"), ("ep.estimator=two_sided", "ep.estimator"),
    ("model.layers=[64]", "model.layers"), ("data.name=imagenet", "data.name"), ("train", "section.key=value"),
    ("ep.rule=kp_vf", "model.unidirectional = true"), ("model.unidirectional=true", "ep.rule"),
    ("ep.rule=kp", "ep.rule"), ("train.precision=fp16", "train.precision"),
])
def test_bad_config_values(override, needle):
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        load_config(None, [override])


def test_cli_errors_are_clear(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text("[train]\nepochs = 'ten'\n")
    assert main(["train", "--config", str(bad)]) == 2
    assert "train.epochs = 'ten' is invalid" in capsys.readouterr().err
    assert main(["train", "--config", str(tmp_path / "nope.toml")]) == 2
    assert "does not exist" in capsys.readouterr().err
    good = tmp_path / "g.toml"
    good.write_text('[data]\nname = "mnist"\ndir = "/definitely/not/here"\n')
    assert main(["train", "--config", str(good)]) == 2
    assert "/definitely/not/here" in capsys.readouterr().err


def test_cli_train_then_evaluate(tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[model]\nlayers = [64, 32, 10]\n[train]\nepochs = 2\nprogress = false\n')
    assert main(["train", "--config", str(cfg), "--out", str(tmp_path / "r"), "--set", "ep.T=12"]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(tmp_path / "r" / "checkpoint.pt")]) == 0
    out = capsys.readouterr().out
    assert "accuracy 0." in out and "digits/test" in out


def test_demo_smoke(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--set", "train.epochs=1", "--set", "train.progress=false"]) == 0
    out = capsys.readouterr().out
    for label in ("EP symmetric", "EP one-sided", "BPTT"):
        assert label in out
    assert (tmp_path / "learning_curves.png").stat().st_size > 1000


def test_model_values_checked():
    with pytest.raises(ConfigError, match="model.init_scale"):
        load_config(None, ["model.init_scale=-1"])
    with pytest.raises(ConfigError, match="model.dropout"):
        load_config(None, ["model.dropout=[1.5]"])
