"""EP gradient estimators (Eq. 3, Algorithm 1, Eq. 5) and the learning rules of Eq. 24–29.

Every estimator is a linear combination of ``∂Φ/∂θ`` at a few steady states::

    ∇̂ = c_0 ∂Φ/∂θ(s_*) + Σ_j c_j ∂Φ/∂θ(s_*^{β_j})

* :class:`OneSided`   β_1 = β,        c_0 = −1/β,  c_1 = 1/β                     (Eq. 3)
* :class:`RandomSign` as one-sided with the sign of β drawn per iteration      (Algorithm 1)
* :class:`Symmetric`  β_{1,2} = ±β,   c_0 = 0,     c_{1,2} = ±1/(2β)             (Eq. 5)

For pre/post synapses this is the contrastive Hebbian rule ``Σ_j c_j s^{k}_j s^{k-1 ⊤}_j``
(Eq. 24/25/28/29). The read-out ``w_out`` is not in Φ; it follows the gradient of the loss at
the nudged states (Eq. 28: the +β state; Eq. 29: the mean of the ±β states).

:func:`ep_gradients` returns *loss* gradients (``−∇̂``), so any ``torch.optim`` optimizer
minimises with them.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch

from .dynamics import RelaxResult, relax
from .network import ConvPool, Dense, LayeredNetwork

__all__ = ["Estimator", "OneSided", "RandomSign", "Symmetric", "Plan", "EPResult", "ep_gradients",
           "combine_phi_grads", "vector_field_grads", "make_estimator", "ESTIMATORS", "RULES", "check_rule",
           "PRECISIONS", "stack_phases", "readout_error", "Rows", "update_rows", "ideal_gradients", "symmetric_coef"]


@dataclass(frozen=True)
class Plan:
    """The nudged phases of one iteration and the coefficients of the estimate.

    ``betas[j]`` is the nudging of phase j; ``coefs[j]`` multiplies ``∂Φ/∂θ`` at its steady
    state, ``coef_free`` at the free one; ``readout[j]`` weighs ``∂ℓ/∂w_out`` at phase j.
    """

    betas: tuple[float, ...]
    coefs: tuple[float, ...]
    coef_free: float
    readout: tuple[float, ...]


class Estimator(ABC):
    """An EP gradient estimator with nudging strength ``beta > 0``."""

    def __init__(self, beta: float) -> None:
        if not (beta > 0 and beta == beta and beta != float("inf")):
            raise ValueError(f"beta must be a positive finite number, got {beta!r}")
        self.beta = float(beta)

    @abstractmethod
    def plan(self, generator: torch.Generator | None = None) -> Plan:
        """The phases to run for one iteration (draws the sign for :class:`RandomSign`)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(beta={self.beta})"


class OneSided(Estimator):
    """Eq. 3: ``(∂Φ/∂θ(s^β) − ∂Φ/∂θ(s_*)) / β``; first-order bias in β (Lemma 2)."""

    def plan(self, generator=None) -> Plan:
        b = self.beta
        return Plan((b,), (1 / b,), -1 / b, (1.0,))


class RandomSign(Estimator):
    """Algorithm 1: one-sided with ``β ← ±β`` drawn with even odds once per iteration."""

    def plan(self, generator=None) -> Plan:
        sign = 1.0 if torch.rand((), generator=generator).item() < 0.5 else -1.0
        b = sign * self.beta
        return Plan((b,), (1 / b,), -1 / b, (1.0,))


class Symmetric(Estimator):
    """Eq. 5: ``(∂Φ/∂θ(s^β) − ∂Φ/∂θ(s^{−β})) / 2β``; bias O(β²) (Lemma 2)."""

    def plan(self, generator=None) -> Plan:
        b = self.beta
        return Plan((b, -b), (1 / (2 * b), -1 / (2 * b)), 0.0, (0.5, 0.5))


ESTIMATORS = {"one_sided": OneSided, "random_sign": RandomSign, "symmetric": Symmetric}


