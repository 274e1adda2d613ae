"""LayerNorm over the last axis: ``torch.nn.functional.layer_norm`` (the reference, and the path on the CPU, under
``torch.compile``, ``torch.fx`` and TorchScript) or Triton kernels on CUDA tensors (``triton/layer_norm.py``).

The automatic choice takes the Triton kernel for large no-grad calls only (``AUTO_MIN_ROWS``); naming the 'triton'
backend (or ``VISIONATTN_BACKEND=triton``) takes it for every call it covers, with gradients too. The kernel reads
the input, weight and bias in their own dtypes, computes in float32 and writes the dtype PyTorch's op would return:
under CUDA autocast a bfloat16 input (BiFormer's residual stream) gives a float32 output, as autocast's upcast of
layer_norm does, without PyTorch's separate cast of the input. Same results as the reference up to float32 rounding
(statistics in float32, biased variance); the backward is PyTorch's own kernel on the forward's statistics (in
float32 where the dtypes are mixed). Under ``torch.compile`` the reference is used on purpose: Inductor
fuses it with its neighbours, which an opaque kernel would prevent.
"""
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F

from .checks import choose_backend, env_backend, env_signature, first_order_only

__all__ = ['layer_norm']

_MAX_FEATURES = 4096  # triton/layer_norm.py's MAX_TRITON_FEATURES (not imported: triton may be absent)

# The automatic choice (no backend named, VISIONATTN_BACKEND unset) takes the Triton kernel only where it pays on a
# CUDA GPU (H100, torch 2.11; docs/benchmarks/speed_h100.md, fourth session):
# - no gradient needed, and at least AUTO_MIN_ROWS rows: a call costs about 54 us of host time against PyTorch's 13,
#   and PyTorch's forward is slow only on many rows (64 x 56^2 x 64: 300 us against 40; 64 x 14^2 x 256: 28 against
#   15). Below that (batch-8 inference, the late stages) PyTorch's op is as fast and cheaper to call.
# - a gradient needed: never. The forward saves device time (nat_tiny's batch-64 training step: 1.9 ms of 47), but
#   the autograd.Function costs 184-214 us of host time per forward+backward against PyTorch's 94-140, and the
#   models' training steps are host-bound in their small late stages: nat_tiny trained at 1282 img/s with it and at
#   1696 with PyTorch's op (same run).
AUTO_MIN_ROWS = 1 << 15


def layer_norm(x: torch.Tensor, normalized_shape: Union[int, Sequence[int]], weight: Optional[torch.Tensor] = None,
               bias: Optional[torch.Tensor] = None, eps: float = 1e-5, backend: Optional[str] = None) -> torch.Tensor:
    """``torch.nn.functional.layer_norm`` with the same arguments, on Triton kernels where they apply.

    Args:
        x: [..., N].
        normalized_shape: N (an int or a one-element sequence; longer shapes take the reference).
        weight: [N] scale, or None.
        bias: [N] shift, or None.
        eps: Added to the variance.
        backend: None (automatic: Triton for no-grad CUDA calls of at least ``AUTO_MIN_ROWS`` rows and up to 4096
            features), 'reference' or 'triton' (every call it covers, gradients too).
    """
    normalized_shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
    if isinstance(x, torch.fx.Proxy) or torch.compiler.is_compiling():
        return F.layer_norm(x, normalized_shape, weight, bias, eps)
    if x.device.type == 'meta' or x.numel() == 0:  # shape propagation (FLOP counts), or nothing to normalise
        return F.layer_norm(x, normalized_shape, weight, bias, eps)
    grad = torch.is_grad_enabled() and (x.requires_grad or (weight is not None and weight.requires_grad)
                                        or (bias is not None and bias.requires_grad))
    # The automatic choice's cheap exits first: training calls and small calls never build a key.
    if backend is None and (grad or x.dim() == 0 or x.numel() < AUTO_MIN_ROWS * x.shape[-1]) \
            and env_backend() is None:
        return F.layer_norm(x, normalized_shape, weight, bias, eps)
    autocast = torch.is_autocast_enabled(x.device.type) and torch.get_autocast_dtype(x.device.type)
    key = (x.shape[-1:], normalized_shape, x.dtype, x.device, weight is None or (weight.shape, weight.dtype),
           bias is None or (bias.shape, bias.dtype), autocast, backend, env_signature()) if x.dim() else None
    choice = _CHOICES.get(key) if key is not None else None
    if choice is None:
        choice = _choose(x, normalized_shape, weight, bias, eps, backend)
        if key is not None:
            if len(_CHOICES) >= 1024:
                _CHOICES.clear()
            _CHOICES[key] = choice
    chosen, dtypes = choice
    if chosen == 'reference':
        return F.layer_norm(x, normalized_shape, weight, bias, eps)
    # the kernels index weight and bias unstrided: a strided or expanded one is copied (differentiable)
    weight = weight if weight is None or weight.is_contiguous() else weight.contiguous()
    bias = bias if bias is None or bias.is_contiguous() else bias.contiguous()
    if grad:
        return _LayerNormFn.apply(x, weight, bias, float(eps), dtypes)
    from .triton.layer_norm import layer_norm_fwd
    y, _, _ = layer_norm_fwd(_rows(x), weight, bias, eps, dtypes[1], False)
    return y.view(x.shape)


