"""The Table 1 recipes (configs/table1): Table 2's hyper-parameters, App. F.1's ConvNet, one cheap EP/BPTT step."""

from pathlib import Path

import pytest
import torch

from neuromorph.bptt import bptt_gradients
from neuromorph.config import load_config
from neuromorph.estimators import ep_gradients, make_estimator
from neuromorph.train import build_network, make_optimizer

TABLE1 = Path(__file__).resolve().parents[1] / "configs" / "table1"

# Table 2 of the paper, written once: (squared error, cross-entropy)
TABLE2 = {"T": (250, 250), "K": (30, 25), "beta": (0.5, 1.0), "batch_size": (128, 128),
          "lr": ((0.25, 0.15, 0.1, 0.08, 0.05),) * 2, "lr_final": (1e-5, 1e-5), "weight_decay": (3e-4, 3e-4),
          "momentum": (0.9, 0.9), "epochs": (120, 120), "decay_epochs": (100, 100)}

# file -> (loss, algorithm, estimator, rule, unidirectional, dropout)
ROWS = {
    "mse_one_sided": ("mse", "ep", "one_sided", "ep", False, ()),
    "mse_random_sign": ("mse", "ep", "random_sign", "ep", False, ()),
    "mse_symmetric": ("mse", "ep", "symmetric", "ep", False, ()),
    "mse_bptt": ("mse", "bptt", None, "ep", False, ()),
    "xent_symmetric": ("xent", "ep", "symmetric", "ep", False, ()),
    "xent_symmetric_dropout": ("xent", "ep", "symmetric", "ep", False, (0.0, 0.0, 0.0, 0.1)),
    "xent_vf": ("xent", "ep", "symmetric", "vf", True, ()),
    "xent_kp_vf": ("xent", "ep", "symmetric", "kp_vf", True, ()),
    "xent_bptt": ("xent", "bptt", None, "ep", False, ()),
}
CONV_STATES = [(128, 16, 16), (256, 8, 8), (512, 4, 4), (512, 1, 1)]


def test_one_recipe_per_row():
    assert sorted(p.stem for p in TABLE1.glob("*.toml")) == sorted(ROWS)
    readme = (TABLE1 / "README.md").read_text()
    for stem in ROWS:
        assert f"`{stem}.toml`" in readme
        text = (TABLE1 / f"{stem}.toml").read_text()
        assert f"neuromorph train --config configs/table1/{stem}.toml" in text
        assert "train.device=cuda" in text and "error" in text


@pytest.mark.parametrize("stem", sorted(ROWS))
def test_recipe_matches_table2_and_app_f1(stem):
    loss, algorithm, estimator, rule, unidirectional, dropout = ROWS[stem]
    cfg = load_config(TABLE1 / f"{stem}.toml")
    col = 0 if loss == "mse" else 1
    m, ep, tr, data = cfg.model, cfg.ep, cfg.train, cfg.data
    assert (m.loss, tr.algorithm, ep.rule, m.unidirectional, m.dropout) == (loss, algorithm, rule, unidirectional,
                                                                             dropout)
    if estimator is not None:
        assert ep.estimator == estimator
    # Table 2, checked against the literal values and against the table above
    assert (ep.T, ep.K, ep.beta) == ((250, 30, 0.5) if loss == "mse" else (250, 25, 1.0))
    assert (ep.T, ep.K, ep.beta) == (TABLE2["T"][col], TABLE2["K"][col], TABLE2["beta"][col])
    assert tr.lr == (0.25, 0.15, 0.1, 0.08, 0.05) == TABLE2["lr"][col]
    assert (tr.batch_size, tr.epochs, tr.decay_epochs) == (128, 120, 100)
    assert (tr.batch_size, tr.epochs, tr.decay_epochs) == tuple(TABLE2[k][col] for k in ("batch_size", "epochs",
                                                                                          "decay_epochs"))
    assert (tr.lr_final, tr.weight_decay, tr.momentum) == (1e-5, 3e-4, 0.9)
    assert (tr.lr_final, tr.weight_decay, tr.momentum) == tuple(TABLE2[k][col] for k in ("lr_final", "weight_decay",
                                                                                         "momentum"))
    assert (tr.optimizer, tr.after_decay) == ("sgd", "hold")
    # App. F.1
    assert m.conv_layers() == [(128, 3, 1), (256, 3, 1), (512, 3, 1), (512, 3, 0)]
    assert m.layers == (10,) and m.activation == "half_hard_sigmoid"
    assert (data.name, data.normalize, data.augment, data.crop_padding) == ("cifar10", True, True, 4)
    assert (data.n_train, data.n_test) == (0, 0)

    net = build_network(cfg, 3072, 10, (3, 32, 32))
    expected = CONV_STATES + ([(10,)] if loss == "mse" else [])
    assert [tuple(s) for s in net.state_shapes] == expected
    assert (net.readout is not None) == (loss == "xent")
    opt = make_optimizer(net, cfg)
    assert [g["lr"] for g in opt.param_groups] == list(TABLE2["lr"][col])
    # a unidirectional synapse group is [w^f, b, w^b] (no w^b on the first synapse, from the static input)
    assert [len(g) for g in net.groups[:4]] == ([2, 3, 3, 3] if unidirectional else [2, 2, 2, 2])
    assert net.unidirectional == unidirectional
    if unidirectional:
        assert all(net.groups[k][2].shape == net.groups[k][0].shape for k in range(1, 4))
        assert len(net.alignment_angles()) == 3


@pytest.mark.parametrize("stem", sorted(ROWS))
def test_recipe_smoke_step_full_size(stem):
    cfg = load_config(TABLE1 / f"{stem}.toml", ["ep.T=3", "ep.K=2"])
    net = build_network(cfg, 3072, 10, (3, 32, 32))
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 32, 32, generator=gen)
    y = torch.tensor([3, 7])
    if cfg.train.algorithm == "bptt":
        grads = bptt_gradients(net, x, y, 3, masks=net.sample_dropout_masks(2, gen))[0]
    else:
        grads = ep_gradients(net, x, y, make_estimator(cfg.ep.estimator, cfg.ep.beta), 3, 2, generator=gen,
                             masks=net.sample_dropout_masks(2, gen), rule=cfg.ep.rule).grads
    params = net.param_list()
    assert len(grads) == len(params)
    for g, p in zip(grads, params):
        assert g.shape == p.shape
        assert torch.isfinite(g).all()
    assert any(float(g.abs().sum()) > 0 for g in grads)
