"""The compiled pulse loop (neuromorph.devices.kernels) against the torch pulse loop of the step models.

Both consume the same random numbers in the same order, so after the same pulses the conductances agree to the
rounding of ``exp`` (C's ``expf``/``exp`` against torch's), and the counters exactly.
"""

from __future__ import annotations

import shutil
from dataclasses import replace

import pytest
import torch

from neuromorph.devices import DeviceArray, kernels, load_card
from neuromorph.devices.cards import STEP_MODELS

F64 = torch.float64
STEP_PRESETS = [
    # (preset, card changes): every branch of the C loop
    ("reram_es", {}),  # exp_step, multiplicative c2c noise, write noise
    ("reram_es", {"dw_min_std_add": 0.5, "dw_min_std_slope": 0.3}),  # exp_step, aihwkit's complex noise
    ("reram_es", {"dw_min_std": 0.0, "write_noise_std": 0.0}),  # exp_step, noise-free
    ("idealized", {"dw_min_std": 0.3}),  # constant_step with noise
    ("ecram", {"dw_min_std": 0.3}),  # linear_step, noise on the step
    ("ecram", {"dw_min_std": 0.3, "mult_noise": True}),  # linear_step, multiplicative noise
    ("reram_sb", {"dw_min_std": 0.3}),  # soft_bounds
]
IDS = [f"{p}-{'-'.join(ch) or 'preset'}" for p, ch in STEP_PRESETS]


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _arrays(card, dtype, shape=(30, 40)):
    return [DeviceArray(card, shape, generator=gen(3), dtype=dtype, g_init="center") for _ in range(2)]


