"""Independent references shared by the tests."""

import torch


def assert_step_is_sigma_of_autograd(net, x, y, state, beta, masks=None, atol=1e-12):
    """The explicit hot-loop step equals ``σ(autograd ∂(Φ − βℓ)/∂s)`` at ``s̃ = m̃ ⊙ s`` (masks optional)."""
    consts, ngb = net.constants(net.input_drive(x), y, beta)
    explicit = net.step(state, consts, ngb, inplace=True, masks=masks)
    s = [t.clone().requires_grad_(True) for t in state]
    sm = net.masked(s, masks)
    energy = net.phi(x, sm) - beta.squeeze(1) * net.loss(sm, y)
    grads = torch.autograd.grad(energy.sum(), s)
    for e, gr in zip(explicit, grads):
        torch.testing.assert_close(e, net.act(gr), rtol=0, atol=atol)