# (backend, dtype of PyTorch's saved statistics) for each call signature (shapes, dtypes, devices, autocast state,
# the backend argument, the environment): a model's repeated calls skip the checks.
_CHOICES = {}


def _choose(x, normalized_shape, weight, bias, eps, backend) -> tuple:
    n = normalized_shape[-1] if len(normalized_shape) == 1 else -1
    fits = x.dim() >= 1 and x.shape[-1] == n and all(t is None or t.shape == (n,) for t in (weight, bias))
    if not fits:  # what the kernel does not cover (and wrong shapes): PyTorch's own op, and its own error
        if backend == 'triton':
            raise ValueError(f'layer_norm (triton): normalizes the last axis only, with [N] weight and bias; got '
                             f'input {tuple(x.shape)}, normalized_shape {normalized_shape}, weight '
                             f'{None if weight is None else tuple(weight.shape)}, bias '
                             f'{None if bias is None else tuple(bias.shape)}')
        return 'reference', None
    # PyTorch's own op on an empty input: its checks (a dtype combination it refuses raises here, as on the reference
    # path), the output dtype it gives (autocast's policy for layer_norm differs by device: CUDA runs it in float32,
    # the CPU in the input's dtype) and the dtype of the statistics its backward reads.
    with torch.no_grad():
        empty = x.new_empty((0, n))
        y = F.layer_norm(empty, (n,), weight, bias, eps)
        same = y.dtype == x.dtype and all(t is None or t.dtype == x.dtype for t in (weight, bias))
        if same:
            with torch.autocast(x.device.type, enabled=False):
                stats_dtype = torch.ops.aten.native_layer_norm(empty, [n], weight, bias, eps)[1].dtype
        else:  # mixed dtypes (autocast's upcast among them): the backward runs in float32 on float32 statistics
            stats_dtype = torch.float32
    chosen = choose_backend('layer_norm', backend, (x, weight, bias),
                            [(n <= _MAX_FEATURES, '' if n <= _MAX_FEATURES else f'{n} features > {_MAX_FEATURES}')])
    return chosen, (stats_dtype, y.dtype)


def _rows(x: torch.Tensor) -> torch.Tensor:
    """``x`` as [rows, N] with a unit-stride last axis (a view when its layout allows)."""
    rows = x.reshape(-1, x.shape[-1])
    return rows if rows.stride(-1) == 1 or rows.shape[-1] == 1 else rows.contiguous()


class _LayerNormFn(torch.autograd.Function):
    """The Triton forward; the backward is PyTorch's kernel (``native_layer_norm_backward``) on the forward's
    statistics, as PyTorch's own LayerNorm backward runs it; with mixed dtypes it runs in float32 (what autocast's
    upcast of the input and PyTorch's backward of that cast give) and each gradient takes its input's dtype."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps, dtypes):
        from .triton.layer_norm import layer_norm_fwd
        stats_dtype, out_dtype = dtypes
        rows = _rows(x)
        y, mean, rstd = layer_norm_fwd(rows, weight, bias, eps, out_dtype, True)
        mean, rstd = mean.to(stats_dtype).unsqueeze(1), rstd.to(stats_dtype).unsqueeze(1)  # [rows, 1], as PyTorch's
        ctx.save_for_backward(rows, weight, bias, mean, rstd)
        ctx.shape = x.shape
        return y.view(x.shape)

    @staticmethod
    @first_order_only('layer_norm')
    def backward(ctx, dy):
        rows, weight, bias, mean, rstd = ctx.saved_tensors
        needs = ctx.needs_input_grad
        dy = _rows(dy)
        tensors = (rows, dy, weight, bias)
        mixed = any(t is not None and t.dtype != rows.dtype for t in tensors)
        if mixed:
            rows, dy, weight_c, bias_c = (None if t is None else t.float() for t in tensors)
        else:
            weight_c, bias_c = weight, bias
        dx, dw, db = torch.ops.aten.native_layer_norm_backward(
            dy, rows, [rows.shape[-1]], mean, rstd, weight_c, bias_c, [needs[0], needs[1], needs[2]])
        if mixed:
            dx = None if dx is None else dx.to(ctx.saved_tensors[0].dtype)
            dw = None if dw is None else dw.to(weight.dtype)
            db = None if db is None else db.to(bias.dtype)
        return None if dx is None else dx.view(ctx.shape), dw, db, None, None
