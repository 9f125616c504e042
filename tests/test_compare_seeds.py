"""``neuromorph compare --seeds N``: mean ± std of both sides and of the gap, against a one-ulp control."""

from __future__ import annotations

import json

import pytest
import torch

from neuromorph.cli import main
from neuromorph.train import load_checkpoint


def test_compare_over_seeds_with_the_one_ulp_control(tmp_path, capsys):
    out = tmp_path / "cmp"
    over = ["train.epochs=2", "data.n_train=200", "data.n_test=100", "train.progress=false", "ep.T=15", "ep.K=5"]
    assert main(["compare", "--config", "configs/compare_digits.toml", "--device", "taox_hfox", "--out", str(out),
                 "--seeds", "2", *[a for o in over for a in ("--set", o)]]) == 0
    s = json.loads((out / "comparison.json").read_text())
    assert s["seeds"] == [0, 1] and len(s["per_seed"]) == 2
    for key in ("ideal_test_acc", "hardware_test_acc", "control_test_acc", "gap", "control_gap"):
        vals = [r[key] for r in s["per_seed"]]
        assert s[key] == pytest.approx(sum(vals) / 2) and s[key + "_std"] == pytest.approx(abs(vals[0] - vals[1])
                                                                                             / 2 ** 0.5)
    assert isinstance(s["gap_within_seed_spread"], bool)
    md = (out / "comparison.md").read_text()
    assert "2 seeds" in md and "one ulp" in md and "seed spread" in md
    # the seeds differ (initial weights, devices), and the control starts one ulp away from its reference
    a, b = (load_checkpoint(out / f"seed{k}" / "ideal" / "checkpoint.pt")["model"] for k in (0, 1))
    assert not torch.equal(a["synapses.0.weight"] if "synapses.0.weight" in a else next(iter(a.values())),
                           b["synapses.0.weight"] if "synapses.0.weight" in b else next(iter(b.values())))
    ref, ctl = (load_checkpoint(out / "seed0" / d / "checkpoint.pt")["model"] for d in ("ideal", "control"))
    assert any(not torch.equal(ref[k], ctl[k]) for k in ref)
    capsys.readouterr()
    assert main(["compare", "--config", "configs/compare_digits.toml", "--out", str(tmp_path / "x"),
                 "--seeds", "0"]) == 2
    assert "--seeds 0: the number of seeds must be an integer >= 1" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_compare_says_na_for_energy_a_card_does_not_give(tmp_path):
    """A card with no write-pulse or read energy (ReRAM ES, an aihwkit step model) reports "n/a", not 0 J."""
    out = tmp_path / "cmp"
    over = ["train.epochs=1", "data.n_train=120", "data.n_test=60", "train.progress=false", "ep.T=10", "ep.K=4"]
    assert main(["compare", "--config", "configs/compare_digits.toml", "--device", "reram_es", "--out", str(out),
                 *[a for o in over for a in ("--set", o)]]) == 0
    s = json.loads((out / "comparison.json").read_text())
    assert s["energy_available"] is False
    assert "| energy (pulses + reads) |  | n/a (ReRAM ES (aihwkit) gives no write-pulse or read energy) |" in \
        (out / "comparison.md").read_text()
