"""The EP-vs-BPTT comparison command (Fig. 1d / Fig. 7)."""

import json

import torch

from neuromorph.cli import main
from neuromorph.compare import ep_vs_bptt, plot_ep_vs_bptt
from neuromorph.network import LayeredNetwork


def test_ep_vs_bptt_per_step_agreement_and_plot(tmp_path):
    net = LayeredNetwork([20, 16, 12, 4], loss="xent", activation="sigmoid4", dtype=torch.float64, seed=1)
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(8, 20, generator=g, dtype=torch.float64), torch.randint(0, 4, (8,), generator=g)
    small = ep_vs_bptt(net, x, y, T=200, K=10, beta=1e-4)
    assert small["free_residual"] < 1e-12
    for i in range(len(small["names"])):
        assert max(small["rmse"]["symmetric"][i]) < 1e-4
        assert min(small["sign_agreement"]["symmetric"][i]) > 0.99
    big = ep_vs_bptt(net, x, y, T=200, K=10, beta=0.5)
    for i in range(len(big["names"])):
        assert big["rmse"]["symmetric"][i][-1] < big["rmse"]["one_sided"][i][-1]
    path = plot_ep_vs_bptt(big, tmp_path / "f.png")
    assert path.stat().st_size > 5000
    assert json.loads(path.with_suffix(".json").read_text())["K"] == 10


def test_ep_vs_bptt_cli(tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[model]\nlayers = [64, 32, 10]\nloss = "xent"\n[train]\ndtype = "float64"\nprogress = false\n'
                   f'[output]\ndir = "{tmp_path}"\n')
    assert main(["ep-vs-bptt", "--config", str(cfg), "--T", "80", "--K", "8", "--batch", "16",
                 "--out", str(tmp_path / "e.png")]) == 0
    out = capsys.readouterr().out
    assert "RMSE symmetric" in out and "w_out" in out
    assert (tmp_path / "e.png").exists()
