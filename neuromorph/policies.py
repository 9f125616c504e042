"""Update policies of the crossbar substrate that keep state in the digital periphery.

A crossbar array holds one number per weight, its conductance pair. An optimizer with per-weight state — SGD with
momentum (a velocity) or Adam (two moment estimates) — needs memory beside the array: the *digital periphery* of
the chip (SRAM next to the tile and a small arithmetic unit). :class:`PeripheryOptimizer` simulates it: per array,
its state lives in digital tensors of the array's shape; each batch the EP rule's request ``∇̂ = Σ_r post_r pre_rᵀ/B``
is formed (the rows' product, as a digital unit would accumulate it), the optimizer turns it into a weight change
``ΔW`` exactly as ``torch.optim`` does for the reference (same learning rates per layer, momentum, betas, ε and
weight decay, which it applies to the programmed weights), and ``ΔW`` is programmed as pulses with the configured
update mode (:meth:`neuromorph.hardware.HardwareNetwork.apply_update`). Its cost: ``state_words`` numbers per weight
held and one optimizer update per weight and batch (:meth:`PeripheryOptimizer.stats`).

With a perfect device this reproduces the reference's momentum or Adam run to the pulse quantum (tested); on a real
device the programmed change differs from ``ΔW`` by the device's nonlinearity, asymmetry and noise, and the
optimizer's next step sees the weights the device actually holds.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

__all__ = ["PeripheryOptimizer", "OPTIMIZER_STATE_WORDS", "periphery_optimizer_kind"]

OPTIMIZER_STATE_WORDS = {"momentum": 1, "adam": 2}
"""Numbers of digital state per weight: SGD with momentum keeps a velocity, Adam its first and second moments."""


def periphery_optimizer_kind(cfg) -> str | None:
    """The periphery optimizer a run config's ``[train]`` names: ``"adam"``, ``"momentum"`` (SGD with momentum > 0)
    or ``None`` (plain SGD: the EP request is programmed as it is)."""
    tc = cfg.train
    if tc.optimizer == "adam":
        return "adam"
    return "momentum" if tc.momentum > 0 else None


class PeripheryOptimizer:
    """SGD with momentum or Adam per array, its state in the digital periphery (module docstring).

    Args:
        shapes: ``{array name: (rows, columns)}`` of the arrays it updates (the bias line a column).
        kind: ``"momentum"`` (SGD with ``momentum``) or ``"adam"``.
        lrs: ``{array name: learning rate}``.
        momentum, weight_decay: as ``torch.optim.SGD``/``Adam``; Adam uses torch's default betas and ε, as the
            reference does.
        dtype, device: of the state tensors (the network's).
    """

    def __init__(self, shapes: Mapping[str, tuple[int, int]], kind: str, lrs: Mapping[str, float], *,
                 momentum: float = 0.0, weight_decay: float = 0.0, dtype=torch.float32, device="cpu") -> None:
        if kind not in OPTIMIZER_STATE_WORDS:
            raise ValueError(f"unknown periphery optimizer {kind!r}; allowed: {', '.join(OPTIMIZER_STATE_WORDS)}")
        if kind == "momentum" and not momentum > 0:
            raise ValueError(f"momentum = {momentum!r}: a periphery momentum optimizer needs momentum > 0")
        self.kind = kind
        self.params = {name: torch.zeros(shape, dtype=dtype, device=device) for name, shape in shapes.items()}
        groups = [{"params": [p], "lr": float(lrs[name])} for name, p in self.params.items()]
        if kind == "adam":
            self.opt = torch.optim.Adam(groups, lr=groups[0]["lr"], weight_decay=weight_decay)
        else:
            self.opt = torch.optim.SGD(groups, lr=groups[0]["lr"], momentum=momentum, weight_decay=weight_decay)
        self.n_updates = 0

    def set_lrs(self, lrs: Mapping[str, float]) -> None:
        """The learning rate of every array for the next steps (the trainer's schedule)."""
        for name, group in zip(self.params, self.opt.param_groups):
            group["lr"] = float(lrs[name])

    @torch.no_grad()
    def step(self, estimates: Mapping[str, torch.Tensor],
             weights: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """One optimizer step: the EP estimates ``∇̂`` (ascent directions) and the programmed weights of every
        array in, the requested weight changes ``ΔW`` out."""
        for name, p in self.params.items():
            p.copy_(weights[name])
            p.grad = -estimates[name]
        before = {name: p.clone() for name, p in self.params.items()}
        self.opt.step()
        self.n_updates += 1
        return {name: p.sub_(before[name]) for name, p in self.params.items()}

    def stats(self) -> dict:
        """``state_words``: digital numbers held (per weight: :data:`OPTIMIZER_STATE_WORDS`); ``weight_updates``:
        per-weight optimizer updates computed so far."""
        n = sum(p.numel() for p in self.params.values())
        return {"state_words": n * OPTIMIZER_STATE_WORDS[self.kind], "weight_updates": n * self.n_updates}

    def state_dict(self) -> dict:
        return {"kind": self.kind, "optimizer": self.opt.state_dict(), "n_updates": self.n_updates}

    def load_state_dict(self, state: dict) -> None:
        if state.get("kind") != self.kind:
            raise ValueError(f"periphery optimizer state of kind {state.get('kind')!r}, this run uses {self.kind!r}")
        self.opt.load_state_dict(state["optimizer"])
        self.n_updates = int(state["n_updates"])