def make_estimator(name: str, beta: float) -> Estimator:
    try:
        return ESTIMATORS[name](beta)
    except KeyError:
        raise ValueError(f"unknown estimator {name!r}; allowed: {', '.join(ESTIMATORS)}") from None


def _rows(values: tuple[float, ...], batch: int, like: torch.Tensor) -> torch.Tensor:
    """Per-phase scalars expanded to a ``(J·B, 1)`` column matching phase-stacked rows."""
    return torch.tensor(values, dtype=like.dtype, device=like.device).repeat_interleave(batch).unsqueeze(1)


@dataclass
class Rows:
    """The update request of one weight as rows of pre/post activities: ``∇̂ = Σ_r c_r post_r ⊗ pre_r / B``.

    This is what a learning rule hands a weight store (:func:`update_rows`); the ideal store turns it into a
    parameter gradient (:func:`ideal_gradients`), the crossbar store into the rows its arrays are pulsed with
    (:meth:`neuromorph.hardware.HardwareNetwork.outer_products`).

    Attributes:
        pre: pre activities, one row per phase and sample (``R`` rows), or the ``B`` rows of the static input
            shared by every phase (``shared_pre``).
        post: post activities, ``R`` rows.
        coefs: ``(R, 1)`` per-row coefficients ``c_r``; ``None``: 1 (the posts are weighted already).
        shared_pre: ``pre`` is the static input, the same in each of the ``R / B`` phase blocks.
        symmetric: ``c`` when the rows are the ±β pair of the symmetric estimate (``c_r = ±c``): a substrate may
            combine them as differences of the phases.
        bias: the request includes the bias (``Σ_r c_r post_r``, the bias line's pre is 1).
        switches: for a pooling synapse, the kernels whose argmax switches unpool the posts (``"forward"``,
            ``"back"``); two: the mean of the requests with each (KP-VF, Eq. 37).
        switches_at: the activities at which those switches are taken (default: ``pre``).
        like: the name of another request this one equals (its weight part): KP-VF's shared update of ``w^b``.
    """

    pre: torch.Tensor
    post: torch.Tensor
    coefs: torch.Tensor | None = None
    shared_pre: bool = False
    symmetric: float | None = None
    bias: bool = True
    switches: tuple[str, ...] = ("forward",)
    switches_at: torch.Tensor | None = None
    like: str | None = None

    def weighted_post(self) -> torch.Tensor:
        """``c_r post_r`` per row."""
        if self.coefs is None:
            return self.post
        return self.post * self.coefs.view(-1, *([1] * (self.post.dim() - 1)))


