"""Layered convergent RNNs: the primitive Φ, its explicit derivatives, and one relaxation step.

A network is a chain of neuron layers ``s^1 … s^N`` driven by a static input ``x = s^0``
(paper, App. E). Consecutive layers are coupled by *synapses*; a synapse ``w_k`` between
``s^{k-1}`` (pre) and ``s^k`` (post) contributes ``s^k · (w_k s^{k-1} + b_k)`` to the
primitive (Eq. 21, fully connected part)::

    Φ(x, s) = Σ_k  s^k · (w_k · s^{k-1} + b_k)

The dynamics are the explicit gradient of Φ (Eq. 1/4, no autograd)::

    s^k ← σ( w_k s^{k-1} + b_k + w_{k+1}ᵀ s^{k+1}  − β ∂ℓ/∂s^k )

with the nudge only on the last layer. Two output schemes (App. D):

* ``loss="mse"``: the output ``ŷ = s^N`` is part of the state, ``ℓ = ½‖ŷ − y‖²`` (Eq. 10/11/22),
  nudge ``β (y − s^N)``;
* ``loss="xent"``: a softmax read-out ``ŷ = softmax(w_out s^N)`` outside the state,
  ``ℓ = −Σ y log ŷ`` (Eq. 12–14/26), nudge ``β w_outᵀ (y − ŷ)``; ``w_out`` learned by Eq. 29.

The nudge acts *inside* σ, i.e. the nudged fixed point is ``s = σ(∂Φ/∂s − β ∂ℓ/∂s)``,
a stationary point of ``Φ − Σ G(s) − βℓ`` with ``G' = σ⁻¹`` (THEORY.md, fact 1). This is the
form of the paper's official code and the one for which the β → 0 limit of EP is exactly the
gradient of the loss; Eq. 22/26 write the nudge outside σ, which is not a gradient system.

The synapse objects carry the layer-specific algebra (forward product, transposed product,
``∂Φ/∂w``) so that convolution + pooling layers and crossbar substrates plug in behind the same
interface.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from .activations import Activation, get_activation

__all__ = ["Dense", "LayeredNetwork", "LOSSES"]

LOSSES = ("mse", "xent")

State = list[torch.Tensor]


class Dense:
    """Fully connected synapse ``w`` of shape ``(n_post, n_pre)`` with bias ``b`` of shape ``(n_post,)``.

    Φ term: ``s_post · (w s_pre + b)``; forward product ``s_pre wᵀ``, transposed product
    ``s_post w`` (both batched over rows), ``∂Φ/∂w = s_postᵀ s_pre``, ``∂Φ/∂b = s_post``.
    """

    def __init__(self, n_pre: int, n_post: int, bias: bool = True) -> None:
        self.n_pre, self.n_post, self.bias = int(n_pre), int(n_post), bool(bias)

    def init(self, generator: torch.Generator, scale: float, dtype, device) -> list[torch.Tensor]:
        """PyTorch's default ``nn.Linear`` init (uniform Kaiming, paper App. F.1), times ``scale``."""
        bound = scale / math.sqrt(self.n_pre)
        w = (torch.rand(self.n_post, self.n_pre, generator=generator, dtype=torch.float64) * 2 - 1) * bound
        out = [w.to(dtype=dtype, device=device)]
        if self.bias:
            b = (torch.rand(self.n_post, generator=generator, dtype=torch.float64) * 2 - 1) * bound
            out.append(b.to(dtype=dtype, device=device))
        return out

    @staticmethod
    def forward(w: torch.Tensor, pre: torch.Tensor, const: torch.Tensor, alpha: float) -> torch.Tensor:
        """``const + alpha · pre wᵀ`` (new tensor)."""
        return torch.addmm(const, pre, w.t(), alpha=alpha)

    @staticmethod
    def add_transposed(w: torch.Tensor, acc: torch.Tensor, post: torch.Tensor, alpha: float,
                       inplace: bool) -> torch.Tensor:
        """``acc + alpha · post w`` (the current fed back from the layer above)."""
        if inplace:
            return acc.addmm_(post, w, alpha=alpha)
        return torch.addmm(acc, post, w, alpha=alpha)

    def phi(self, p: Sequence[torch.Tensor], pre: torch.Tensor, post: torch.Tensor) -> torch.Tensor:
        """Φ term per sample, shape ``(B,)``."""
        a = pre @ p[0].t()
        if self.bias:
            a = a + p[1]
        return (post * a).sum(-1)

    def phi_grads(self, post_c: torch.Tensor, pre: torch.Tensor | None, x_pre: torch.Tensor | None,
                  n_phases: int, batch: int) -> list[torch.Tensor]:
        """``Σ_j c_j ∂Φ/∂θ(s_j)`` averaged over the batch.

        ``post_c`` stacks the coefficient-weighted post activities of all phases, ``(J·B, n_post)``.
        Either ``pre`` stacks the matching pre activities ``(J·B, n_pre)``, or ``x_pre`` is an
        input shared by every phase ``(B, n_pre)``, in which case the posts are summed first
        (one product of ``B`` rows instead of ``J·B``).
        """
        if x_pre is not None:
            post_sum = post_c.view(n_phases, batch, -1).sum(0) if n_phases > 1 else post_c
            gw = post_sum.t() @ x_pre
            gb = post_sum.sum(0)
        else:
            gw = post_c.t() @ pre
            gb = post_c.sum(0)
        out = [gw / batch]
        if self.bias:
            out.append(gb / batch)
        return out


