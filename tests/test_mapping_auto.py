"""``hardware.w_max = "auto"`` (the default): each array's weight range from its layer's initial weights."""

from __future__ import annotations

import json

import pytest

from neuromorph.config import load_config
from neuromorph.hil import W_MAX_AUTO, HardwareTrainer, hardware_from_config
from neuromorph.train import Trainer


def test_auto_weight_range_per_array(tmp_path):
    """Each array's ``w_max = (g_max − g_min)/g0`` is 4x its layer's largest initial weight: the layers get their
    own ranges, every initial weight is representable, and ``mapping.json`` reports them; a number gives every
    array the same."""
    cfg = load_config("configs/compare_digits.toml", ["data.n_train=100", "data.n_test=50", "train.epochs=1",
                                                      "train.progress=false", 'hardware.device="reram_es"'])
    assert cfg.hardware.w_max == "auto"
    init = Trainer(cfg).net  # the reference's initial weights: the ones the hardware maps
    per, ro, _ = init._split(None)
    tr = HardwareTrainer(cfg, out=tmp_path / "hw")
    hw, net = tr.hw, tr.net
    expected = {"w1": W_MAX_AUTO * max(float(p.detach().abs().max()) for p in per[0]),
                "w_out": W_MAX_AUTO * float(ro.detach().abs().max())}
    w_max = {k: hw.card.g_range / g for k, g in hw.g0s.items()}
    assert w_max == pytest.approx(expected, rel=1e-9)
    assert expected["w1"] == pytest.approx(4 / 64 ** 0.5, rel=0.02)  # 4x the init bound 1/sqrt(fan_in)
    assert all(v == 1.0 for v in hw.representable.values())
    tr.fit(log=None)
    mapping = json.loads((tmp_path / "hw" / "mapping.json").read_text())
    assert mapping["w_max_per_array"] == pytest.approx(expected, rel=1e-9)
    fixed = hardware_from_config(load_config("configs/compare_digits.toml", ['hardware.device="reram_es"',
                                                                             "hardware.w_max=0.5"]), net)
    assert all(g == pytest.approx(fixed.card.g_range / 0.5) for g in fixed.g0s.values())


def test_auto_factor_scales_every_array():
    """``hardware.w_max_auto_factor`` is the multiple: 8 gives each array twice the range of the default 4; a
    factor that is not a finite number > 0 is refused with its value."""
    base = ["data.n_train=100", "data.n_test=50", 'hardware.device="reram_es"']
    cfg4 = load_config("configs/compare_digits.toml", base)
    cfg8 = load_config("configs/compare_digits.toml", [*base, "hardware.w_max_auto_factor=8"])
    four = hardware_from_config(cfg4, Trainer(cfg4).net)  # same seed: the same initial weights
    eight = hardware_from_config(cfg8, Trainer(cfg8).net)
    assert set(four.g0s) == set(eight.g0s) == {"w1", "w_out"}
    assert all(eight.g0s[k] == pytest.approx(four.g0s[k] / 2, rel=1e-12) for k in four.g0s)
    for bad in ("0", "-1", "nan"):
        with pytest.raises(ValueError, match=f"hardware.w_max_auto_factor.*{bad}"):
            load_config("configs/compare_digits.toml", [f"hardware.w_max_auto_factor={bad}"])
