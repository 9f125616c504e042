"""EP against BPTT step by step (Fig. 1d, Fig. 7, App. H).

For one network and one batch: the EP updates at every step ``t = 1…K`` of the nudged phase,
one-sided (Eq. 3) and symmetric (Eq. 5), against the BPTT gradients truncated to the last ``t``
steps of the free phase (Eq. 6), all from one free phase, one batched ±β nudged phase and one
backward pass with per-step gradient capture (:func:`neuromorph.bptt.bptt_truncated`, not K
reruns). Per layer: relative RMSE and the fraction of components whose sign agrees with BPTT.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .bptt import bptt_truncated
from .dynamics import relax
from .estimators import OneSided, Symmetric, ep_gradients, estimate_from_states
from .network import LayeredNetwork
from .runio import json_safe

__all__ = ["ep_vs_bptt", "plot_ep_vs_bptt"]


def _layer_names(net: LayeredNetwork) -> list[str]:
    names = []
    for k, syn in enumerate(net.synapses):
        kind = "conv" if hasattr(syn, "kernel") else "fc"
        names.append(f"w{k + 1} ({kind})")
        if syn.bias:
            names.append(f"b{k + 1}")
    if net.readout is not None:
        names.append("w_out")
    return names


@torch.no_grad()
def ep_vs_bptt(net: LayeredNetwork, x: torch.Tensor, y: torch.Tensor, T: int, K: int, beta: float) -> dict:
    """Per-step EP estimates and truncated BPTT gradients, with per-layer RMSE and sign agreement.

    Returns a dict with ``t`` (1…K), ``names``, and per estimator (``"one_sided"``, ``"symmetric"``)
    and layer the relative RMSE ``‖∇̂_EP(t) − ∇_BPTT(t)‖ / ‖∇_BPTT(t)‖`` and the sign agreement at
    every t, plus ``traces``: a few components of every gradient over t for plotting, and the
    free phase's residual (the comparison is only meaningful once it has converged).
    """
    batch = x.shape[0]
    free = relax(net, net.input_drive(x), net.zero_state(batch), T)
    with torch.enable_grad():
        bptt = bptt_truncated(net, x, y, T, K)
    names = _layer_names(net)
    out = {"t": list(range(1, K + 1)), "names": names, "beta": beta, "T": T, "K": K,
           "free_residual": float(free.residual.max()), "rmse": {}, "sign_agreement": {}, "traces": {}}
    gen = torch.Generator().manual_seed(0)
    picks = [torch.randint(0, p.numel(), (3,), generator=gen) for p in net.param_list()]
    out["traces"]["bptt"] = [[bptt[t][i].flatten()[picks[i]].tolist() for t in range(K)] for i in range(len(names))]
    for label, est in (("one_sided", OneSided(beta)), ("symmetric", Symmetric(beta))):
        res = ep_gradients(net, x, y, est, T, K, free=free, record_nudged=True)
        per_t = [estimate_from_states(net, x, y, free.state, res.nudged.trajectory[t], res.plan, batch)
                 for t in range(1, K + 1)]
        rmse, sign = [], []
        for i in range(len(names)):
            r_i, s_i = [], []
            for t in range(K):
                a, b = per_t[t][i], bptt[t][i]
                r_i.append(float((a - b).norm() / b.norm().clamp_min(1e-30)))
                nz = b != 0
                s_i.append(float((torch.sign(a[nz]) == torch.sign(b[nz])).double().mean()) if nz.any() else 1.0)
            rmse.append(r_i)
            sign.append(s_i)
        out["rmse"][label], out["sign_agreement"][label] = rmse, sign
        out["traces"][label] = [[per_t[t][i].flatten()[picks[i]].tolist() for t in range(K)]
                                for i in range(len(names))]
    return out


def plot_ep_vs_bptt(result: dict, path: str | Path) -> Path:
    """One panel per weight layer: three components of ∇_BPTT(t) (solid) and of the one-sided
    (dashed) and symmetric (dotted) EP updates over the nudged steps t (the paper's Fig. 7)."""
    import matplotlib.pyplot as plt

    path = Path(path)
    layers = [i for i, n in enumerate(result["names"]) if n.startswith("w")]
    cols = min(3, len(layers))
    rows = (len(layers) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), dpi=110, squeeze=False)
    t = result["t"]
    for ax, i in zip(axes.flat, layers):
        for c in range(3):
            color = f"C{c}"
            ax.plot(t, [v[c] for v in result["traces"]["bptt"][i]], color=color, lw=2, alpha=0.5,
                    label="BPTT ∇(t)" if c == 0 else None)
            ax.plot(t, [v[c] for v in result["traces"]["one_sided"][i]], color=color, ls="--",
                    label="EP one-sided" if c == 0 else None)
            ax.plot(t, [v[c] for v in result["traces"]["symmetric"][i]], color=color, ls=":", lw=2,
                    label="EP symmetric" if c == 0 else None)
        r1, r2 = result["rmse"]["one_sided"][i][-1], result["rmse"]["symmetric"][i][-1]
        ax.set_title(f"{result['names'][i]}: rel. RMSE {r1:.2g} / {r2:.2g}", fontsize=9)
        ax.set_xlabel("nudged step t  (BPTT: last t steps)")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(layers):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(f"EP vs BPTT, β = {result['beta']} (loss gradients; one-sided / symmetric RMSE at t = K)",
                 fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    numbers = json_safe({k: v for k, v in result.items() if k != "traces"})
    path.with_suffix(".json").write_text(json.dumps(numbers, indent=1, allow_nan=False))
    return path