class LayeredNetwork(nn.Module):
    """A layered convergent RNN (fully connected), the ideal-precision reference.

    Args:
        sizes: ``[n_in, n_1, …, n_out]``. With ``loss="mse"`` the state is ``n_1 … n_out``
            (the output layer is part of it); with ``loss="xent"`` the state is ``n_1 … n_{L-1}``
            and a read-out ``w_out`` of shape ``(n_out, n_{L-1})`` gives the logits.
        loss: ``"mse"`` or ``"xent"``.
        activation: a name from :data:`neuromorph.activations.ACTIVATIONS` or an :class:`Activation`.
        bias: biases on every synapse (the read-out has none, Eq. 12).
        init_scale: multiplies PyTorch's default init bounds.
        seed / generator: initialisation randomness.
    """

    def __init__(self, sizes: Sequence[int], loss: str = "mse", activation: str | Activation = "half_hard_sigmoid",
                 bias: bool = True, init_scale: float = 1.0, seed: int = 0,
                 generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32,
                 device: str | torch.device = "cpu") -> None:
        super().__init__()
        sizes = [int(n) for n in sizes]
        if loss not in LOSSES:
            raise ValueError(f"unknown loss {loss!r}; allowed: {', '.join(LOSSES)}")
        min_len = 2 if loss == "mse" else 3
        if len(sizes) < min_len or any(n < 1 for n in sizes):
            raise ValueError(f"sizes must be at least {min_len} positive layer sizes for loss={loss!r}, got {sizes}")
        self.sizes, self.loss_kind = sizes, loss
        self.act = get_activation(activation)
        self.state_sizes = sizes[1:] if loss == "mse" else sizes[1:-1]
        chain = [sizes[0], *self.state_sizes]
        self.synapses = [Dense(chain[i], chain[i + 1], bias) for i in range(len(self.state_sizes))]
        gen = generator if generator is not None else torch.Generator().manual_seed(seed)
        params: list[nn.Parameter] = []
        self.groups: list[list[nn.Parameter]] = []
        for syn in self.synapses:
            g = [nn.Parameter(t) for t in syn.init(gen, init_scale, dtype, device)]
            self.groups.append(g)
            params += g
        self.readout: nn.Parameter | None = None
        if loss == "xent":
            ro = Dense(sizes[-2], sizes[-1], bias=False).init(gen, init_scale, dtype, device)[0]
            self.readout = nn.Parameter(ro)
            self.groups.append([self.readout])
            params.append(self.readout)
        self.params = nn.ParameterList(params)
        self._plist = params  # plain list: ParameterList indexing is slow in the hot loop
        self._cached_split = self._split(params)

    # ------------------------------------------------------------------ helpers
    @property
    def n_classes(self) -> int:
        return self.sizes[-1]

    @property
    def dtype(self) -> torch.dtype:
        return self.params[0].dtype

    @property
    def device(self) -> torch.device:
        return self.params[0].device

    def param_list(self) -> list[torch.Tensor]:
        """Parameters in the fixed order ``[w_1, b_1, w_2, b_2, …, (w_out)]``."""
        return list(self._plist)

    def _split(self, params: Sequence[torch.Tensor] | None):
        """Per-synapse parameter lists and the read-out, from a flat list in :meth:`param_list` order."""
        if params is None:
            return self._cached_split
        p = list(params)
        per, i = [], 0
        for syn in self.synapses:
            n = 2 if syn.bias else 1
            per.append(p[i:i + n])
            i += n
        return per, (p[i] if self.readout is not None else None)

    def zero_state(self, batch: int) -> State:
        """``s_0 = 0`` (Algorithm 1/2)."""
        return [torch.zeros(batch, n, dtype=self.dtype, device=self.device) for n in self.state_sizes]

    def flatten_input(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(x.shape[0], -1)
        if x.shape[1] != self.sizes[0]:
            raise ValueError(f"input has {x.shape[1]} features, the network expects {self.sizes[0]}")
        return x.to(dtype=self.dtype, device=self.device)

    def one_hot(self, y: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.one_hot(y.long(), self.n_classes).to(self.dtype)

    # ------------------------------------------------------------------ primitive and losses
    def input_drive(self, x: torch.Tensor, params: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
        """``w_1 x + b_1``, shape ``(B, n_1)``: computed once per batch, shared by every phase."""
        per, _ = self._split(params)
        x = self.flatten_input(x)
        b = per[0][1] if self.synapses[0].bias else torch.zeros((), dtype=x.dtype, device=x.device)
        return torch.addmm(b, x, per[0][0].t()) if b.dim() else x @ per[0][0].t()

    def phi(self, x: torch.Tensor, state: State, params: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
        """The primitive Φ(x, s) per sample, shape ``(B,)`` (Eq. 21 / 27). Used as a test oracle."""
        per, _ = self._split(params)
        chain = [self.flatten_input(x), *state]
        return sum(syn.phi(per[i], chain[i], chain[i + 1]) for i, syn in enumerate(self.synapses))

    def logits(self, state: State, params: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
        """Network output: ``s^N`` (mse) or ``w_out s^N`` (xent)."""
        _, ro = self._split(params)
        return state[-1] if ro is None else state[-1] @ ro.t()

    def predict(self, state: State) -> torch.Tensor:
        return self.logits(state).argmax(-1)

    def loss(self, state: State, y: torch.Tensor, params: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
        """ℓ(s, y) per sample, ``(B,)``: ½‖s^N − y‖² (Eq. 10) or the cross-entropy of Eq. 13."""
        yo = self.one_hot(y) if y.dim() == 1 else y
        out = self.logits(state, params)
        if self.readout is None:
            return 0.5 * ((out - yo) ** 2).sum(-1)
        return -(yo * torch.log_softmax(out, -1)).sum(-1)

    # ------------------------------------------------------------------ dynamics
    def constants(self, drive: torch.Tensor, y: torch.Tensor | None, beta: torch.Tensor | float,
                  params: Sequence[torch.Tensor] | None = None) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        """State-independent parts of the pre-activations, already through ``γ·(·) + o``.

        Returns ``(consts, neg_gamma_beta)`` where ``consts[k]`` is ``γ(b_k + [k=1] w_1 x +
        [k=N] β ∂ℓ-constant) + o`` and ``neg_gamma_beta`` the per-sample ``−γβ`` column
        ``(B, 1)`` that multiplies the state-dependent part of the nudge (``None`` when β = 0).
        """
        per, ro = self._split(params)
        g, o = self.act.gain, self.act.offset
        consts = []
        for k, syn in enumerate(self.synapses):
            if k == 0:
                c = drive * g + o
            elif syn.bias:
                c = per[k][1] * g + o
            else:
                c = torch.full((self.state_sizes[k],), o, dtype=drive.dtype, device=drive.device)
            consts.append(c)
        if isinstance(beta, (int, float)) and beta == 0:
            return consts, None
        beta_col = beta if isinstance(beta, torch.Tensor) else torch.full(
            (drive.shape[0], 1), float(beta), dtype=drive.dtype, device=drive.device)
        yo = self.one_hot(y) if y.dim() == 1 else y
        # β(y − s) = βy − βs for mse;  β w_outᵀ(y − ŷ) = β y w_out − β ŷ w_out for xent
        target = yo if ro is None else yo @ ro
        consts[-1] = consts[-1] + (g * beta_col) * target
        return consts, -g * beta_col

    def step(self, state: State, consts: list[torch.Tensor], neg_gamma_beta: torch.Tensor | None,
             params: Sequence[torch.Tensor] | None = None, inplace: bool = False, split=None) -> State:
        """One synchronous step of Eq. 4 (all layers from the previous state), explicit.

        ``inplace=True`` is the autograd-free hot-loop form; ``False`` keeps the graph (BPTT).
        ``split`` is ``self._split(params)`` precomputed by the caller's loop.
        """
        per, ro = split if split is not None else self._split(params)
        syns = self.synapses
        g = self.act.gain
        n = len(state)
        new: State = []
        for k in range(n):
            if k == 0:
                z = consts[0].clone() if (n == 1 and inplace) else consts[0]
            else:
                z = syns[k].forward(per[k][0], state[k - 1], consts[k], g)
            if k + 1 < n:
                if k == 0:
                    z = torch.addmm(z, state[1], per[1][0], alpha=g)
                else:
                    z = syns[k + 1].add_transposed(per[k + 1][0], z, state[k + 1], g, inplace)
            if k == n - 1 and neg_gamma_beta is not None:
                if ro is None:
                    nudge_src = state[k]
                    z = z.addcmul_(nudge_src, neg_gamma_beta) if inplace else z + nudge_src * neg_gamma_beta
                else:
                    y_hat = torch.softmax(state[k] @ ro.t(), -1)
                    z = z.addmm_(y_hat * neg_gamma_beta, ro) if inplace else z + (y_hat * neg_gamma_beta) @ ro
            new.append(self.act.unit_(z) if inplace else self.act.unit_fn(z))
        return new
