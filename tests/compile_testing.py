"""Shared helpers of the torch.compile tests: a backend that records Dynamo's graphs, and compiled training checked
against eager training."""
import copy

import pytest
import torch
import torch.nn.functional as F

from visionattn.ops.checks import _interpreting


def skip_unless_interpreting() -> None:
    """Skip a test that runs a Triton custom op on CPU tensors unless the interpreter is on."""
    if not _interpreting():
        pytest.skip('runs the Triton custom op on CPU tensors: needs TRITON_INTERPRET=1')


class GraphRecorder:
    """A torch.compile backend that keeps the graphs Dynamo hands it and compiles them with ``inner``."""

    def __init__(self, inner='aot_eager'):
        from torch._dynamo.backends.registry import lookup_backend
        self.inner = lookup_backend(inner)
        self.graphs = []

    def __call__(self, gm, example_inputs):
        self.graphs.append(gm)
        return self.inner(gm, example_inputs)

    def targets(self):
        return [str(node.target) for gm in self.graphs for node in gm.graph.nodes if node.op == 'call_function']


def check_compiled_training(model, compiled, x, target, steps=2, tol=1e-4, autocast=None):
    """``steps`` AdamW steps of ``compiled`` (``model`` compiled) against a copy of ``model`` trained eagerly.

    Each step's loss and gradient (all parameters as one vector, error relative to its norm) must agree within
    ``tol``, and so must the parameters at the end.
    """
    eager = copy.deepcopy(model)
    optimizers = [torch.optim.AdamW(net.parameters(), lr=1e-3) for net in (model, eager)]
    model.train()
    eager.train()
    for _ in range(steps):
        losses, grads = [], []
        for net, params, optimizer in ((compiled, model, optimizers[0]), (eager, eager, optimizers[1])):
            with autocast() if autocast is not None else torch.autocast('cpu', enabled=False):
                loss = F.cross_entropy(net(x).float(), target)
            loss.backward()
            grads.append(torch.cat([p.grad.float().flatten() for p in params.parameters()]))
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.detach())
        assert torch.isfinite(losses[0]) and torch.isfinite(grads[0]).all()
        torch.testing.assert_close(losses[0], losses[1], rtol=tol, atol=tol)
        assert (grads[0] - grads[1]).norm() <= tol * grads[1].norm()
    for (name, p), p_eager in zip(model.named_parameters(), eager.parameters()):
        torch.testing.assert_close(p, p_eager, rtol=tol, atol=tol, msg=lambda m: f'{name}: {m}')
