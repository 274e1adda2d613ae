"""NATTEN's functional APIs on visionattn's neighborhood-attention op: ``natten.functional`` of the drop-in.

NATTEN (github.com/SHI-Labs/NATTEN, MIT; Hassani et al.) has had two functional APIs. Both are here, written anew
against NATTEN's signatures (0.14.6-0.17.4 for the two-step ops, 0.17.5 and 0.20/0.21 for the fused ones):

- **Fused**, heads-last tensors [batch, *spatial, heads, head_dim]: here ``na1d/na2d/na3d(query, key, value,
  kernel_size, dilation=1, is_causal=False, rpb=None, scale=None, additional_keys=None, additional_values=None,
  xformers_kwargs=None)``, the order of NATTEN 0.17.5's ``natten.functional`` (the version the drop-in reports);
  ``na1d_v020``... are NATTEN >= 0.20's ``natten.na1d/na2d/na3d(query, key, value, kernel_size, stride=1,
  dilation=1, is_causal=False, scale=None, additional_keys=None, additional_values=None)``, which the drop-in
  exports at its top level (0.17.5 had no callable there). Each takes the other's arguments by keyword. They
  call :func:`visionattn.ops.neighborhood_attention` (Triton on CUDA, the PyTorch reference elsewhere). With
  ``additional_keys``/``additional_values`` (extra tokens every query attends to, in the same softmax) or
  ``return_lse=True`` they run an exact gather path instead. Keys and values may have fewer heads than the
  queries (GQA/MQA, repeated as NATTEN repeats them). 0.20's ops take ``rpb=`` as a keyword (0.20 dropped it).
  Under autocast they compute, forward and backward, in their inputs' dtype, as NATTEN's autograd functions do.
- **Two-step** (NATTEN <= 0.17, unfused), heads-first tensors [batch, heads, *spatial, head_dim]:
  ``na{1,2,3}d_qk`` / ``na{1,2,3}d_av`` (0.17), ``natten{1,2,3}dqkrpb``, ``natten{1,2,3}dqk``,
  ``natten{1,2,3}dav`` (0.14.6-0.17.4) and 0.15's ``na{1,2,3}d_qk_with_bias``. QK returns the logits [batch,
  heads, *spatial, prod(kernel_size)]: ``q . k`` plus the rpb, *not* scaled (the caller scales q first, as NATTEN's
  modules did), and -inf in the causal slots past the query. Slot ``i0 * k1 * k2 + i1 * k2 + i2`` holds the key
  ``i0, i1, i2`` dilation steps from the start of the query's window on each axis: row-major over the window,
  NATTEN's layout. AV takes the weights (after the caller's softmax; cast to the value's dtype, as NATTEN casts
  them) and returns [batch, heads, *spatial, head_dim_v]. Both gather each query's
  neighbours through visionattn's neighbour table, so they are exact and differentiable on any device.
"""
import contextlib
import logging
from typing import Optional, Sequence, Tuple, Union

import torch

from ...ops.checks import BACKENDS, NotSupportedError, choose_backend, first_order_only
from ...ops.neighborhood import na_triton_checks, neighborhood_attention, normalize_na_args
from ...ops.reference import NeighborTable, neighbor_table

# NATTEN 0.15's natten.functional also held the capability queries and dispatcher switches (0.17's docs still import
# has_gemm from here); they are the drop-in's stand-ins of natten.context.
from .context import (
    disable_gemm_na,
    disable_tf32,
    disable_tiled_na,
    enable_gemm_na,
    enable_tf32,
    enable_tiled_na,
    get_device_cc,
    has_bfloat,
    has_cuda,
    has_fp32_gemm,
    has_fp64_gemm,
    has_gemm,
    has_half,
    has_tf32_gemm,
)

__all__ = [
    'na1d', 'na2d', 'na3d', 'na1d_qk', 'na1d_av', 'na2d_qk', 'na2d_av', 'na3d_qk', 'na3d_av',
    'na1d_qk_with_bias', 'na2d_qk_with_bias', 'na3d_qk_with_bias', 'natten1dqkrpb', 'natten1dqk', 'natten1dav',
    'natten2dqkrpb', 'natten2dqk', 'natten2dav', 'natten3dqkrpb', 'natten3dqk', 'natten3dav',
    'get_device_cc', 'has_cuda', 'has_half', 'has_bfloat', 'has_gemm', 'has_tf32_gemm', 'has_fp32_gemm',
    'has_fp64_gemm', 'enable_tf32', 'disable_tf32', 'enable_tiled_na', 'disable_tiled_na', 'enable_gemm_na',
    'disable_gemm_na',
]

_logger = logging.getLogger('visionattn.compat.natten')

IntOrTuple = Union[int, Sequence[int]]
BoolOrTuple = Union[bool, Sequence[bool]]

# NATTEN's backend names. They are accepted, and visionattn chooses its own backend: the semantics are the same.
NATTEN_BACKENDS = ('cutlass-fna', 'hopper-fna', 'blackwell-fna', 'flex-fna')
# Arguments that only tune NATTEN's own kernels (>= 0.20; ``xformers_kwargs`` is 0.17's): accepted and ignored.
TUNING_ARGUMENTS = frozenset({
    'attention_kwargs', 'q_tile_shape', 'kv_tile_shape', 'backward_q_tile_shape', 'backward_kv_tile_shape',
    'backward_kv_splits', 'backward_use_pt_reduction', 'run_persistent_kernel', 'kernel_schedule', 'torch_compile',
    'try_fuse_additional_kv', 'xformers_kwargs',
})

_CHUNK_BYTES = 256 * 2 ** 20  # gathered key (or value) rows per chunk of queries, to bound peak memory
_AXES = {1: 'length', 2: 'height, width', 3: 'depth, height, width'}


# ----------------------------------------------------------------------------------------------------------------
# Gathered neighbourhoods, [batch, heads, tokens, ...] layout: the two-step ops and the fused ops' extra-keys path.

