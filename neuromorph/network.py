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
a stationary point of ``Φ − Σ G(s) − βℓ`` with ``G' = σ⁻¹`` for any strictly increasing σ
(docs/theory.md, fact 1). This is the form of the paper's official code and the one for which
the β → 0 limit of EP is exactly the gradient of the loss; Eq. 22/26 write the nudge outside σ,
which is not a gradient system.

The synapse objects carry the layer-specific algebra (forward product, transposed product,
``∂Φ/∂w``) so that convolution + pooling layers and crossbar substrates plug in behind the same
interface.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import torch
from torch import nn

from .activations import Activation, get_activation
from .phase import masked, node_targets

__all__ = ["Dense", "ConvPool", "IdealReads", "LayeredNetwork", "LOSSES"]

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

    def out_shape(self, in_shape: tuple[int, ...]) -> tuple[int, ...]:
        if math.prod(in_shape) != self.n_pre:
            raise ValueError(f"dense synapse expects {self.n_pre} inputs, got shape {in_shape}")
        return (self.n_post,)

    @staticmethod
    def drive(p: Sequence[torch.Tensor], x: torch.Tensor) -> tuple[torch.Tensor, None]:
        """``w x + b`` for a static input (once per batch)."""
        x = x.reshape(x.shape[0], -1)
        return (torch.addmm(p[1], x, p[0].t()) if len(p) > 1 else x @ p[0].t()), None

    @staticmethod
    def forward(p: Sequence[torch.Tensor], pre: torch.Tensor, const: torch.Tensor,
                alpha: float) -> tuple[torch.Tensor, None]:
        """``const + alpha · pre wᵀ`` (new tensor); a ``(C, H, W)`` pre is flattened (𝓕, App. E.1)."""
        return torch.addmm(const, pre.reshape(pre.shape[0], -1), p[0].t(), alpha=alpha), None

    @staticmethod
    def add_transposed(p: Sequence[torch.Tensor], aux, acc: torch.Tensor, post: torch.Tensor, alpha: float,
                       inplace: bool) -> torch.Tensor:
        """``acc + alpha · post w`` (the current fed back from the layer above; 𝓕⁻¹ for a conv pre)."""
        w = p[0]
        if acc.dim() > 2:
            fb = (post @ w).view(acc.shape)
            return acc.add_(fb, alpha=alpha) if inplace else acc + alpha * fb
        if inplace:
            return acc.addmm_(post, w, alpha=alpha)
        return torch.addmm(acc, post, w, alpha=alpha)

    @staticmethod
    def indices(p: Sequence[torch.Tensor], pre: torch.Tensor) -> None:
        """What the transposed product needs besides the weight: nothing for a dense synapse."""
        return None

    def phi(self, p: Sequence[torch.Tensor], pre: torch.Tensor, post: torch.Tensor) -> torch.Tensor:
        """Φ term per sample, shape ``(B,)``."""
        a = pre.reshape(pre.shape[0], -1) @ p[0].t()
        if self.bias:
            a = a + p[1]
        return (post * a).sum(-1)

    def phi_grads(self, post_c: torch.Tensor, pre: torch.Tensor | None, x_pre: torch.Tensor | None,
                  n_phases: int, batch: int, p: Sequence[torch.Tensor] = (), index_pre=None,
                  scale: float | None = None) -> list[torch.Tensor]:
        """``Σ_j c_j ∂Φ/∂θ(s_j)`` averaged over the batch (``index_pre``: unused, for :class:`ConvPool`).

        ``post_c`` stacks the coefficient-weighted post activities of all phases, ``(J·B, n_post)``.
        Either ``pre`` stacks the matching pre activities ``(J·B, n_pre)``, or ``x_pre`` is an
        input shared by every phase ``(B, n_pre)``, in which case the posts are summed first
        (one product of ``B`` rows instead of ``J·B``). ``scale``: multiply the sums by it instead of
        dividing by ``batch`` (e.g. ``−1/B`` for loss gradients: one pass over the result, not two).
        """
        if x_pre is not None:
            post_sum = post_c.view(n_phases, batch, -1).sum(0) if n_phases > 1 else post_c
            gw = post_sum.t() @ x_pre.reshape(batch, -1)
            gb = post_sum.sum(0)
        else:
            gw = post_c.t() @ pre.reshape(pre.shape[0], -1)
            gb = post_c.sum(0)
        if scale is not None:
            return [gw.mul_(scale), gb.mul_(scale)] if self.bias else [gw.mul_(scale)]
        out = [gw / batch]
        if self.bias:
            out.append(gb / batch)
        return out


