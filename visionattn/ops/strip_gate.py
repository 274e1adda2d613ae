"""The strip gate of ELA (Xu & Wan, arXiv:2403.01123): ``x * g_h * g_w``, each gate computed from a strip mean of the
map (over W for ``g_h``, over H for ``g_w``) by a small per-image network the caller gives.

Reference: ``reference/strip_gate.py`` (PyTorch ops; the CPU path and the path under ``torch.compile``, ``torch.fx``
and TorchScript). Triton (``triton/strip_gate.py``): one pass over the map for both strip means and one for the
product; in training the backward pass is one pass for both gate gradients and one for the input gradient, and only
the input map is saved (the PyTorch ops save a full-size product and take five to eight passes; issue 27). The gate
network itself (ELA's Conv1d, GroupNorm and sigmoid on [B, C, L] strips) stays PyTorch modules under autograd.
"""
from typing import Callable, Optional, Sequence

import torch

from .checks import choose_backend, first_order_only
from .reference.strip_gate import strip_gate_ref

__all__ = ['strip_gate']

_MAX_WIDTH = 2048  # triton/strip_gate.py's MAX_TRITON_WIDTH (not imported: triton may be absent)

GateFn = Callable[[torch.Tensor], torch.Tensor]


def strip_gate(x: torch.Tensor, gate_fn: GateFn, params: Sequence[torch.Tensor] = (),
               backend: Optional[str] = None) -> torch.Tensor:
    """``x * gate_fn(x.mean(3))[..., None] * gate_fn(x.mean(2))[..., None, :]``, in ``x``'s dtype.

    Args:
        x: [B, C, H, W] map, any strides (channels-last too).
        gate_fn: The gate network: [N, C, L] strips to [N, C, L] gates, each image on its own (the Triton path may
            stack both axes' strips on the batch axis when H == W, and calls it once then).
        params: Every tensor ``gate_fn`` uses that may need a gradient (its parameters): the Triton backward returns
            their gradients, and refuses, naming it, a tensor that needs one and is missing here (its gradient would
            be lost).
        backend: None (automatic: Triton on CUDA), 'reference' or 'triton'.
    """
    if isinstance(x, torch.fx.Proxy) or torch.compiler.is_compiling():
        return strip_gate_ref(x, gate_fn)
    if x.dim() != 4:
        raise ValueError(f'strip_gate takes a [B, C, H, W] map, got shape {tuple(x.shape)}')
    if not x.is_floating_point():
        raise TypeError(f'strip_gate takes a floating-point map, got {x.dtype}')
    if x.device.type == 'meta' or x.numel() == 0:
        return strip_gate_ref(x, gate_fn)
    width = x.shape[3]
    chosen = choose_backend('strip_gate', backend, (x,), [(width <= _MAX_WIDTH, f'width {width} > {_MAX_WIDTH}')])
    if chosen == 'reference':
        return strip_gate_ref(x, gate_fn)
    params = tuple(params)
    if torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in params)):
        return _StripGateFn.apply(x, gate_fn, *params)
    with torch.no_grad():
        gate_h, gate_w = _gates(x, gate_fn, grad=False)[2:]
        return _apply(x, gate_h, gate_w)


def _gates(x: torch.Tensor, gate_fn: GateFn, grad: bool):
    """(strip leaves, gate outputs, gate_h view, gate_w view). Both axes' strips share one [2B, C, L] tensor (one gate
    call) when H == W. Strips are contiguous, as the reference's means are: cuDNN picks its conv algorithm by layout
    and batch, and with transposed strips one GPU run gave the fp32 grouped conv (ELA-S/L) an error of TF32's size
    where the reference had none (PyTorch allows TF32 for float32 convolutions by default)."""
    from .triton.strip_gate import strip_sums
    batch, channels, height, width = x.shape
    if height == width:
        strips = [x.new_empty((2 * batch, channels, height))]
        rows, cols = strips[0][:batch], strips[0][batch:]
    else:
        strips = [x.new_empty((batch, channels, length)) for length in (height, width)]
        rows, cols = strips
    strip_sums(x, rows, cols)
    if grad:
        strips = [s.detach().requires_grad_() for s in strips]  # leaves of the gate network's own graph
    with torch.set_grad_enabled(grad):
        gates = [gate_fn(s) for s in strips]
    for strip, gate in zip(strips, gates):
        if gate.shape != strip.shape:
            raise ValueError(f'strip_gate: gate_fn must keep the strip shape {tuple(strip.shape)}, '
                             f'got {tuple(gate.shape)}')
    gate_h, gate_w = (gates[0][:batch], gates[0][batch:]) if len(gates) == 1 else gates
    return strips, gates, gate_h, gate_w