def _requests(seed: int, shape, frac: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Sparse signed counts: ``frac`` of the devices get 1 to 6 pulses of either sign (flat indices, counts)."""
    g = gen(seed)
    numel = shape[0] * shape[1]
    idx = torch.randperm(numel, generator=g)[: int(frac * numel)].sort().values
    n = torch.randint(1, 7, idx.shape, generator=g) * torch.where(torch.rand(idx.shape, generator=g) < 0.5, -1, 1)
    return idx, n


requires_kernel = pytest.mark.skipif(not kernels.available(), reason=f"compiled loop: {kernels.status()}")


@requires_kernel
@pytest.mark.parametrize("dtype", [F64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("preset,changes", STEP_PRESETS, ids=IDS)
def test_compiled_pulse_loop_equals_the_torch_loop(preset, changes, dtype, monkeypatch):
    card = replace(load_card(preset), **changes)
    assert card.model in STEP_MODELS and card.model not in ("neurosim", "ideal")
    fast, slow = _arrays(card, dtype)
    assert fast._loops() and fast._compiled()
    tol = {"rtol": 1e-12, "atol": 1e-12 * card.g_range} if dtype == F64 else {"rtol": 2e-5, "atol": 2e-6 * card.g_range}
    for step in range(6):
        idx, n = _requests(10 + step, fast.shape, 0.3 if step % 3 else 0.05)
        monkeypatch.setattr(DeviceArray, "_compiled", lambda self: False)
        dg_slow = slow.apply_pulses_at(idx, n)
        monkeypatch.undo()
        dg_fast = fast.apply_pulses_at(idx, n)
        torch.testing.assert_close(fast.g_persistent, slow.g_persistent, **tol)
        torch.testing.assert_close(fast.g, slow.g, **tol)
        torch.testing.assert_close(dg_fast, dg_slow, **tol)
        assert torch.equal(fast.pulse_count, slow.pulse_count)
    # the dense path (most devices pulsed) runs the same loop
    full = torch.randint(-4, 5, fast.shape, generator=gen(40))
    monkeypatch.setattr(DeviceArray, "_compiled", lambda self: False)
    slow.apply_pulses(full)
    monkeypatch.undo()
    fast.apply_pulses(full)
    torch.testing.assert_close(fast.g, slow.g, **tol)
    moved = (fast.g_persistent != torch.as_tensor(card.g_ref, dtype=dtype)).float().mean()
    assert moved > 0.5  # the pulses did move the devices


@requires_kernel
def test_compiled_loop_moves_the_version_of_what_it_writes():
    """Readers key their caches on the conductance tensors' ``_version``: the compiled loop writes through a
    pointer, so it must move the version as an in-place torch write does."""
    arr = DeviceArray(load_card("reram_es"), (20, 20), generator=gen(1), g_init="center")
    arr.apply_pulses_at(torch.tensor([3, 7]), torch.tensor([1, -2]))  # the first write creates the applied tensor
    g, gp = arr.g, arr.g_persistent
    v, vp = g._version, gp._version
    arr.apply_pulses_at(torch.tensor([5, 11]), torch.tensor([2, 1]))
    assert arr.g is g and arr.g_persistent is gp  # written in place
    assert g._version > v and gp._version > vp


def test_kernel_can_be_disabled_and_says_why(monkeypatch):
    monkeypatch.setattr(kernels, "_state", {"lib": None, "tried": False, "reason": None})
    monkeypatch.setenv("NEUROMORPH_KERNELS", "0")
    assert not kernels.available()
    assert kernels.status() == "torch (disabled by NEUROMORPH_KERNELS=0)"
    arr = DeviceArray(load_card("reram_es"), (10, 10), generator=gen(2), g_init="center")
    assert not arr._compiled()
    arr.apply_pulses(torch.ones(10, 10, dtype=torch.int64))  # the torch loop runs
    assert int(arr.pulse_count.sum()) == 100
    with pytest.raises(RuntimeError, match="not available: disabled"):
        kernels.step(0, torch.tensor([0]), torch.tensor([1]), arr.g_persistent, None, torch.zeros(1, 4),
                     torch.zeros(8), None, None, sigma=0.0, add_std=0.0, slope_std=0.0, s=1.0, g_ref=0.0, sw=0.0)


def test_a_failed_build_warns_and_falls_back(monkeypatch, tmp_path):
    monkeypatch.setattr(kernels, "_state", {"lib": None, "tried": False, "reason": None})
    monkeypatch.setenv("NEUROMORPH_KERNELS", "1")
    monkeypatch.setenv("NEUROMORPH_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    with pytest.warns(RuntimeWarning, match="compiled pulse loop is not available"):
        assert not kernels.available()
    assert "no-such-compiler" in kernels.status()
    assert not list((tmp_path / "kernels").glob("*.so"))  # nothing half-written left behind


def test_the_kernel_is_built_where_a_compiler_exists(monkeypatch, tmp_path):
    """CI has a C compiler: the compiled loop must then be built (else the tests above skip silently)."""
    cc = kernels._compiler()[0]
    if shutil.which(cc) is None:
        pytest.skip(f"no C compiler {cc!r} on this machine")
    monkeypatch.setattr(kernels, "_state", {"lib": None, "tried": False, "reason": None})
    monkeypatch.setenv("NEUROMORPH_KERNELS", "1")
    monkeypatch.setenv("NEUROMORPH_CACHE", str(tmp_path))
    assert kernels.available(), kernels.status()
    assert len(list((tmp_path / "kernels").glob("pulse_kernel_*.so"))) == 1


@requires_kernel
@pytest.mark.parametrize("dtype", [F64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("policy", ["bidirectional", "unidirectional"])
def test_compiled_split_equals_the_torch_split(policy, dtype):
    """One scan of the counts (``kernels.split``) gives exactly the pairs, device indices, counts and positions of
    the torch path (``nonzero``, ``DifferentialArray._split``, ``_device_lists``), rounding ties included."""
    from neuromorph.crossbar.pairs import DifferentialArray

    card = load_card("ideal")
    A = DifferentialArray(card, (60, 70), generator=gen(4), dtype=dtype, policy=policy)
    g = gen(5)
    dg = A.dg
    for trial in range(4):
        if trial % 2:  # conductances on a grid of half steps: (G- - G+)/dg lands on ties of the rounding
            half = torch.randint(0, 40, (2, 60, 70), generator=g).to(dtype) * (dg / 2)
            A.pos.g, A.neg.g = card.g_min + half[0], card.g_min + half[1]
        else:
            A.set_weights((torch.rand(60, 70, generator=g, dtype=dtype) - 0.5) * 1.5, count=False)
        n = torch.randint(-5, 6, (60, 70), generator=g, dtype=torch.int32)
        n *= (torch.rand(60, 70, generator=g) < 0.2).to(torch.int32)
        flat = n.reshape(-1)
        found = kernels.split(flat, A.pos.g.contiguous(), A.neg.g.contiguous(), dg, policy == "bidirectional",
                              flat.numel())
        idx = flat.nonzero().squeeze(1)
        lists = A._device_lists(idx, *A._split(flat.index_select(0, idx), idx))
        assert torch.equal(found[0], idx)
        for got, want in zip(found[1:], lists):
            for a, b in zip(got, want):
                assert torch.equal(a, b)
        assert kernels.split(flat, A.pos.g, A.neg.g, dg, True, idx.numel() - 1) is None  # one too many: dense


def _torch_path(monkeypatch):
    monkeypatch.setattr(kernels, "available", lambda: False)


@pytest.mark.parametrize("dtype", [F64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("policy", ["bidirectional", "unidirectional"])
@pytest.mark.parametrize("preset", ["reram_es", "taox_hfox"])
@pytest.mark.parametrize("skip", [False, True], ids=["all-columns", "live-columns"])
def test_programming_a_request_is_one_result_on_every_path(preset, policy, skip, dtype, monkeypatch):
    """``program_steps``: the fused compiled rounding + split and the torch rounding + split give the same counts,
    conductances and counters, whether the request covers every column or the live ones only; the counts are
    ``floor(req + u)`` with the uniforms drawn from the array's generator, 0 in the skipped columns."""
    from neuromorph.crossbar.pairs import SPARSE_ROUNDING, DifferentialArray

    def run(compiled: bool):
        if not compiled:
            _torch_path(monkeypatch)
        A = DifferentialArray(load_card(preset), (48, 60), generator=gen(8), dtype=dtype, policy=policy)
        A.set_weights((torch.rand(48, 60, generator=gen(9), dtype=dtype) - 0.5) * 0.8, count=False)
        g = gen(10)
        outs = []
        for step in range(5):
            scale = (0.6, 3.0, 0.05, 40.0, 1.5)[step]  # dense rounding, up to the dense path; one thinned
            req = torch.randn(48, 60, generator=g, dtype=dtype) * scale
            req[:, torch.rand(60, generator=g) < 0.4] = 0.0  # columns with nothing to request
            cols = (req != 0).any(0).nonzero().squeeze(1) if skip else None
            sub = req if cols is None else req[:, cols].contiguous()
            state = A.generator.get_state()
            n, dw = A.program_steps(sub.clone(), cols=cols, realised=True)
            if float(sub.abs().max()) > SPARSE_ROUNDING:  # the counts against their definition
                u = torch.rand(sub.shape, generator=torch.Generator().set_state(state), dtype=dtype)
                want = torch.zeros(48, 60, dtype=torch.int64)
                want[:, cols if cols is not None else slice(None)] = torch.floor(sub + u).to(torch.int64)
                assert torch.equal(n.to(torch.int64), want)
            outs.append((n.clone(), dw))
        monkeypatch.undo()
        return A, outs

    ref_A, ref = run(compiled=False)
    if not kernels.available():
        pytest.skip(f"compiled loop: {kernels.status()}")
    A, outs = run(compiled=True)
    # the compiled pulse loop of a step model agrees to the rounding of exp (above); all else is exact
    same = torch.equal if not A.pos._loops() else \
        lambda a, b, r=(2e-5 if dtype == torch.float32 else 1e-12): torch.allclose(a, b, rtol=r,
                                                                                  atol=r * float(b.abs().max()))
    for (n, dw), (n_ref, dw_ref) in zip(outs, ref):
        assert torch.equal(n, n_ref)
        assert same(dw, dw_ref)
    for dev, dev_ref in ((A.pos, ref_A.pos), (A.neg, ref_A.neg)):
        assert same(dev.g, dev_ref.g) and torch.equal(dev.pulse_count, dev_ref.pulse_count)
    assert A.stats() == ref_A.stats()
    assert ref_A.stats()["pulses_program"] > 0


def test_live_columns_skip_nothing_that_requests_pulses():
    """The update skips the columns whose pre-activities are all 0 (MNIST's blank pixels): their requests are 0."""
    from neuromorph.hardware import _LIVE_COLUMNS, _live_columns

    pre = torch.rand(6, 100)
    assert _live_columns(pre) is None  # every column live: no gather
    pre[:, ::3] = 0.0
    pre[2, 3] = 0.5  # one entry is enough to keep a column
    cols = _live_columns(pre)
    assert cols.tolist() == [c for c in range(100) if c % 3 or c == 3]
    assert _LIVE_COLUMNS == 0.9
    almost = torch.ones(3, 100)
    almost[:, :10] = 0.0  # 90 % live: gathered
    assert _live_columns(almost).numel() == 90
    almost[:, 9] = 1.0  # 91 %: the whole request
    assert _live_columns(almost) is None


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "torch"])
def test_tally_sums_its_pending_sparse_adds_exactly(compiled, monkeypatch):
    """``Tally.add_at`` keeps the sparse adds and sums them when the total is read or when they reach the array's
    size: the same int64 totals as adding at once, repeated indices across adds and counts past 2^53 included."""
    from neuromorph.devices.models import Tally

    if compiled and not kernels.available():
        pytest.skip(f"compiled loop: {kernels.status()}")
    if not compiled:
        _torch_path(monkeypatch)
    t = Tally(torch.Size((7, 11)), torch.device("cpu"))
    want = torch.zeros(77, dtype=torch.int64)
    g = gen(12)
    for k in range(40):  # 40 adds of ~20 entries: 800 > 77 entries, so it flushes on the way too
        idx = torch.randperm(77, generator=g)[:20].sort().values
        n = torch.randint(-9, 10, (20,), generator=g)
        t.add_at(idx, n)
        want.index_add_(0, idx, n)
        if k == 20:
            t.add(torch.ones(7, 11, dtype=torch.int32), bound=1)  # a dense int32 add in between
            want += 1
    assert torch.equal(t.value.view(-1), want)
    big = torch.tensor([2 ** 60, -(2 ** 55)])
    t.add_at(torch.tensor([3, 70]), big)  # beyond float64's integers: exact all the same
    t.add_at(torch.tensor([3, 5]), torch.tensor([1, 1]))
    want[3] += 2 ** 60 + 1
    want[70] -= 2 ** 55
    want[5] += 1
    assert torch.equal(t.value.view(-1), want)