class ConvPool:
    """Convolution with channel-wise bias followed by 2x2 max-pooling of stride 2 (App. E.1).

    Φ term: ``s_post • 𝓟(w ⋆ s_pre + B)`` (Eq. 21). Forward ``𝓟(w ⋆ s_pre)`` (Eq. 15, 18) keeps the
    argmax indices (Eq. 19); the transposed product is ``w̃ ⋆ 𝓟⁻¹(s_post)`` (Eq. 16, 20), the
    gradient of the convolution with respect to its input applied to the unpooled post activity;
    ``∂Φ/∂w = 𝓟⁻¹(s_post) ⋆ s_pre`` (Eq. 24/25). Weight ``(C_out, C_in, F, F)``, bias ``(C_out,)``.
    Max-pooling commutes with a per-channel constant, so ``𝓟(w ⋆ s + B) = 𝓟(w ⋆ s) + B``.

    Hot path (a float32 or bfloat16 CPU batch, no autograd graph through the call: the relaxation
    loop; BPTT, Φ as an oracle and float64 take the plain path). The activities run in the
    channels-last memory format, the layout of oneDNN's fastest convolutions, in which max-pooling
    and unpooling are vectorised over channels (on NCHW tensors a 2x2 max-pool with indices costs
    a quarter of the convolution before it); the states a relaxation returns are channels-last
    tensors. The transposed product unpools into a buffer of the synapse kept across
    calls (a fresh tensor of the convolution's output size per step costs its page faults; one
    synapse is not for concurrent use from several threads) and is one ``conv_transpose2d``. An
    unpadded convolution with at most :attr:`gemm_positions` output positions (the paper's last
    layer: 4x4 → 2x2) is one im2col matrix product each way. Results agree with the plain path to
    float32 rounding (summation order); the argmax indices, returned as ``aux = (indices, conv
    shape)``, are those of ``max_pool2d`` (the first maximum of each window) on either path.
    """

    #: an unpadded convolution with at most this many output positions runs as an im2col product (hot path)
    gemm_positions = 16
    #: the dtypes of the hot path: those of oneDNN's convolutions (float64 convolutions gain nothing from it)
    hot_dtypes: tuple[torch.dtype, ...] = (torch.float32, torch.bfloat16, torch.float16)

    def __init__(self, c_in: int, c_out: int, kernel: int, padding: int = 0, pool: int = 2, bias: bool = True):
        self.c_in, self.c_out, self.kernel, self.padding, self.pool = c_in, c_out, kernel, padding, pool
        self.bias = bool(bias)
        self._unpooled: torch.Tensor | None = None  # the hot path's unpooling buffer (add_transposed)

    def conv_shape(self, in_shape: tuple[int, ...]) -> tuple[int, int, int]:
        c, h, w = in_shape
        if c != self.c_in:
            raise ValueError(f"convolution expects {self.c_in} input channels, got shape {in_shape}")
        ho, wo = h + 2 * self.padding - self.kernel + 1, w + 2 * self.padding - self.kernel + 1
        if ho < self.pool or wo < self.pool:
            raise ValueError(f"a {self.kernel}x{self.kernel} convolution (padding {self.padding}) and "
                             f"{self.pool}x{self.pool} pooling do not fit an input of shape {in_shape}")
        return (self.c_out, ho, wo)

    def out_shape(self, in_shape: tuple[int, ...]) -> tuple[int, ...]:
        c, h, w = self.conv_shape(in_shape)
        return (c, h // self.pool, w // self.pool)

    def init(self, generator: torch.Generator, scale: float, dtype, device) -> list[torch.Tensor]:
        """PyTorch's default ``nn.Conv2d`` init (uniform Kaiming, paper App. F.1), times ``scale``."""
        fan_in = self.c_in * self.kernel**2
        bound = scale / math.sqrt(fan_in)
        shape = (self.c_out, self.c_in, self.kernel, self.kernel)
        w = (torch.rand(shape, generator=generator, dtype=torch.float64) * 2 - 1) * bound
        out = [w.to(dtype=dtype, device=device)]
        if self.bias:
            b = (torch.rand(self.c_out, generator=generator, dtype=torch.float64) * 2 - 1) * bound
            out.append(b.to(dtype=dtype, device=device))
        return out

    @classmethod
    def _hot(cls, *ts: torch.Tensor) -> bool:
        """The hot path applies: a CPU batch of images in a :attr:`hot_dtypes` dtype, no autograd graph to build."""
        t = ts[0]
        if t.dim() != 4 or t.device.type != "cpu" or t.dtype not in cls.hot_dtypes:
            return False
        return not (torch.is_grad_enabled() and any(u.requires_grad for u in ts))

    def _gemm(self, h: int, w: int) -> bool:
        """Whether the convolution of an ``h x w`` input runs as one im2col product (hot path)."""
        ho, wo = h + 2 * self.padding - self.kernel + 1, w + 2 * self.padding - self.kernel + 1
        return self.padding == 0 and ho * wo <= self.gemm_positions

    def _w_rows(self, w: torch.Tensor) -> torch.Tensor:
        """The kernel as ``(C_out, F·F·C_in)`` rows in (row, column, channel) order: the channels-last order.

        A copy per call (~2 ms for 512x512x3x3), not one kept across calls: fused optimizers update the weights
        in place without moving their version counter, so a kept copy could not tell it is stale."""
        return w.permute(0, 2, 3, 1).reshape(self.c_out, -1)

    def _conv(self, pre: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """``w ⋆ pre`` of a channels-last ``pre``, channels-last (hot path)."""
        b, c, h, wd = pre.shape
        if not self._gemm(h, wd):
            return torch.nn.functional.conv2d(pre, w, padding=self.padding)
        k = self.kernel
        ho, wo = h - k + 1, wd - k + 1
        s = pre.stride()  # (H·W·C, 1, W·C, C): the windows are strided views of the channels-last memory
        cols = pre.as_strided((b, ho, wo, k, k, c), (s[0], s[2], s[3], s[2], s[3], s[1]))
        out = cols.reshape(b * ho * wo, k * k * c) @ self._w_rows(w).t()
        return out.view(b, ho, wo, self.c_out).permute(0, 3, 1, 2)

    def _pool(self, pre: torch.Tensor, w: torch.Tensor):
        if self._hot(pre, w):
            c = self._conv(pre.contiguous(memory_format=torch.channels_last), w)
        else:
            c = torch.nn.functional.conv2d(pre, w, padding=self.padding)
        z, idx = torch.nn.functional.max_pool2d(c, self.pool, self.pool, return_indices=True)
        return z, (idx, c.shape)

    def drive(self, p: Sequence[torch.Tensor], x: torch.Tensor):
        z, aux = self._pool(x, p[0])
        if self.bias:
            z = z + p[1].view(-1, 1, 1)
        return z, aux

    def forward(self, p: Sequence[torch.Tensor], pre: torch.Tensor, const: torch.Tensor, alpha: float):
        z, aux = self._pool(pre, p[0])
        if self._hot(z, const) and const.dtype == z.dtype:  # into the pooled tensor: its layout, no new tensor
            return torch.add(const, z, alpha=alpha, out=z), aux
        return torch.add(const, z, alpha=alpha), aux

    def indices(self, p: Sequence[torch.Tensor], pre: torch.Tensor):
        """The argmax indices of ``𝓟(w ⋆ s_pre)`` (Eq. 19) that the transposed product unpools with."""
        return self._pool(pre, p[0])[1]

    def unpool(self, post: torch.Tensor, aux) -> torch.Tensor:
        idx, conv_shape = aux
        return torch.nn.functional.max_unpool2d(post, idx, self.pool, self.pool, output_size=conv_shape[-2:])

    def _unpool_buffer(self, post: torch.Tensor, aux) -> torch.Tensor:
        """:meth:`unpool` of a channels-last ``post`` into this synapse's buffer (overwritten by the next call)."""
        idx, conv_shape = aux
        buf = self._unpooled
        if buf is None or buf.shape != conv_shape or buf.dtype != post.dtype:
            buf = torch.empty(conv_shape, dtype=post.dtype, memory_format=torch.channels_last)
            self._unpooled = buf
        return torch.ops.aten.max_unpool2d.out(post, idx, list(conv_shape[-2:]), out=buf)

    def add_transposed(self, p: Sequence[torch.Tensor], aux, acc: torch.Tensor, post: torch.Tensor, alpha: float,
                       inplace: bool) -> torch.Tensor:
        w = p[0]
        if not (self._hot(post, w, acc) and acc.dtype == post.dtype):
            fb = torch.nn.grad.conv2d_input(acc.shape, w, self.unpool(post, aux), padding=self.padding)
            return acc.add_(fb, alpha=alpha) if inplace else acc + alpha * fb
        u = self._unpool_buffer(post.contiguous(memory_format=torch.channels_last), aux)
        if not self._gemm(acc.shape[-2], acc.shape[-1]):
            fb = torch.nn.functional.conv_transpose2d(u, w, padding=self.padding)
            return acc.add_(fb, alpha=alpha) if inplace else torch.add(acc, fb, alpha=alpha, out=fb)
        # im2col form: one product gives every output position's F x F window of the transposed product,
        # added into the accumulator (col2im) window by window
        b, _, ho, wo = u.shape
        k = self.kernel
        cols = (u.permute(0, 2, 3, 1).reshape(b * ho * wo, self.c_out) @ self._w_rows(w)).view(b, ho, wo, k, k, -1)
        out = acc if inplace else acc.clone(memory_format=torch.channels_last)
        o = out.permute(0, 2, 3, 1)
        for i in range(ho):
            for j in range(wo):
                o[:, i:i + k, j:j + k].add_(cols[:, i, j], alpha=alpha)
        return out

    def phi(self, p: Sequence[torch.Tensor], pre: torch.Tensor, post: torch.Tensor) -> torch.Tensor:
        z, _ = self.drive(p, pre)
        return (post * z).flatten(1).sum(-1)

    def phi_grads(self, post_c: torch.Tensor, pre: torch.Tensor | None, x_pre: torch.Tensor | None,
                  n_phases: int, batch: int, p: Sequence[torch.Tensor] = (), index_pre=None) -> list[torch.Tensor]:
        """``Σ_rows 𝓟⁻¹(c·s_post) ⋆ s_pre / B`` with the argmax indices of ``w ⋆ s_pre`` of each row (Eq. 25).

        ``index_pre``: take the argmax indices of ``w ⋆ index_pre`` instead (the Jacobian of the
        pooled convolution at another state, applied to ``s_pre``; the VF rule, Eq. 33).
        """
        if x_pre is not None:
            pre = x_pre.repeat(n_phases, *([1] * (x_pre.dim() - 1))) if n_phases > 1 else x_pre
        _, aux = self._pool(pre if index_pre is None else index_pre, p[0])
        u = self.unpool(post_c, aux)
        if self._hot(pre, u):
            pre = pre.contiguous(memory_format=torch.channels_last)
        gw = torch.nn.grad.conv2d_weight(pre, p[0].shape, u, padding=self.padding)
        out = [gw.contiguous() / batch]  # the parameters' layout: fused optimizers take the gradient's memory as is
        if self.bias:
            out.append(post_c.sum((0, 2, 3)) / batch)
        return out


def _n_weights(syn, bias: bool | None = None) -> int:
    """Number of weights (and biases, unless ``bias`` is False) of a Dense or ConvPool synapse."""
    b = syn.bias if bias is None else bias
    if isinstance(syn, ConvPool):
        return syn.c_out * syn.c_in * syn.kernel**2 + (syn.c_out if b else 0)
    return syn.n_pre * syn.n_post + (syn.n_post if b else 0)


def memory_limit_bytes() -> int:
    """This machine's physical memory in bytes (the bound a network's parameters are checked against)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not POSIX: no check
        return 1 << 62


def _check_memory(n_weights: int, sizes: Sequence[int], dtype: torch.dtype) -> None:
    """Refuse, before allocating, a network whose weights, gradients and optimizer state exceed the memory.

    Per weight: the float64 init draw (8 B) plus four copies in ``dtype`` (weights, gradients and the two
    optimizer buffers of Adam; SGD with momentum keeps one).
    """
    need = n_weights * (8 + 4 * torch.empty((), dtype=dtype).element_size())
    have = memory_limit_bytes()
    if need > have:
        raise ValueError(f"model.layers = {list(sizes)} has {n_weights:,} weights: about {need / 2**30:,.1f} GiB for "
                         f"the weights, their gradients and optimizer state, more than this machine's "
                         f"{have / 2**30:,.1f} GiB of memory; use smaller layers")


class LayeredNetwork(nn.Module):
    """A layered convergent RNN (convolutional and/or fully connected), the ideal-precision reference.

    Args:
        sizes: fully connected sizes. Without ``conv``: ``[n_in, n_1, …, n_out]``; with ``conv``:
            the sizes after the flattened last conv layer, ``[n_1, …, n_out]`` (may be just
            ``[n_out]``). With ``loss="mse"`` the output layer ``n_out`` is part of the state; with
            ``loss="xent"`` a read-out ``w_out`` of shape ``(n_out, n_last_state)`` gives the logits.
        loss: ``"mse"`` or ``"xent"``.
        activation: a name from :data:`neuromorph.activations.ACTIVATIONS` or an :class:`Activation`.
        bias: biases on every synapse (the read-out has none, Eq. 12).
        init_scale: multiplies PyTorch's default init bounds.
        seed / generator: initialisation randomness.
        input_shape: ``(C, H, W)`` of the input, required with ``conv``.
        conv: ``[(channels, kernel, padding), …]``: conv layers, each followed by 2x2 max-pool of
            stride 2 (App. E), before the fully connected part.
        dropout: one probability per state layer (App. F.3).
        unidirectional: separate backward weights ``w_k^b`` (App. E.4, Eq. 32): every synapse but
            the first (the static input has no feedback) gets a backward weight of the forward
            weight's shape, without bias, initialised independently with the same distribution
            (drawn after every forward weight, so the forward weights equal those of the
            bidirectional network of the same seed). The dynamics is then a vector field, not the
            gradient of a Φ; it is trained with the VF or KP-VF rules (Eq. 33–37).
    """

    def __init__(self, sizes: Sequence[int], loss: str = "mse", activation: str | Activation = "half_hard_sigmoid",
                 bias: bool = True, init_scale: float = 1.0, seed: int = 0,
                 generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32,
                 device: str | torch.device = "cpu", *, input_shape: Sequence[int] | None = None,
                 conv: Sequence[Sequence[int]] = (), dropout: Sequence[float] = (),
                 unidirectional: bool = False) -> None:
        super().__init__()
        sizes = [int(n) for n in sizes]
        if loss not in LOSSES:
            raise ValueError(f"unknown loss {loss!r}; allowed: {', '.join(LOSSES)}")
        conv = [tuple(int(v) for v in c) for c in conv]
        if conv:
            if input_shape is None or len(input_shape) != 3:
                raise ValueError(f"a convolutional network needs input_shape=(C, H, W), got {input_shape}")
            sizes = [math.prod(input_shape), *sizes]
        min_len = (2 if loss == "mse" else 3) - (1 if conv else 0)
        if len(sizes) < min_len or any(n < 1 for n in sizes):
            raise ValueError(f"sizes must be at least {min_len} positive layer sizes for loss={loss!r}, got {sizes}")
        for c in conv:
            if len(c) != 3 or c[0] < 1 or c[1] < 1 or c[2] < 0:
                raise ValueError(f"each conv layer is (channels >= 1, kernel >= 1, padding >= 0), got {c}")
        self.sizes, self.loss_kind = sizes, loss
        self.input_shape = tuple(int(v) for v in input_shape) if input_shape is not None else (sizes[0],)
        self.act = get_activation(activation)
        fc_state = sizes[1:] if loss == "mse" else sizes[1:-1]
        self.synapses: list = []
        shapes: list[tuple[int, ...]] = []
        shape = self.input_shape
        for c_out, kernel, padding in conv:
            syn = ConvPool(shape[0], c_out, kernel, padding, bias=bias)
            shape = syn.out_shape(shape)
            self.synapses.append(syn)
            shapes.append(shape)
        for n in fc_state:
            self.synapses.append(Dense(math.prod(shape), n, bias))
            shape = (n,)
            shapes.append(shape)
        self.state_shapes = shapes
        self.state_sizes = [math.prod(s) for s in shapes]
        dropout = tuple(float(p) for p in dropout)
        if dropout and (len(dropout) != len(shapes) or not all(0 <= p < 1 for p in dropout)):
            raise ValueError(f"dropout needs one probability in [0, 1) per state layer ({len(shapes)}), got {dropout}")
        self.dropout = dropout if any(dropout) else ()
        n_weights = sum(_n_weights(syn) for syn in self.synapses) + (self.state_sizes[-1] * sizes[-1]
                                                                      if loss == "xent" else 0)
        if unidirectional:
            n_weights += sum(_n_weights(syn, bias=False) for syn in self.synapses[1:])
        _check_memory(n_weights, sizes, dtype)
        gen = generator if generator is not None else torch.Generator().manual_seed(seed)
        self.unidirectional = bool(unidirectional)
        self.groups: list[list[nn.Parameter]] = []
        for syn in self.synapses:
            self.groups.append([nn.Parameter(t) for t in syn.init(gen, init_scale, dtype, device)])
        self.readout: nn.Parameter | None = None
        if loss == "xent":
            ro = Dense(self.state_sizes[-1], sizes[-1], bias=False).init(gen, init_scale, dtype, device)[0]
            self.readout = nn.Parameter(ro)
        if self.unidirectional:
            # one group per synapse layer holds [w^f, b, w^b]: forward and backward weights share the
            # learning rate, momentum and weight decay (App. F.1), which Kolen-Pollack needs
            for k, syn in enumerate(self.synapses[1:], start=1):
                wb = syn.init(gen, init_scale, dtype, device)[0]
                self.groups[k].append(nn.Parameter(wb))
        if self.readout is not None:
            self.groups.append([self.readout])
        params = [q for g in self.groups for q in g]
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

    def layer_rates(self, lrs: Sequence[float]) -> list[float]:
        """One learning rate per layer of weights (each synapse layer, with its backward weights, then the
        read-out) from ``train.lr``: one value for all, or one per layer."""
        n = len(self.groups)
        lrs = list(lrs) * n if len(lrs) == 1 else list(lrs)
        if len(lrs) != n:
            raise ValueError(f"train.lr has {len(lrs)} values but the network has {n} layers of weights "
                             f"({len(self.synapses)} synapse layers{' + read-out' if self.readout is not None else ''})"
                             "; give one value or one per layer")
        return lrs

    def param_list(self) -> list[torch.Tensor]:
        """Parameters in the fixed order ``[w_1, b_1, w_2, b_2, …, (w_out)]``."""
        return list(self._plist)

    def _split(self, params: Sequence[torch.Tensor] | None):
        """``(per, readout, back)`` from a flat list in :meth:`param_list` order.

        ``per[k]`` is ``[w_k, b_k]`` (or ``[w_k]``), ``back[k]`` the backward weight ``w_k^b`` of a
        unidirectional network (``None`` for the first synapse and for bidirectional networks).
        """
        if params is None:
            return self._cached_split
        p = list(params)
        per, back, i = [], [], 0
        for k, syn in enumerate(self.synapses):
            n = 2 if syn.bias else 1
            per.append(p[i:i + n])
            i += n
            if self.unidirectional and k > 0:
                back.append(p[i])
                i += 1
            else:
                back.append(None)
        return per, (p[i] if self.readout is not None else None), back

    def alignment_angles(self) -> list[float]:
        """Angle between forward and backward weights per synapse layer, in degrees (Eq. 44, App. G).

        ``α = (180/π) acos(w^b • w^f / (‖w^b‖ ‖w^f‖))``, for synapses 2…N (the first has no ``w^b``).
        """
        if not self.unidirectional:
            raise ValueError("alignment angles need a unidirectional network (unidirectional=True)")
        per, _, back = self._split(None)
        out = []
        with torch.no_grad():
            for k in range(1, len(self.synapses)):
                wf, wb = per[k][0].double(), back[k].double()
                cos = (wf * wb).sum() / (wf.norm() * wb.norm())
                out.append(math.degrees(math.acos(max(-1.0, min(1.0, float(cos))))))
        return out

    def zero_state(self, batch: int) -> State:
        """``s_0 = 0`` (Algorithm 1/2)."""
        return [torch.zeros(batch, *s, dtype=self.dtype, device=self.device) for s in self.state_shapes]

    def flatten_input(self, x: torch.Tensor) -> torch.Tensor:
        """The input in the network's layout: ``(B, n_in)`` or ``(B, C, H, W)``; checked against it."""
        if math.prod(x.shape[1:]) != math.prod(self.input_shape):
            raise ValueError(f"input has {math.prod(x.shape[1:])} features, the network expects "
                             f"{math.prod(self.input_shape)} (shape {self.input_shape})")
        x = x.reshape(x.shape[0], *self.input_shape)
        return x.to(dtype=self.dtype, device=self.device)

    def sample_dropout_masks(self, batch: int, generator: torch.Generator | None = None) -> list | None:
        """Scaled dropout masks ``m/(1 − p)`` per state layer, one per example (App. F.3), or ``None``.

        Drawn once per training iteration and used by every phase of it and by its update.
        """
        if not self.dropout:
            return None
        masks = []
        for p, shape in zip(self.dropout, self.state_shapes):
            if p == 0:
                masks.append(None)
                continue
            keep = torch.rand((batch, *shape), generator=generator) >= p
            masks.append((keep.to(self.dtype) / (1 - p)).to(self.device))
        return masks

    def one_hot(self, y: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.one_hot(y.long(), self.n_classes).to(self.dtype)

    # ------------------------------------------------------------------ primitive and losses
    def input_drive(self, x: torch.Tensor, params: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
        """``𝓟(w_1 ⋆ x) + B_1`` or ``w_1 x + b_1``: computed once per batch, shared by every phase."""
        per = self._split(params)[0]
        return self.synapses[0].drive(per[0], self.flatten_input(x))[0]

    def phi(self, x: torch.Tensor, state: State, params: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
        """The primitive Φ(x, s) per sample, shape ``(B,)`` (Eq. 21 / 27). Used as a test oracle."""
        if self.unidirectional:
            raise ValueError("a unidirectional network has no primitive Φ (its dynamics is a vector field, Eq. 32)")
        per = self._split(params)[0]
        chain = [self.flatten_input(x), *state]
        return sum(syn.phi(per[i], chain[i], chain[i + 1]) for i, syn in enumerate(self.synapses))

    def logits(self, state: State, params: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
        """Network output: ``s^N`` (mse) or ``w_out 𝓕(s^N)`` (xent)."""
        ro = self._split(params)[1]
        last = state[-1].reshape(state[-1].shape[0], -1)
        return last if ro is None else last @ ro.t()

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
        per, ro = self._split(params)[:2]
        g, o = self.act.gain, self.act.offset
        consts = []
        for k, syn in enumerate(self.synapses):
            if k == 0:
                c = drive * g + o
            elif syn.bias:
                b = per[k][1]
                c = (b.view(-1, 1, 1) if isinstance(syn, ConvPool) else b) * g + o
            else:
                c = torch.full(self.state_shapes[k], o, dtype=drive.dtype, device=drive.device)
            consts.append(c)
        if isinstance(beta, (int, float)) and beta == 0:
            return consts, None
        beta_col = beta if isinstance(beta, torch.Tensor) else torch.full(
            (drive.shape[0], 1), float(beta), dtype=drive.dtype, device=drive.device)
        yo = (self.one_hot(y) if y.dim() == 1 else y).to(drive.dtype)
        # β(y − s) = βy − βs for mse;  β w_outᵀ(y − ŷ) = β y w_out − β ŷ w_out for xent
        target = yo if ro is None else yo @ ro
        last = self.state_shapes[-1]
        consts[-1] = consts[-1] + ((g * beta_col) * target).view(-1, *last)
        return consts, -g * beta_col

    def step(self, state: State, consts: list[torch.Tensor], neg_gamma_beta: torch.Tensor | None,
             params: Sequence[torch.Tensor] | None = None, inplace: bool = False, split=None,
             masks: list | None = None) -> State:
        """One synchronous step of Eq. 4 / Eq. 22 / Eq. 26 (all layers from the previous state), explicit.

        ``s ← σ(u(s))`` with ``u`` from :meth:`preactivation`. ``inplace=True`` is the autograd-free
        hot-loop form; ``False`` keeps the graph (BPTT). ``split`` is ``self._split(params)``
        precomputed by the caller's loop.
        """
        z = self.preactivation(state, consts, neg_gamma_beta, inplace=inplace, split=split or self._split(params),
                               masks=masks)
        return [self.act.unit_(zk) for zk in z] if inplace else [self.act.unit_fn(zk) for zk in z]

    def preactivation(self, state: State, consts: list[torch.Tensor], neg_gamma_beta: torch.Tensor | None,
                      params: Sequence[torch.Tensor] | None = None, inplace: bool = False, split=None,
                      masks: list | None = None) -> list[torch.Tensor]:
        """``u(s) = γ·(∂Φ/∂s − β ∂ℓ/∂s) + o`` per layer, so that the step is ``s ← unit(u)`` and σ = unit∘(γ·+o).

        This is the steady-state node voltage of the circuit ODE ``τ du/dt = −u + u(σ(u))``
        (the settling circuit, docs/architecture.md §2): explicit Euler with ``dt = τ`` is the
        discrete iteration. :func:`~neuromorph.phase.node_targets` with this network's
        :class:`IdealReads` (the same function the crossbar substrate runs on its arrays' reads). With
        dropout ``masks`` (scaled, App. F.3) the step is ``s ← σ(m̃ ⊙ ∂(Φ − βℓ)/∂s̃)`` evaluated at
        ``s̃ = m̃ ⊙ s``: the gradient of ``Φ(m̃ ⊙ s)``.
        """
        reads = self.reads(consts, neg_gamma_beta, split if split is not None else self._split(params))
        return node_targets(reads, state, masks=masks, offset=self.act.offset, inplace=inplace)

    def reads(self, consts: list[torch.Tensor], neg_gamma_beta: torch.Tensor | None, split) -> IdealReads:
        """The ideal weight store's reads for one phase (:class:`IdealReads`), from :meth:`constants`."""
        return IdealReads(self, consts, neg_gamma_beta, split)

    def masked(self, state: State, masks: list | None) -> State:
        """``m̃ ⊙ s`` per layer (the activity the other layers and the read-out see under dropout)."""
        return masked(state, masks)


class IdealReads:
    """The ideal weight store's reads of one phase (:class:`~neuromorph.phase.PhaseReads`): the parameter tensors
    read with fused products, the constants of :meth:`LayeredNetwork.constants` (biases, input drive, the nudge's
    target part) folded into each node once per phase.

    A unidirectional network (Eq. 32) reads forward with ``w^f`` and feeds back with ``w^b``, unpooled with the
    switches of ``w^b ⋆ s^{k−1}`` (the derivative of ``s^{k+1} • 𝓟(w^b ⋆ s^k)``, Eq. 38).
    """

    def __init__(self, net: LayeredNetwork, consts: list[torch.Tensor], neg_gamma_beta: torch.Tensor | None,
                 split) -> None:
        per, self.ro, back = split
        self.syns, self.consts, self.ngb = net.synapses, consts, neg_gamma_beta
        self.per, self.g = per, net.act.gain
        self.fb_p = [None] + [[back[k]] for k in range(1, len(per))] if net.unidirectional else per
        self.unidirectional = net.unidirectional
        self.nudged = neg_gamma_beta is not None
        self.aux: list = [None] * len(per)

    def first(self) -> torch.Tensor:
        return self.consts[0]

    @staticmethod
    def enter(s: State) -> State:
        return s

    leave = enter

    def forward(self, k: int, pre: torch.Tensor) -> torch.Tensor:
        syn = self.syns[k]
        z, aux = syn.forward(self.per[k], pre, self.consts[k], self.g)
        self.aux[k] = syn.indices(self.fb_p[k], pre) if self.unidirectional else aux
        return z

    def feedback(self, k: int, post: torch.Tensor, acc: torch.Tensor, inplace: bool) -> torch.Tensor:
        return self.syns[k].add_transposed(self.fb_p[k], self.aux[k], acc, post, self.g, inplace)

    def nudge(self, last: torch.Tensor, acc: torch.Tensor, inplace: bool) -> torch.Tensor:
        ngb = self.ngb
        if self.ro is None:
            return acc.addcmul_(last, ngb) if inplace else acc + last * ngb
        flat = last.reshape(last.shape[0], -1)
        fb = ((torch.softmax(flat @ self.ro.t(), -1) * ngb) @ self.ro).view(last.shape)
        return acc.add_(fb) if inplace else acc + fb