def _chunks(tokens: int, bytes_per_query: int):
    step = max(1, min(tokens, _CHUNK_BYTES // max(bytes_per_query, 1)))
    return [(lo, min(tokens, lo + step)) for lo in range(0, tokens, step)]


def _autocast_off(t: torch.Tensor):
    """NATTEN's ops are extension kernels that autocast does not reach: they compute in their inputs' dtype (float32
    q and k give float32 logits under autocast). The einsums and matmuls here would be autocast to float16/bfloat16,
    so autocast is off around them."""
    if _autocast_enabled(t):
        return torch.autocast(t.device.type, enabled=False)
    return contextlib.nullcontext()


def _autocast_enabled(t: torch.Tensor) -> bool:
    device = t.device.type
    return torch.amp.is_autocast_available(device) and torch.is_autocast_enabled(device)


class _AutocastOffFn(torch.autograd.Function):
    """``fn(*inputs)`` differentiated with autocast off: the forward builds ``fn``'s own graph on detached inputs, and
    the backward differentiates that graph with autocast off, wherever ``backward()`` is called (inside an autocast
    region, autocast would otherwise reach the backward of the einsums and matmuls)."""

    @staticmethod
    def forward(ctx, fn, device: str, *inputs):
        leaves = [t.detach().requires_grad_(t.requires_grad) if isinstance(t, torch.Tensor) else t for t in inputs]
        with torch.enable_grad(), torch.autocast(device, enabled=False):
            outputs = fn(*leaves)
        ctx.single = isinstance(outputs, torch.Tensor)
        outputs = (outputs,) if ctx.single else tuple(outputs)
        ctx.device, ctx.leaves, ctx.outputs = device, leaves, outputs
        # saved for first_order_only, which ties the gradients to them (the graph above is on detached copies)
        ctx.save_for_backward(*(t for t in inputs if isinstance(t, torch.Tensor)))
        detached = tuple(out.detach() for out in outputs)
        return detached[0] if ctx.single else detached

    @staticmethod
    @first_order_only('natten under autocast', hint='the call outside torch.autocast')
    def backward(ctx, *grads):
        leaves, outputs = ctx.leaves, ctx.outputs  # freed with ctx, as the outer graph is (retain_graph works)
        wanted = [i for i, t in enumerate(leaves) if isinstance(t, torch.Tensor) and t.requires_grad]
        pairs = [(out, grad) for out, grad in zip(outputs, grads) if grad is not None and out.requires_grad]
        result = [None] * len(leaves)
        if wanted and pairs:
            with torch.autocast(ctx.device, enabled=False):
                got = torch.autograd.grad([out for out, _ in pairs], [leaves[i] for i in wanted],
                                          [grad for _, grad in pairs], retain_graph=True, allow_unused=True)
            for i, grad in zip(wanted, got):
                result[i] = grad
        return (None, None, *result)


def _in_inputs_dtype(fn, *inputs):
    """``fn(*inputs)`` as NATTEN's autograd functions run under autocast (``custom_fwd``/``custom_bwd`` around
    extension kernels): forward and backward in the inputs' dtype. Without autocast, ``fn`` is called as it is; under
    ``torch.compile`` (which traces the backward itself) only the forward has autocast off."""
    first = next(t for t in inputs if isinstance(t, torch.Tensor))
    if not _autocast_enabled(first):
        return fn(*inputs)
    device = first.device.type
    needs_grad = torch.is_grad_enabled() and any(isinstance(t, torch.Tensor) and t.requires_grad for t in inputs)
    if not needs_grad or torch.compiler.is_compiling():
        with torch.autocast(device, enabled=False):
            return fn(*inputs)
    return _AutocastOffFn.apply(fn, device, *inputs)


def _neighbor_logits(q: torch.Tensor, k: torch.Tensor, table: NeighborTable,
                     rpb: Optional[torch.Tensor]) -> torch.Tensor:
    """q, k [B, H, N, D] -> logits [B, H, N, K] (``q . k`` + rpb, -inf in masked slots), in q's dtype."""
    batch, heads, tokens, dim = q.shape
    n_keys = table.index.shape[1]
    parts = []
    for lo, hi in _chunks(tokens, batch * heads * n_keys * dim * k.element_size()):
        keys = k.index_select(2, table.index[lo:hi].flatten()).view(batch, heads, hi - lo, n_keys, dim)
        with _autocast_off(q):
            parts.append(torch.einsum('bhnd,bhnkd->bhnk', q[:, :, lo:hi], keys.to(q.dtype)))
    logits = parts[0] if len(parts) == 1 else torch.cat(parts, dim=2)
    if rpb is not None:
        logits = logits + rpb.reshape(heads, -1)[:, table.bias_index].to(logits.dtype)
    if table.valid is not None:
        logits = logits.masked_fill(~table.valid, float('-inf'))
    return logits


def _neighbor_sum(attn: torch.Tensor, v: torch.Tensor, table: NeighborTable) -> torch.Tensor:
    """attn [B, H, N, K] (weights of masked slots are ignored; cast to v's dtype, as NATTEN's AV casts them),
    v [B, H, N, Dv] -> [B, H, N, Dv]."""
    batch, heads, tokens, dim_v = v.shape
    n_keys = table.index.shape[1]
    attn = attn.to(v.dtype)
    if table.valid is not None:
        attn = attn.masked_fill(~table.valid, 0)
    parts = []
    for lo, hi in _chunks(tokens, batch * heads * n_keys * dim_v * v.element_size()):
        vals = v.index_select(2, table.index[lo:hi].flatten()).view(batch, heads, hi - lo, n_keys, dim_v)
        with _autocast_off(v):
            parts.append(torch.einsum('bhnk,bhnkd->bhnd', attn[:, :, lo:hi], vals))
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=2)


def _where(name: str) -> str:
    """How errors name a call: ``natten.na2d`` for the fused ops, ``natten.functional.na2d_qk`` for the others."""
    return f'natten.{name}' if name in ('na1d', 'na2d', 'na3d') else f'natten.functional.{name}'


def _named_error(name: str, error: ValueError) -> ValueError:
    """The op's ValueError named after the NATTEN call, of the same class (:class:`NotSupportedError`, which NATTEN
    raises as NotImplementedError, stays one)."""
    message = f'{_where(name)}: {str(error).removeprefix("neighborhood_attention: ")}'
    return NotSupportedError(message) if isinstance(error, NotSupportedError) else ValueError(message)


def _normalized(name: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kernel_size, dilation, stride,
                is_causal, rpb, scale) -> Tuple[tuple, tuple, tuple, tuple, float]:
    """:func:`normalize_na_args` with NATTEN's ``None`` defaults, its errors named after the NATTEN call."""
    try:
        return normalize_na_args(q, k, v, kernel_size, 1 if dilation is None else dilation,
                                 1 if stride is None else stride, False if is_causal is None else is_causal, rpb,
                                 scale)
    except ValueError as error:
        raise _named_error(name, error) from None


def _check_rank(name: str, n_dim: int, heads_first: bool, **tensors: torch.Tensor) -> None:
    layout = (f'[batch, heads, {_AXES[n_dim]}, head_dim]' if heads_first
              else f'[batch, {_AXES[n_dim]}, heads, head_dim]')
    for arg, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            raise ValueError(f'{_where(name)}: {arg} must be a tensor {layout}, got {type(t).__name__}')
        if t.is_nested:
            fused = f'natten.na{n_dim}d'
            raise NotImplementedError(
                f'{_where(name)}: {arg} is a nested tensor, which visionattn does not support; run '
                f'{fused} (fused, heads-last) on each sample instead')
        if t.dim() != n_dim + 3:
            raise ValueError(f'{_where(name)}: {arg} must be {n_dim + 3}-D {layout}, got shape '
                             f'{tuple(t.shape)}')


# ----------------------------------------------------------------------------------------------------------------
# Fused ops (NATTEN >= 0.20; 0.17's fused ops with rpb=).

def _backend(name: str, backend: Optional[str]) -> Optional[str]:
    if backend is None or backend in BACKENDS:
        return backend
    if backend in NATTEN_BACKENDS:
        _logger.debug('natten.%s: backend=%r is NATTEN\'s; visionattn chooses its own backend', name, backend)
        return None
    # NATTEN >= 0.20 raises NotImplementedError('Unrecognized NATTEN backend')
    raise NotSupportedError(f'{_where(name)}: backend={backend!r} is unknown; use None (automatic), one of '
                            f'NATTEN\'s {", ".join(NATTEN_BACKENDS)} (accepted, visionattn then chooses) or one of '
                            f'visionattn\'s {", ".join(BACKENDS)}')


def _kv_heads(name: str, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
              additional_keys: Optional[torch.Tensor], additional_values: Optional[torch.Tensor]):
    """Checks the additional tokens and repeats key/value heads for GQA/MQA (``repeat_interleave``, as NATTEN)."""
    heads, heads_kv = query.shape[-2], key.shape[-2]
    if value.shape[-2] != heads_kv:
        raise ValueError(f'{_where(name)}: key and value must have the same number of heads, got {heads_kv} and '
                         f'{value.shape[-2]}')
    if heads_kv != heads and (heads_kv < 1 or heads_kv > heads or heads % heads_kv):
        raise ValueError(f'{_where(name)}: the key/value heads ({heads_kv}) must evenly divide the query heads '
                         f'({heads})')
    if (additional_keys is None) != (additional_values is None):
        raise ValueError(f'{_where(name)}: additional_keys and additional_values must both be tensors or both be None')
    if additional_keys is not None:
        for arg, t, dim in (('additional_keys', additional_keys, query.shape[-1]),
                            ('additional_values', additional_values, value.shape[-1])):
            seqlen = additional_keys.shape[1] if isinstance(additional_keys, torch.Tensor) and \
                additional_keys.dim() == 4 else -1
            want = (query.shape[0], seqlen, heads_kv, dim)
            if not isinstance(t, torch.Tensor) or t.dim() != 4 or tuple(t.shape) != want:
                got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
                raise ValueError(f'{_where(name)}: {arg} must be [batch, seqlen_kv, heads_kv, head_dim] = {want}, got '
                                 f'{got}')
            if t.dtype != query.dtype or t.device != query.device:
                raise ValueError(f'{_where(name)}: {arg} must be {query.dtype} on {query.device} as the query, got '
                                 f'{t.dtype} on {t.device}')
    if heads_kv != heads:
        # Checked before the heads are repeated, so that the message shows the shapes as given.
        for arg, t, dim in (('key', key, query.shape[-1]), ('value', value, value.shape[-1])):
            if t.shape[:-2] != query.shape[:-2] or t.shape[-1] != dim:
                raise ValueError(f'{_where(name)}: {arg} shape {tuple(t.shape)} must be [batch, *spatial, heads_kv, '
                                 f'{"head_dim" if arg == "key" else "head_dim_v"}] with the batch and spatial axes of '
                                 f'query {tuple(query.shape)}' + (' and its head_dim' if arg == 'key' else ''))
        repeat = heads // heads_kv
        key, value = (t.repeat_interleave(repeat, dim=-2) for t in (key, value))
        if additional_keys is not None:
            additional_keys, additional_values = (
                t.repeat_interleave(repeat, dim=-2) for t in (additional_keys, additional_values))
    return key, value, additional_keys, additional_values


def _gathered_attention(name: str, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, kernel_size,
                        dilation, stride, is_causal, rpb: Optional[torch.Tensor], scale: Optional[float],
                        additional_keys: Optional[torch.Tensor], additional_values: Optional[torch.Tensor]
                        ) -> Tuple[torch.Tensor, torch.Tensor]:
    """NA whose softmax also spans the additional tokens, by gathering neighbours; returns (out, lse [B, *, H])."""
    kernel, dil, strides, causal, scale = _normalized(name, query, key, value, kernel_size, dilation, stride,
                                                      is_causal, rpb, scale)
    batch, spatial, heads, dim_v = query.shape[0], tuple(query.shape[1:-2]), query.shape[-2], value.shape[-1]
    table = neighbor_table(spatial, kernel, dil, strides, causal).to(query.device)
    # As the reference op: half inputs take their logits and softmax in fp32, the products with v in their dtype.
    logit_dtype = torch.float32 if query.dtype in (torch.float16, torch.bfloat16) else query.dtype

    def heads_first(t):  # [B, *spatial, H, D] -> [B, H, N, D]
        return t.flatten(1, -3).transpose(1, 2)

    q = heads_first(query).to(logit_dtype) * scale
    v = heads_first(value)
    logits = _neighbor_logits(q, heads_first(key), table, rpb)
    if additional_keys is not None:
        with _autocast_off(q):
            extra = q @ additional_keys.transpose(1, 2).to(logit_dtype).transpose(-1, -2)  # [B, H, N, seqlen_kv]
        logits = torch.cat([logits, extra], dim=-1)
    lse = logits.logsumexp(dim=-1)
    attn = logits.softmax(dim=-1).to(v.dtype)
    n_keys = table.index.shape[1]
    out = _neighbor_sum(attn[..., :n_keys], v, table)
    if additional_values is not None:
        with _autocast_off(v):
            out = out + attn[..., n_keys:] @ additional_values.transpose(1, 2)
    out = out.transpose(1, 2).reshape(batch, *spatial, heads, dim_v).to(query.dtype)
    return out, lse.transpose(1, 2).reshape(batch, *spatial, heads).float()


def _not_017_order(name: str, dilation, is_causal) -> None:
    """Refuses NATTEN 0.17's positional order at the top-level ``natten.na{n}d`` (NATTEN >= 0.20's only; 0.17 had
    no callable there), naming it: 0.17's ``natten.functional.na{n}d`` took (kernel_size, dilation, is_causal, rpb,
    scale), 0.20's ``natten.na{n}d`` takes (kernel_size, stride, dilation, is_causal, scale). A bool where 0.20 has
    dilation, or a tensor where it has is_causal, can only be 0.17's order."""
    bools = isinstance(dilation, bool) or (
        isinstance(dilation, (tuple, list)) and len(dilation) > 0 and all(isinstance(d, bool) for d in dilation))
    if bools or isinstance(is_causal, torch.Tensor):
        causal = f'a tensor {tuple(is_causal.shape)}' if isinstance(is_causal, torch.Tensor) else repr(is_causal)
        raise ValueError(
            f"{_where(name)}: got dilation={dilation!r}, is_causal={causal}: this looks like NATTEN "
            f"0.17's fused {name}(query, key, value, kernel_size, dilation, is_causal, rpb, scale) called "
            "positionally; the drop-in takes NATTEN >= 0.20's order (kernel_size, stride, dilation, is_causal, scale): "
            f'pass dilation=, is_causal=, rpb= and scale= by keyword, or call natten.functional.{name}, which keeps '
            "0.17's order")


def _not_020_order(name: str, is_causal, rpb) -> None:
    """Refuses NATTEN >= 0.20's positional order at ``natten.functional.na{n}d``, which keeps the order of the NATTEN
    the drop-in reports (0.17.5: kernel_size, dilation, is_causal, rpb, scale). An int where 0.17 has is_causal (0.20's
    dilation), or a bool where it has rpb (0.20's is_causal), can only be 0.20's order; both were errors in 0.17.
    ``(kernel_size, x)`` is valid in both and means dilation=x, as in 0.17."""
    def ints(value):
        if isinstance(value, (tuple, list)):
            return len(value) > 0 and any(type(x) is int for x in value)
        return type(value) is int

    def bools(value):
        if isinstance(value, (tuple, list)):
            return len(value) > 0 and all(isinstance(x, bool) for x in value)
        return isinstance(value, bool)

    if ints(is_causal) or bools(rpb):
        raise ValueError(
            f'natten.functional.{name}: got is_causal={is_causal!r}, rpb={rpb!r}: this looks like NATTEN >= 0.20\'s '
            f'order {name}(query, key, value, kernel_size, stride, dilation, is_causal, scale) called positionally; '
            f"natten.functional.{name} takes the order of NATTEN 0.17.5 (the version the drop-in reports): "
            f'(kernel_size, dilation, is_causal, rpb, scale). Call natten.{name}, which takes 0.20\'s order, or pass '
            'stride=, dilation= and is_causal= by keyword')


def _runs_triton(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, rpb: Optional[torch.Tensor],
                 backend: Optional[str]) -> bool:
    """Whether the op will run its Triton kernel (whose autograd function already runs in the inputs' dtype under
    autocast). Invalid inputs answer False; the op then raises its own error."""
    try:
        return choose_backend('neighborhood_attention', backend, [query, key, value, rpb],
                              na_triton_checks(query, value)) == 'triton'
    except (ValueError, RuntimeError):
        return False


def _fused(name: str, n_dim: int, query, key, value, kernel_size, stride, dilation, is_causal, scale,
           additional_keys, additional_values, rpb, backend, return_lse, tuning, order: str):
    unknown = sorted(set(tuning) - TUNING_ARGUMENTS)
    if unknown:
        raise TypeError(f'{name}() got an unexpected keyword argument {unknown[0]!r}')
    _check_rank(name, n_dim, False, query=query, key=key, value=value)
    if order == '0.17':
        _not_020_order(name, is_causal, rpb)
    else:
        _not_017_order(name, dilation, is_causal)
    backend = _backend(name, backend)
    scale = scale or None  # NATTEN takes `scale or head_dim ** -0.5`
    key, value, additional_keys, additional_values = _kv_heads(name, query, key, value, additional_keys,
                                                               additional_values)
    dilation = 1 if dilation is None else dilation
    stride = 1 if stride is None else stride
    is_causal = False if is_causal is None else is_causal
    if additional_keys is None and not return_lse:
        def attend(q, k, v, bias):
            return neighborhood_attention(q, k, v, kernel_size, dilation, stride, is_causal, rpb=bias, scale=scale,
                                          backend=backend)

        try:
            if not _autocast_enabled(query) or _runs_triton(query, key, value, rpb, backend):
                # The Triton op ignores autocast (its backward as well); the reference path would run autocast.
                with _autocast_off(query):
                    return attend(query, key, value, rpb)
            return _in_inputs_dtype(attend, query, key, value, rpb)
        except ValueError as error:
            raise _named_error(name, error) from None

    def gathered(q, k, v, bias, extra_k, extra_v):
        return _gathered_attention(name, q, k, v, kernel_size, dilation, stride, is_causal, bias, scale, extra_k,
                                   extra_v)

    out, lse = _in_inputs_dtype(gathered, query, key, value, rpb, additional_keys, additional_values)
    return (out, lse) if return_lse else out


_FUSED_DOC = """{n}-D neighborhood attention, NATTEN >= 0.20's ``natten.na{n}d`` (heads-last).

    Args:
        query: [batch, {axes}, heads, head_dim].
        key: [batch, {axes}, heads_kv, head_dim]; heads_kv divides heads (GQA/MQA).
        value: [batch, {axes}, heads_kv, head_dim_v].
        kernel_size: Window size, int or one per axis (>= 2; kernel_size * dilation <= the size on every axis).
        stride: GNA stride (<= kernel_size), int or per axis.
        dilation: Dilation, int or per axis.
        is_causal: Causal masking, bool or per axis.
        scale: Multiplier of q . k; None (or 0, as NATTEN) gives head_dim ** -0.5.
        additional_keys: None, or [batch, seqlen_kv, heads_kv, head_dim]: tokens every query attends to as well,
            in the same softmax (never causal). Runs the exact gather path.
        additional_values: None, or [batch, seqlen_kv, heads_kv, head_dim_v], with ``additional_keys``.
        rpb: Relative positional bias [heads, 2k-1 per axis] (NATTEN 0.17's fused ops; not with causal axes).
        backend: None (automatic), NATTEN's backend names (accepted; visionattn chooses), 'reference' or 'triton'.
        return_lse: Also return the logsumexp [batch, {axes}, heads] (float32). Runs the exact gather path.
        **tuning: NATTEN's kernel-tuning arguments (``attention_kwargs``, ``q_tile_shape``, ``kv_tile_shape``,
            ``backward_*``, ``run_persistent_kernel``, ``kernel_schedule``, ``torch_compile``, 0.17's
            ``xformers_kwargs``): accepted and ignored.

    Returns:
        [batch, {axes}, heads, head_dim_v], and the logsumexp with ``return_lse=True``.

    Raises:
        ValueError: naming the argument that is wrong (shapes, sizes, an unknown backend).
        TypeError: for an argument NATTEN does not have either.
    """


_FUSED_017_DOC = """{n}-D neighborhood attention, NATTEN 0.17's ``natten.functional.na{n}d`` (heads-last).

    The positional order is 0.17.5's, the version the drop-in reports: (kernel_size, dilation, is_causal, rpb,
    scale, additional_keys, additional_values, xformers_kwargs). NATTEN >= 0.20 put stride fifth; its top-level
    ``natten.na{n}d`` takes that order, and here 0.20's arguments are keywords. A call that can only be 0.20's order
    (an int as is_causal, a bool as rpb) raises a ValueError saying so.

    Args:
        query: [batch, {axes}, heads, head_dim].
        key: [batch, {axes}, heads_kv, head_dim]; heads_kv divides heads (GQA/MQA).
        value: [batch, {axes}, heads_kv, head_dim_v].
        kernel_size: Window size, int or one per axis.
        dilation: Dilation, int or per axis.
        is_causal: Causal masking, bool or per axis.
        rpb: Relative positional bias [heads, 2k-1 per axis], or None (not with causal axes).
        scale: Multiplier of q . k; None (or 0, as NATTEN) gives head_dim ** -0.5.
        additional_keys: None, or [batch, seqlen_kv, heads_kv, head_dim], attended in the same softmax.
        additional_values: None, or [batch, seqlen_kv, heads_kv, head_dim_v], with ``additional_keys``.
        xformers_kwargs: Accepted and ignored (0.17 passed it to xFormers for the additional tokens).
        stride: GNA stride (NATTEN >= 0.20), keyword only.
        backend: As :func:`natten.na{n}d`, keyword only.
        return_lse: Also return the logsumexp [batch, {axes}, heads] (float32), keyword only.
        **tuning: NATTEN >= 0.20's kernel-tuning arguments, accepted and ignored.

    Returns:
        [batch, {axes}, heads, head_dim_v], and the logsumexp with ``return_lse=True``.
    """


def na1d_v020(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, kernel_size: IntOrTuple,
             stride: IntOrTuple = 1, dilation: IntOrTuple = 1, is_causal: BoolOrTuple = False,
             scale: Optional[float] = None, additional_keys: Optional[torch.Tensor] = None,
             additional_values: Optional[torch.Tensor] = None, *, rpb: Optional[torch.Tensor] = None,
             backend: Optional[str] = None, return_lse: bool = False, **tuning):
    return _fused('na1d', 1, query, key, value, kernel_size, stride, dilation, is_causal, scale, additional_keys,
                  additional_values, rpb, backend, return_lse, tuning, '0.20')


def na2d_v020(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, kernel_size: IntOrTuple,
             stride: IntOrTuple = 1, dilation: IntOrTuple = 1, is_causal: BoolOrTuple = False,
             scale: Optional[float] = None, additional_keys: Optional[torch.Tensor] = None,
             additional_values: Optional[torch.Tensor] = None, *, rpb: Optional[torch.Tensor] = None,
             backend: Optional[str] = None, return_lse: bool = False, **tuning):
    return _fused('na2d', 2, query, key, value, kernel_size, stride, dilation, is_causal, scale, additional_keys,
                  additional_values, rpb, backend, return_lse, tuning, '0.20')


def na3d_v020(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, kernel_size: IntOrTuple,
             stride: IntOrTuple = 1, dilation: IntOrTuple = 1, is_causal: BoolOrTuple = False,
             scale: Optional[float] = None, additional_keys: Optional[torch.Tensor] = None,
             additional_values: Optional[torch.Tensor] = None, *, rpb: Optional[torch.Tensor] = None,
             backend: Optional[str] = None, return_lse: bool = False, **tuning):
    return _fused('na3d', 3, query, key, value, kernel_size, stride, dilation, is_causal, scale, additional_keys,
                  additional_values, rpb, backend, return_lse, tuning, '0.20')


def na1d(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, kernel_size: IntOrTuple,
         dilation: IntOrTuple = 1, is_causal: BoolOrTuple = False, rpb: Optional[torch.Tensor] = None,
         scale: Optional[float] = None, additional_keys: Optional[torch.Tensor] = None,
         additional_values: Optional[torch.Tensor] = None, xformers_kwargs: Optional[dict] = None, *,
         stride: IntOrTuple = 1, backend: Optional[str] = None, return_lse: bool = False, **tuning):
    return _fused('na1d', 1, query, key, value, kernel_size, stride, dilation, is_causal, scale, additional_keys,
                  additional_values, rpb, backend, return_lse, tuning, '0.17')


def na2d(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, kernel_size: IntOrTuple,
         dilation: IntOrTuple = 1, is_causal: BoolOrTuple = False, rpb: Optional[torch.Tensor] = None,
         scale: Optional[float] = None, additional_keys: Optional[torch.Tensor] = None,
         additional_values: Optional[torch.Tensor] = None, xformers_kwargs: Optional[dict] = None, *,
         stride: IntOrTuple = 1, backend: Optional[str] = None, return_lse: bool = False, **tuning):
    return _fused('na2d', 2, query, key, value, kernel_size, stride, dilation, is_causal, scale, additional_keys,
                  additional_values, rpb, backend, return_lse, tuning, '0.17')


def na3d(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, kernel_size: IntOrTuple,
         dilation: IntOrTuple = 1, is_causal: BoolOrTuple = False, rpb: Optional[torch.Tensor] = None,
         scale: Optional[float] = None, additional_keys: Optional[torch.Tensor] = None,
         additional_values: Optional[torch.Tensor] = None, xformers_kwargs: Optional[dict] = None, *,
         stride: IntOrTuple = 1, backend: Optional[str] = None, return_lse: bool = False, **tuning):
    return _fused('na3d', 3, query, key, value, kernel_size, stride, dilation, is_causal, scale, additional_keys,
                  additional_values, rpb, backend, return_lse, tuning, '0.17')


for _fn, _n in ((na1d_v020, 1), (na2d_v020, 2), (na3d_v020, 3)):
    _fn.__doc__ = _FUSED_DOC.format(n=_n, axes=_AXES[_n])
    _fn.__name__ = _fn.__qualname__ = f'na{_n}d'  # natten.na{n}d, as NATTEN >= 0.20 names it
for _fn, _n in ((na1d, 1), (na2d, 2), (na3d, 3)):
    _fn.__doc__ = _FUSED_017_DOC.format(n=_n, axes=_AXES[_n])


# ----------------------------------------------------------------------------------------------------------------
# Two-step ops (NATTEN <= 0.17, unfused; heads-first).

def _two_step_problem(name: str, n_dim: int, ref: torch.Tensor, kernel_size, dilation, is_causal,
                      rpb: Optional[torch.Tensor]) -> NeighborTable:
    heads_last = ref.movedim(1, -2)
    kernel, dil, strides, causal, _ = _normalized(name, heads_last, heads_last, heads_last, kernel_size, dilation,
                                                  1, is_causal, rpb, None)
    return neighbor_table(tuple(ref.shape[2:2 + n_dim]), kernel, dil, strides, causal).to(ref.device)


def _not_a_tensor(name: str, n_dim: int, arg: str, value) -> None:
    """Refuses a non-tensor ``additional_keys``/``additional_values``: an int there is NATTEN 0.15's 3-D order."""
    if value is None or isinstance(value, torch.Tensor):
        return
    hint = ''
    if n_dim == 3 and isinstance(value, int):
        op = name.rsplit('_', 1)[-1]
        hint = (f" (NATTEN 0.15's na3d_{op} took kernel_size_d, kernel_size, dilation_d, dilation; this is 0.17's "
                f'na3d_{op}: pass kernel_size=(kernel_size_d, kernel_size, kernel_size) and dilation=(dilation_d, '
                f'dilation, dilation), or call natten3d{op}(...), which keeps 0.15\'s order)')
    raise ValueError(f'{_where(name)}: {arg} must be a tensor or None, got {value!r}{hint}')


def _qk(name: str, n_dim: int, query, key, kernel_size, dilation, is_causal, rpb, additional_keys) -> torch.Tensor:
    _check_rank(name, n_dim, True, query=query, key=key)
    _not_a_tensor(name, n_dim, 'additional_keys', additional_keys)
    if key.shape != query.shape or key.dtype != query.dtype or key.device != query.device:
        raise ValueError(f'{_where(name)}: key ({tuple(key.shape)}, {key.dtype}, {key.device}) must match '
                         f'query ({tuple(query.shape)}, {query.dtype}, {query.device})')
    table = _two_step_problem(name, n_dim, query, kernel_size, dilation, is_causal, rpb)
    if additional_keys is not None:
        is_4d = isinstance(additional_keys, torch.Tensor) and additional_keys.dim() == 4
        want = (*query.shape[:2], additional_keys.shape[2] if is_4d else -1, query.shape[-1])
        if not is_4d or tuple(additional_keys.shape) != want or additional_keys.dtype != query.dtype:
            got = tuple(additional_keys.shape) if isinstance(additional_keys, torch.Tensor) else additional_keys
            raise ValueError(f'{_where(name)}: additional_keys must be [batch, heads, tokens, head_dim] = '
                             f'{want} in {query.dtype}, got {got}')

    def logits(query, key, rpb, additional_keys):
        q, k = query.flatten(2, -2), key.flatten(2, -2)
        attn = _neighbor_logits(q, k, table, rpb)
        if additional_keys is not None:
            attn = torch.cat([attn, q @ additional_keys.transpose(-1, -2)], dim=-1)
        return attn.unflatten(2, query.shape[2:2 + n_dim])

    return _in_inputs_dtype(logits, query, key, rpb, additional_keys)


def _av(name: str, n_dim: int, attn, value, kernel_size, dilation, is_causal, additional_values) -> torch.Tensor:
    _check_rank(name, n_dim, True, attn=attn, value=value)
    _not_a_tensor(name, n_dim, 'additional_values', additional_values)
    if (attn.shape[:-1] != value.shape[:-1] or not attn.dtype.is_floating_point
            or not value.dtype.is_floating_point or attn.device != value.device):
        raise ValueError(f'{_where(name)}: attn ({tuple(attn.shape)}, {attn.dtype}, {attn.device}) and '
                         f'value ({tuple(value.shape)}, {value.dtype}, {value.device}) must match in every axis but '
                         'the last and in device, and be floating')
    # NATTEN >= 0.15 casts the weights to the value's dtype (softmax in float32 under autocast, half values).
    attn = attn.to(value.dtype)
    table = _two_step_problem(name, n_dim, value, kernel_size, dilation, is_causal, None)
    n_keys = table.index.shape[1]
    n_extra = 0
    if additional_values is not None:
        is_4d = isinstance(additional_values, torch.Tensor) and additional_values.dim() == 4
        want = (*value.shape[:2], additional_values.shape[2] if is_4d else -1, value.shape[-1])
        if not is_4d or tuple(additional_values.shape) != want or additional_values.dtype != value.dtype:
            got = tuple(additional_values.shape) if isinstance(additional_values, torch.Tensor) else additional_values
            raise ValueError(f'{_where(name)}: additional_values must be [batch, heads, tokens, head_dim] = '
                             f'{want} in {value.dtype}, got {got}')
        n_extra = additional_values.shape[2]
    if attn.shape[-1] != n_keys + n_extra:
        extra = f' + {n_extra} additional values' if n_extra else ''
        raise ValueError(f'{_where(name)}: attn has {attn.shape[-1]} weights per query, expected '
                         f'prod(kernel_size) = {n_keys}{extra}')

    def weighted_sum(attn, value, additional_values):
        a, v = attn.flatten(2, -2), value.flatten(2, -2)
        out = _neighbor_sum(a[..., :n_keys], v, table)
        if n_extra:
            out = out + a[..., n_keys:] @ additional_values
        return out.unflatten(2, value.shape[2:2 + n_dim])

    return _in_inputs_dtype(weighted_sum, attn, value, additional_values)


_QK_DOC = """{n}-D neighborhood QK, NATTEN 0.17's ``natten.functional.na{n}d_qk`` (heads-first, unfused).

    Args:
        query: [batch, heads, {axes}, head_dim], already scaled.
        key: Same shape as query.
        kernel_size: Window size, int or one per axis.
        dilation: Dilation, int or per axis.
        additional_keys: None, or [batch, heads, tokens, head_dim]: their logits follow the window's.
        is_causal: Causal masking, bool or per axis.
        rpb: Relative positional bias [heads, 2k-1 per axis], or None (not with causal axes).

    Returns:
        Logits [batch, heads, {axes}, prod(kernel_size) (+ tokens)], window slots row-major; -inf where masked.
    """

_AV_DOC = """{n}-D neighborhood AV, NATTEN 0.17's ``natten.functional.na{n}d_av`` (heads-first, unfused).

    Args:
        attn: [batch, heads, {axes}, prod(kernel_size) (+ tokens)], the QK op's layout (after a softmax); any
            floating dtype, cast to value's as NATTEN does.
        value: [batch, heads, {axes}, head_dim].
        kernel_size: Window size, int or one per axis.
        dilation: Dilation, int or per axis.
        additional_values: None, or [batch, heads, tokens, head_dim], weighted by attn's last columns.
        is_causal: Causal masking, bool or per axis (weights of masked slots are ignored).

    Returns:
        [batch, heads, {axes}, head_dim].
    """


def na1d_qk(query: torch.Tensor, key: torch.Tensor, kernel_size: IntOrTuple, dilation: IntOrTuple = 1,
            additional_keys: Optional[torch.Tensor] = None, is_causal: BoolOrTuple = False,
            rpb: Optional[torch.Tensor] = None) -> torch.Tensor:
    return _qk('na1d_qk', 1, query, key, kernel_size, dilation, is_causal, rpb, additional_keys)


def na1d_av(attn: torch.Tensor, value: torch.Tensor, kernel_size: IntOrTuple, dilation: IntOrTuple = 1,
            additional_values: Optional[torch.Tensor] = None, is_causal: BoolOrTuple = False) -> torch.Tensor:
    return _av('na1d_av', 1, attn, value, kernel_size, dilation, is_causal, additional_values)


def na2d_qk(query: torch.Tensor, key: torch.Tensor, kernel_size: IntOrTuple, dilation: IntOrTuple = 1,
            additional_keys: Optional[torch.Tensor] = None, is_causal: BoolOrTuple = False,
            rpb: Optional[torch.Tensor] = None) -> torch.Tensor:
    return _qk('na2d_qk', 2, query, key, kernel_size, dilation, is_causal, rpb, additional_keys)


def na2d_av(attn: torch.Tensor, value: torch.Tensor, kernel_size: IntOrTuple, dilation: IntOrTuple = 1,
            additional_values: Optional[torch.Tensor] = None, is_causal: BoolOrTuple = False) -> torch.Tensor:
    return _av('na2d_av', 2, attn, value, kernel_size, dilation, is_causal, additional_values)


def na3d_qk(query: torch.Tensor, key: torch.Tensor, kernel_size: IntOrTuple, dilation: IntOrTuple = 1,
            additional_keys: Optional[torch.Tensor] = None, is_causal: BoolOrTuple = False,
            rpb: Optional[torch.Tensor] = None) -> torch.Tensor:
    return _qk('na3d_qk', 3, query, key, kernel_size, dilation, is_causal, rpb, additional_keys)


def na3d_av(attn: torch.Tensor, value: torch.Tensor, kernel_size: IntOrTuple, dilation: IntOrTuple = 1,
            additional_values: Optional[torch.Tensor] = None, is_causal: BoolOrTuple = False) -> torch.Tensor:
    return _av('na3d_av', 3, attn, value, kernel_size, dilation, is_causal, additional_values)


for _fn, _n in ((na1d_qk, 1), (na2d_qk, 2), (na3d_qk, 3)):
    _fn.__doc__ = _QK_DOC.format(n=_n, axes=_AXES[_n])
for _fn, _n in ((na1d_av, 1), (na2d_av, 2), (na3d_av, 3)):
    _fn.__doc__ = _AV_DOC.format(n=_n, axes=_AXES[_n])


# The names of NATTEN 0.14.6-0.17.4: one kernel size and dilation for every axis, except 3-D's depth.

def na1d_qk_with_bias(query: torch.Tensor, key: torch.Tensor, bias: Optional[torch.Tensor], kernel_size: int,
                      dilation: int, additional_keys: Optional[torch.Tensor] = None) -> torch.Tensor:
    """NATTEN 0.15's ``na1d_qk_with_bias``: :func:`na1d_qk` with an rpb (``bias``) [heads, 2k-1] or None."""
    return _qk('na1d_qk_with_bias', 1, query, key, kernel_size, dilation, False, bias, additional_keys)


def na2d_qk_with_bias(query: torch.Tensor, key: torch.Tensor, bias: Optional[torch.Tensor], kernel_size: int,
                      dilation: int, additional_keys: Optional[torch.Tensor] = None) -> torch.Tensor:
    """NATTEN 0.15's ``na2d_qk_with_bias`` (what its NeighborhoodAttention2D ran): :func:`na2d_qk` with an rpb
    (``bias``) [heads, 2k-1, 2k-1] or None."""
    return _qk('na2d_qk_with_bias', 2, query, key, kernel_size, dilation, False, bias, additional_keys)


def na3d_qk_with_bias(query: torch.Tensor, key: torch.Tensor, bias: Optional[torch.Tensor], kernel_size_d: int,
                      kernel_size: int, dilation_d: int, dilation: int,
                      additional_keys: Optional[torch.Tensor] = None) -> torch.Tensor:
    """NATTEN 0.15's ``na3d_qk_with_bias``: kernel (kernel_size_d, kernel_size, kernel_size), dilation
    (dilation_d, dilation, dilation) and an rpb (``bias``) [heads, 2kd-1, 2k-1, 2k-1] or None."""
    return _qk('na3d_qk_with_bias', 3, query, key, (kernel_size_d, kernel_size, kernel_size),
               (dilation_d, dilation, dilation), False, bias, additional_keys)


def natten1dqkrpb(query: torch.Tensor, key: torch.Tensor, rpb: Optional[torch.Tensor], kernel_size: int,
                  dilation: int) -> torch.Tensor:
    """NATTEN's ``natten1dqkrpb``: :func:`na1d_qk` with an rpb [heads, 2k-1] or None."""
    return _qk('natten1dqkrpb', 1, query, key, kernel_size, dilation, False, rpb, None)


def natten1dqk(query: torch.Tensor, key: torch.Tensor, kernel_size: int, dilation: int) -> torch.Tensor:
    """NATTEN's ``natten1dqk``: :func:`na1d_qk` without rpb."""
    return _qk('natten1dqk', 1, query, key, kernel_size, dilation, False, None, None)


def natten1dav(attn: torch.Tensor, value: torch.Tensor, kernel_size: int, dilation: int) -> torch.Tensor:
    """NATTEN's ``natten1dav``: :func:`na1d_av`."""
    return _av('natten1dav', 1, attn, value, kernel_size, dilation, False, None)


def natten2dqkrpb(query: torch.Tensor, key: torch.Tensor, rpb: Optional[torch.Tensor], kernel_size: int,
                  dilation: int) -> torch.Tensor:
    """NATTEN's ``natten2dqkrpb``: :func:`na2d_qk` with an rpb [heads, 2k-1, 2k-1] or None."""
    return _qk('natten2dqkrpb', 2, query, key, kernel_size, dilation, False, rpb, None)


def natten2dqk(query: torch.Tensor, key: torch.Tensor, kernel_size: int, dilation: int) -> torch.Tensor:
    """NATTEN's ``natten2dqk``: :func:`na2d_qk` without rpb."""
    return _qk('natten2dqk', 2, query, key, kernel_size, dilation, False, None, None)


def natten2dav(attn: torch.Tensor, value: torch.Tensor, kernel_size: int, dilation: int) -> torch.Tensor:
    """NATTEN's ``natten2dav``: :func:`na2d_av`."""
    return _av('natten2dav', 2, attn, value, kernel_size, dilation, False, None)


def natten3dqkrpb(query: torch.Tensor, key: torch.Tensor, rpb: Optional[torch.Tensor], kernel_size_d: int,
                  kernel_size: int, dilation_d: int, dilation: int) -> torch.Tensor:
    """NATTEN's ``natten3dqkrpb``: :func:`na3d_qk` with kernel (kernel_size_d, kernel_size, kernel_size), dilation
    (dilation_d, dilation, dilation) and an rpb [heads, 2kd-1, 2k-1, 2k-1] or None."""
    return _qk('natten3dqkrpb', 3, query, key, (kernel_size_d, kernel_size, kernel_size),
               (dilation_d, dilation, dilation), False, rpb, None)


def natten3dqk(query: torch.Tensor, key: torch.Tensor, kernel_size_d: int, kernel_size: int, dilation_d: int,
               dilation: int) -> torch.Tensor:
    """NATTEN's ``natten3dqk``: :func:`natten3dqkrpb` without rpb."""
    return _qk('natten3dqk', 3, query, key, (kernel_size_d, kernel_size, kernel_size),
               (dilation_d, dilation, dilation), False, None, None)


def natten3dav(attn: torch.Tensor, value: torch.Tensor, kernel_size_d: int, kernel_size: int, dilation_d: int,
               dilation: int) -> torch.Tensor:
    """NATTEN's ``natten3dav``: :func:`na3d_av` with kernel (kernel_size_d, kernel_size, kernel_size)."""
    return _av('natten3dav', 3, attn, value, (kernel_size_d, kernel_size, kernel_size),
               (dilation_d, dilation, dilation), False, None)


def __getattr__(name: str):
    if name.startswith('__'):
        raise AttributeError(name)
    raise AttributeError(
        f"natten.functional (visionattn's drop-in) has no {name!r}: it provides {', '.join(__all__)} (see "
        'visionattn.compat.natten); NATTEN-only features such as attention/merge_attentions are not included')

