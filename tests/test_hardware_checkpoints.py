"""Hardware runs are checkpointed with their device state: resumed exactly, evaluated and exported from it."""

from __future__ import annotations

import json
import re

import pytest
import torch

from neuromorph.cli import main
from neuromorph.config import load_config
from neuromorph.hil import HardwareTrainer
from neuromorph.train import CheckpointError, load_checkpoint

BASE = ["train.progress=false", "data.n_train=240", "data.n_test=90", "train.batch_size=40", "ep.T=15", "ep.K=5",
        "train.decay_epochs=2"]


def _cfg(tmp_path, extra=()):
    return load_config("configs/compare_digits.toml", [*BASE, *extra])


def _state(tr):
    """Every array's conductances and counters, the shadow weights and the generator: the run's end state."""
    hw = tr.hw
    arrays = {name: (a.array.pos.g.clone(), a.array.neg.g.clone(), a.array.pos.pulse_count.clone(), a.stats())
              for name, a in hw.arrays().items()}
    return arrays, [p.detach().clone() for p in tr.net.param_list()], hw.generator.get_state()


@pytest.mark.parametrize("extra", [["hardware.device=\"taox_hfox\""],
                                   ["hardware.device=\"reram_es\"", "train.optimizer=adam", "train.lr=[0.002, 0.001]"],
                                   ["hardware.device=\"pcmo\"", "hardware.update=\"mixed_precision\""],
                                   ["hardware.device=\"reram_sb\"", "hardware.update=\"ttv2\"",
                                    "hardware.tt_transfer_every=2"]],
                         ids=["sgd-taox", "adam-reram", "mixed-precision-pcmo", "ttv2-reram-sb"])
def test_a_killed_hardware_run_resumed_ends_bit_identical(tmp_path, extra):
    """Two epochs in one go, and one epoch then a resume (``train.epochs`` raised, as after a kill): the same
    conductances, pulse counts, counters, shadow weights, generator state and metrics."""
    cfg2 = _cfg(tmp_path, [*extra, "train.epochs=2"])
    full = HardwareTrainer(cfg2, out=tmp_path / "full")
    hist_full = full.fit(log=None)
    cfg1 = _cfg(tmp_path, [*extra, "train.epochs=1"])
    HardwareTrainer(cfg1, out=tmp_path / "split").fit(log=None)
    resumed = HardwareTrainer(cfg2, out=tmp_path / "split", resume=True)
    hist = resumed.fit(log=None)
    (a_full, w_full, g_full), (a_res, w_res, g_res) = _state(full), _state(resumed)
    assert set(a_full) == set(a_res)
    for name in a_full:
        for x, y in zip(a_full[name][:3], a_res[name][:3]):
            assert torch.equal(x, y), name
        assert a_full[name][3] == a_res[name][3], name
    assert all(torch.equal(p, q) for p, q in zip(w_full, w_res))
    assert torch.equal(g_full, g_res)
    keys = ("train_acc", "test_acc", "pulses", "energy_J", "reads")
    assert [{k: h[k] for k in keys} for h in hist] == [{k: h[k] for k in keys} for h in hist_full]
    assert hist_full[-1]["pulses"] > 0


def test_evaluate_and_export_read_the_hardware_checkpoint(tmp_path, capsys):
    """``neuromorph evaluate`` of a hardware run's checkpoint reads its arrays with their noise and reports the
    accuracy the run reported; ``export-spice --checkpoint`` maps the trained conductances, not a re-mapping of
    the weights; an ideal checkpoint is not taken for a hardware one."""
    out = tmp_path / "cmp"
    over = [s for b in BASE for s in ("--set", b)]
    assert main(["compare", "--config", "configs/compare_digits.toml", "--device", "taox_hfox", "--out", str(out),
                 *over, "--set", "train.epochs=2", "--set", "hardware.read_noise=true", "--set", "model.loss=mse"]) == 0
    summary = json.loads((out / "comparison.json").read_text())
    capsys.readouterr()
    ck_path = out / "hardware" / "checkpoint.pt"
    assert main(["evaluate", str(ck_path)]) == 0
    line = capsys.readouterr().out
    assert "TaOx/HfOx (simulated hardware)" in line
    acc = float(re.search(r"accuracy ([\d.]+)", line).group(1))
    assert acc == pytest.approx(summary["hardware_test_acc"], abs=5e-5)
    # the ideal side's checkpoint is evaluated on the reference
    assert main(["evaluate", str(out / "ideal" / "checkpoint.pt")]) == 0
    line = capsys.readouterr().out
    assert "(ideal reference)" in line
    assert float(re.search(r"accuracy ([\d.]+)", line).group(1)) == pytest.approx(summary["ideal_test_acc"],
                                                                                   abs=5e-5)
    # export: the netlist's conductances are the trained ones
    ck = load_checkpoint(ck_path)
    nl = tmp_path / "trained.cir"
    cfg_args = ["--config", "configs/compare_digits.toml", "--device", "taox_hfox", *over, "--set", "model.loss=mse"]
    assert main(["export-spice", *cfg_args, "--checkpoint", str(ck_path), "--out", str(nl)]) == 0
    assert main(["export-spice", *cfg_args, "--out", str(tmp_path / "init.cir")]) == 0
    trained = ck["hardware"]["arrays"]["w1"]["array"]["pos"]["tensors"]["_gp"].to(torch.float64)

    def g_of(path):  # the G+ conductances of array w1 in a netlist: 1/R of its rp1_<i>_<j> resistors
        g = torch.zeros_like(trained)
        for i, j, r in re.findall(r"^rp1_(\d+)_(\d+) \S+ \S+ (\S+)$", path.read_text(), re.M):
            g[int(i), int(j)] = 1.0 / float(r)
        return g

    torch.testing.assert_close(g_of(nl), trained, rtol=1e-6, atol=0)
    assert float((g_of(tmp_path / "init.cir") - trained).abs().max()) > 1e-3 * float(trained.max())
    # a resume of the hardware run with another card is refused, naming the card
    cfg = load_config(str(out / "hardware" / "config.toml"), ["hardware.device=\"pcmo\""])
    with pytest.raises(CheckpointError, match="hardware.device"):
        HardwareTrainer(cfg, out=out / "hardware", resume=True)