def _apply(x: torch.Tensor, gate_h: torch.Tensor, gate_w: torch.Tensor) -> torch.Tensor:
    from .triton.strip_gate import strip_apply
    out = torch.empty_like(x)  # x's strides where x is dense (channels-last stays channels-last)
    strip_apply(x, gate_h, gate_w, out)
    return out


def _check_leaves(gates, strips, params) -> None:
    """Every tensor the gate network's graph needs a gradient for is a strip or one of ``params``; else its gradient
    would be lost without a word (the Function returns gradients for its inputs only)."""
    known = {id(t) for t in (*strips, *params)}
    seen, stack, missing = set(), [g.grad_fn for g in gates], []
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        variable = getattr(node, 'variable', None)  # an AccumulateGrad node: a leaf that requires grad
        if variable is not None and id(variable) not in known:
            missing.append(tuple(variable.shape))
        stack.extend(next_node for next_node, _ in node.next_functions)
    if missing:
        raise ValueError(f'strip_gate: gate_fn uses {len(missing)} tensor(s) that need a gradient but are not in '
                         f'params (shapes {missing}); pass them in params, or their gradients would be lost')


class _StripGateFn(torch.autograd.Function):
    """Forward: strip means (kernel), the gate network under autograd on detached strips (its small graph is kept),
    the product (kernel). Backward: both gate gradients (kernel), the gate network's backward (autograd: the strips'
    and the parameters' gradients), the input gradient (kernel). Saved: x and the strip-sized graph."""

    @staticmethod
    def forward(ctx, x, gate_fn, *params):
        strips, gates, gate_h, gate_w = _gates(x, gate_fn, grad=True)
        _check_leaves(gates, strips, params)
        ctx.save_for_backward(x)
        ctx.graph = (strips, gates, gate_h, gate_w, params)
        return _apply(x, gate_h, gate_w)

    @staticmethod
    @first_order_only('strip_gate')
    def backward(ctx, dy):
        from .triton.strip_gate import strip_apply, strip_sums
        (x,) = ctx.saved_tensors  # autograd's own error on a second backward through a freed graph
        if ctx.graph is None:  # a second backward with retain_graph=True: the gate network's graph is gone
            raise RuntimeError("strip_gate's Triton backward runs once per forward (it frees the gate network's "
                               'graph after the first): for a second backward through the same output, run the op '
                               "with backend='reference' (or VISIONATTN_BACKEND=reference)")
        strips, gates, gate_h, gate_w, params = ctx.graph
        batch, channels, height, width = x.shape
        d_gates = [torch.empty_like(g) for g in gates]
        d_h, d_w = (d_gates[0][:batch], d_gates[0][batch:]) if len(d_gates) == 1 else d_gates
        strip_sums(x, d_h, d_w, dy=dy, gate_h=gate_h, gate_w=gate_w)
        wanted = [p for p, need in zip(params, ctx.needs_input_grad[2:]) if need]
        found = torch.autograd.grad(gates, strips + wanted, d_gates, allow_unused=True)
        d_strips, d_wanted = found[:len(strips)], iter(found[len(strips):])
        d_params = [next(d_wanted) if need else None for need in ctx.needs_input_grad[2:]]
        ctx.graph = None
        dx = None
        if ctx.needs_input_grad[0]:
            d_rows, d_cols = (d_strips[0][:batch], d_strips[0][batch:]) if len(d_strips) == 1 else d_strips
            dx = torch.empty_like(x)
            # the means spread their gradient evenly over the axis they pooled
            strip_apply(dy, gate_h, gate_w, dx, d_rows, d_cols, 1.0 / width, 1.0 / height)
        return (dx, None, *d_params)