def _phase_sum(t: torch.Tensor, coefs: torch.Tensor, batch: int) -> torch.Tensor:
    """``Σ_j c_j t_j`` over the phase blocks of phase-stacked rows ``t``: ``B`` rows."""
    tc = t * coefs.view(-1, *([1] * (t.dim() - 1)))
    return tc.view(t.shape[0] // batch, batch, *t.shape[1:]).sum(0)


def symmetric_coef(plan: Plan) -> float | None:
    """``c`` when the plan is the symmetric estimate's ±β pair (``c_{1,2} = ±c``, no free term), else ``None``."""
    sym = plan.coef_free == 0.0 and len(plan.coefs) == 2 and plan.coefs[0] == -plan.coefs[1]
    return plan.coefs[0] if sym else None


def _stack_rows(net: LayeredNetwork, x: torch.Tensor, free_state, states: list[torch.Tensor], coefs: torch.Tensor,
                batch: int, rule: str, c_sym: float | None = None) -> dict[str, Rows]:
    """The requests of every synapse weight (not the read-out) from phase-stacked states and coefficients."""
    check_rule(net, rule)
    xf = net.flatten_input(x)
    rows: dict[str, Rows] = {}
    for k, syn in enumerate(net.synapses):
        name, post = f"w{k + 1}", states[k]
        if k == 0:  # the static input: the same pre in every phase (the EP rule, Eq. 34, for every rule)
            rows[name] = Rows(xf, post, coefs, shared_pre=True, symmetric=c_sym, bias=syn.bias)
            continue
        pre, conv = states[k - 1], isinstance(syn, ConvPool)
        if rule == "vf":  # Eq. 34: w^f pairs nudged posts with free pres, w^b free posts with nudged pres
            f_pre = free_state[k - 1]
            rows[name] = Rows(f_pre, _phase_sum(post, coefs, batch), bias=syn.bias)
            rows[f"{name}_back"] = Rows(_phase_sum(pre, coefs, batch), free_state[k], bias=False,
                                        switches=("back",), switches_at=f_pre)
            continue
        kp = rule == "kp_vf"
        rows[name] = Rows(pre, post, coefs, symmetric=c_sym, bias=syn.bias,
                          switches=("forward", "back") if kp and conv else ("forward",))
        if kp:  # Eq. 36: w^b receives the same update as w^f
            rows[f"{name}_back"] = Rows(pre, post, coefs, symmetric=c_sym, bias=False, like=name)
    return rows


def update_rows(net: LayeredNetwork, x: torch.Tensor, y: torch.Tensor, free_state, nudged_state, plan: Plan,
                batch: int, rule: str = "ep", logits=None) -> dict[str, Rows]:
    """The learning rule: every weight's update request (:class:`Rows`), written once for both substrates.

    EP (Eq. 24–29): synapse ``k`` pairs the phases' ``(s^{k−1}_j, c_j s^k_j)`` (the free phase included when its
    coefficient is not zero; the static input is shared by every phase); a pooling synapse unpools each post with
    the switches of ``w ⋆ s^{k−1}_j`` (Eq. 25). VF (Eq. 33/34): ``w^f`` gets ``(s^{k−1}_*, Σ_j c_j s^k_j)``, ``w^b``
    ``(Σ_j c_j s^{k−1}_j, s^k_*)`` unpooled with the switches of ``w^b ⋆ s^{k−1}_*``. KP-VF (Eq. 35–37): both
    weights get the mean of the EP requests unpooled with ``w^f``'s and with ``w^b``'s switches (for dense synapses
    one request). The read-out (Eq. 28/29): ``(s_N^{β_j}, −r_j (ŷ_j − y))`` with ``ŷ_j = softmax(logits(s_N^{β_j}))``
    (``logits``: the store's read-out; default the network's). ``free_state``/``nudged_state``: the activities
    the update sees (masked under dropout; ADC-read on hardware), ``nudged_state`` phase-stacked.
    """
    states, coefs = stack_phases(free_state, nudged_state, plan, batch)
    rows = _stack_rows(net, x, free_state, states, coefs, batch, rule, symmetric_coef(plan))
    if net.readout is not None:
        last = nudged_state[-1].reshape(nudged_state[-1].shape[0], -1)
        out = last @ net.readout.t() if logits is None else logits(nudged_state)
        rows["w_out"] = Rows(last, readout_error(net, out, y, plan, batch).neg_(), bias=False)
    return rows


def _request_grads(net: LayeredNetwork, k: int, r: Rows, batch: int, params=None,
                   scale: float | None = None) -> list[torch.Tensor]:
    """The ideal store's realisation of a synapse request: ``∇̂`` of its weight (and bias when requested), times
    ``scale·B`` (``None``: 1)."""
    syn = net.synapses[k]
    per, _, back = net._split(params)
    kern = {"forward": per[k], "back": [back[k]] if back[k] is not None else None}
    dense = isinstance(syn, Dense)
    kw = {"scale": scale} if dense and scale is not None else {}
    if r.shared_pre and r.symmetric is not None:  # the static input: c(a − b), one block of B rows
        post_c, n_phases = torch.sub(r.post[:batch], r.post[batch:]).mul_(r.symmetric), 1
    else:
        post_c = r.weighted_post()
        n_phases = post_c.shape[0] // batch
    if r.shared_pre:
        out = syn.phi_grads(post_c, None, r.pre, n_phases, batch, per[k], **kw)
    else:
        out = syn.phi_grads(post_c, r.pre, None, n_phases, batch, kern[r.switches[0]], index_pre=r.switches_at,
                            **kw)
    if len(r.switches) > 1:
        other = syn.phi_grads(post_c, r.pre, None, n_phases, batch, kern[r.switches[1]], index_pre=r.switches_at,
                              **kw)
        out = [0.5 * (out[0] + other[0]), *out[1:]]
    if scale is not None and not dense:
        out = [g.mul_(scale * batch) for g in out]
    return out if r.bias else out[:1]


def ideal_gradients(net: LayeredNetwork, rows: dict[str, Rows], batch: int, params=None,
                    scale: float | None = None) -> list[torch.Tensor]:
    """The estimates ``∇̂`` (not negated) of every parameter from the requests, in
    :meth:`LayeredNetwork.param_list` order (per synapse ``w``, ``b``, ``w^b``; then the read-out). ``scale``:
    ``Σ_r c_r post_r ⊗ pre_r`` times it instead of ``1/B`` (``−1/B``: the loss gradients, in one pass)."""
    out: list[torch.Tensor] = []
    for k in range(len(net.synapses)):
        name = f"w{k + 1}"
        fw = _request_grads(net, k, rows[name], batch, params, scale)
        out += fw
        back = rows.get(f"{name}_back")
        if back is not None:
            out.append(fw[0] if back.like == name else _request_grads(net, k, back, batch, params, scale)[0])
    if "w_out" in rows:
        r = rows["w_out"]
        g = r.post.t() @ r.pre
        out.append(g / batch if scale is None else g.mul_(scale))
    return out


def combine_phi_grads(net: LayeredNetwork, x: torch.Tensor, states: list[torch.Tensor],
                      coefs: torch.Tensor, batch: int, params=None) -> list[torch.Tensor]:
    """``(1/B) Σ_rows c_row ∂Φ/∂θ(s_row)`` for every synapse parameter, explicitly (bidirectional networks).

    ``states`` are phase-stacked layer activities ``(J·B, n_k)`` and ``coefs`` the matching
    ``(J·B, 1)`` column. Returns the gradients in :meth:`LayeredNetwork.param_list` order,
    without the read-out: :func:`ideal_gradients` of the EP rule's requests.
    """
    return ideal_gradients(net, _stack_rows(net, x, None, states, coefs, batch, "ep"), batch, params)


RULES = ("ep", "vf", "kp_vf")


def check_rule(net: LayeredNetwork, rule: str) -> None:
    """The learning rule must fit the network: ``ep`` needs a Φ (bidirectional), VF/KP-VF need ``w^b``."""
    if rule not in RULES:
        raise ValueError(f"unknown learning rule {rule!r}; allowed: {', '.join(RULES)}")
    if net.unidirectional and rule == "ep":
        raise ValueError("rule 'ep' needs a primitive Φ, which a unidirectional network does not have; "
                         "use rule 'vf' or 'kp_vf' (App. E.4)")
    if not net.unidirectional and rule != "ep":
        raise ValueError(f"rule {rule!r} trains separate backward weights; build the network with "
                         "unidirectional=True (model.unidirectional = true), or use rule 'ep'")


def vector_field_grads(net: LayeredNetwork, x: torch.Tensor, free_state: list[torch.Tensor],
                       states: list[torch.Tensor], coefs: torch.Tensor, batch: int, rule: str) -> list[torch.Tensor]:
    """The VF (Eq. 31/33/34) or KP-VF (Eq. 35–37) estimate of a unidirectional network, explicitly.

    ``states``/``coefs`` are the phase-stacked steady states and their coefficients (as in
    :func:`combine_phi_grads`, the free phase included when its coefficient is not zero);
    ``free_state`` is the free steady state ``s_*`` (``B`` rows). For synapse ``k ≥ 2`` with
    ``c = Σ_j c_j``-weighted phases:

    * ``vf``: Eq. 33, ``∂u/∂θ(s_*)ᵀ · Σ_j c_j s_j`` with ``u`` the pre-activation (the Jacobian of
      the transition at the free steady state; Eq. 34 written out): ``∇w^f = 𝓟⁻¹(Σ_j c_j s^k_j) ⋆
      s^{k-1}_*`` and ``∇w^b = 𝓟⁻¹(s^k_*) ⋆ Σ_j c_j s^{k-1}_j``, both unpooled with the indices at
      ``s_*`` (of ``w^f ⋆ s^{k-1}_*`` resp. ``w^b ⋆ s^{k-1}_*``). The official code takes the
      backward indices at each nudged state instead; the two agree for dense synapses and differ
      for convolutions only where an argmax moves between phases;
    * ``kp_vf``: ``∇̄_f = Σ_j c_j ∂/∂w^f [s^k_j • 𝓟(w^f ⋆ s^{k-1}_j)]`` and ``∇̄_b`` the same with
      the indices of ``w^b`` (Eq. 37); both weights get their mean (Eq. 36). For dense synapses
      ``∇̄_f = ∇̄_b`` and it is computed once.

    The first synapse (from the static input) and every bias follow the EP rule (Eq. 34). Returns
    the estimates ``∇̂`` (not negated) in :meth:`LayeredNetwork.param_list` order, without the read-out:
    :func:`ideal_gradients` of the rule's requests (:func:`update_rows`).
    """
    return ideal_gradients(net, _stack_rows(net, x, free_state, states, coefs, batch, rule), batch)


@dataclass
class EPResult:
    """Loss-gradient estimate and the relaxations that produced it."""

    grads: list[torch.Tensor]
    free: RelaxResult
    nudged: RelaxResult
    plan: Plan


def ep_gradients(net: LayeredNetwork, x: torch.Tensor, y: torch.Tensor, estimator: Estimator,
                 T: int, K: int, *, generator: torch.Generator | None = None,
                 free: RelaxResult | None = None, drive: torch.Tensor | None = None,
                 record_nudged: bool = False, masks: list | None = None, rule: str = "ep",
                 precision: str = "highest", tol: float | None = None) -> EPResult:
    """One EP iteration: free phase (T steps from 0), nudged phases (K steps from ``s_*``), estimate.

    All nudged phases of the plan run together as one batch of ``J·B`` rows (``J = 2`` for the
    symmetric estimate). Returns loss gradients ``−∇̂`` in :meth:`LayeredNetwork.param_list` order.
    With dropout ``masks`` (App. F.3) every phase and the update use the same per-example masks;
    ``∂Φ/∂θ`` is taken at the masked activities ``m̃ ⊙ s`` (the rule gains ``1/(1 − p)²``).
    ``rule``: ``"ep"`` (Eq. 24–29), or ``"vf"`` / ``"kp_vf"`` for a unidirectional network (Eq. 33–37).
    ``precision`` of the relaxations (:data:`PRECISIONS`): ``"tf32"`` lets CUDA matmuls and
    convolutions use TF32; ``"bfloat16"`` relaxes with bfloat16 copies of the weights, drive and
    masks. Either way the steady states are brought back to the network's dtype before the
    estimate, so its differences (``s^β − s^{−β}``, divided by 2β) and the update stay in fp32/fp64.
    ``tol``: the steady-state stop of every phase (:func:`~neuromorph.dynamics.relax`; ``T`` and ``K`` are then
    maxima).
    """
    check_rule(net, rule)
    if precision not in PRECISIONS:
        raise ValueError(f"unknown relaxation precision {precision!r}; allowed: {', '.join(PRECISIONS)}")
    batch = x.shape[0]
    low = torch.bfloat16 if precision == "bfloat16" else None
    params = None if low is None else [p.detach().to(low) for p in net.param_list()]
    with torch.no_grad(), _tf32(precision == "tf32"):
        if drive is None:
            drive = net.input_drive(x)
        if low is not None:
            drive = drive.to(low)
            masks = None if masks is None else [None if m is None else m.to(low) for m in masks]
        if free is None:
            free = relax(net, drive, [s.to(drive.dtype) for s in net.zero_state(batch)], T, masks=masks,
                         params=params, tol=tol)
        plan = estimator.plan(generator)
        J = len(plan.betas)
        start = [s.repeat(J, *([1] * (s.dim() - 1))) for s in free.state]
        beta_col = _rows(plan.betas, batch, drive)
        yJ = y.repeat(J) if y.dim() == 1 else y.repeat(J, 1)
        driveJ = drive.repeat(J, *([1] * (drive.dim() - 1)))
        masksJ = None if masks is None else [None if m is None else m.repeat(J, *([1] * (m.dim() - 1)))
                                             for m in masks]
        nudged = relax(net, driveJ, start, K, y=yJ, beta=beta_col, record=record_nudged, masks=masksJ,
                       params=params, tol=tol)
        if low is not None:
            free, nudged, masks, masksJ = _to_dtype(net.dtype, free, nudged, masks, masksJ)
        grads = estimate_from_states(net, x, y, net.masked(free.state, masks), net.masked(nudged.state, masksJ),
                                     plan, batch, rule)
    return EPResult(grads, free, nudged, plan)


PRECISIONS = ("highest", "tf32", "bfloat16")


@contextlib.contextmanager
def _tf32(enable: bool):
    """Allow TF32 in CUDA matmuls and cuDNN convolutions inside the block (no effect on CPU)."""
    if not enable:
        yield
        return
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _to_dtype(dtype, free: RelaxResult, nudged: RelaxResult, masks, masksJ):
    def res(r: RelaxResult) -> RelaxResult:
        traj = None if r.trajectory is None else [[s.to(dtype) for s in st] for st in r.trajectory]
        return RelaxResult([s.to(dtype) for s in r.state], None if r.residual is None else r.residual.to(dtype), traj,
                           r.steps)

    def ms(m):
        return None if m is None else [None if t is None else t.to(dtype) for t in m]

    return res(free), res(nudged), ms(masks), ms(masksJ)


def stack_phases(free_state, nudged_state, plan: Plan, batch: int) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The states the estimate combines and their ``(rows, 1)`` coefficient column: the nudged phases, preceded
    by the free phase when its coefficient is not zero (one-sided and random-sign estimates)."""
    coefs = _rows(plan.coefs, batch, nudged_state[0])
    if plan.coef_free == 0.0:
        return list(nudged_state), coefs
    free_c = torch.full((batch, 1), plan.coef_free, dtype=coefs.dtype, device=coefs.device)
    return [torch.cat([f, s]) for f, s in zip(free_state, nudged_state)], torch.cat([free_c, coefs])


def estimate_from_states(net: LayeredNetwork, x: torch.Tensor, y: torch.Tensor, free_state, nudged_state,
                         plan: Plan, batch: int, rule: str = "ep") -> list[torch.Tensor]:
    """Loss gradients ``−∇̂`` from a free state and phase-stacked nudged states (Eq. 24–29, 33–37): the ideal
    store's realisation (:func:`ideal_gradients`) of the rule's requests (:func:`update_rows`)."""
    return ideal_gradients(net, update_rows(net, x, y, free_state, nudged_state, plan, batch, rule), batch,
                           scale=-1.0 / batch)


def readout_error(net: LayeredNetwork, logits: torch.Tensor, y: torch.Tensor, plan: Plan,
                  batch: int) -> torch.Tensor:
    """The read-out's rule (Eq. 28/29) per phase-stacked row: ``r_j (ŷ_j − y)`` with ``ŷ_j = softmax(logits)``
    of the nudged phase ``j`` (``∂ℓ/∂(w_out s)``, weighted by the plan's ``readout``); the loss gradient of
    ``w_out`` is ``Σ_rows error ⊗ s_N / B``."""
    yo = net.one_hot(y).repeat(len(plan.betas), 1).to(logits.dtype)
    return (torch.softmax(logits, -1) - yo) * _rows(plan.readout, batch, logits)
