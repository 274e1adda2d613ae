"""``natten.flops`` of the drop-in: ``get_flops`` and ``add_natten_handle``, which NATTEN's README and the official
NAT/DiNAT code use with fvcore, the fvcore op handles of NATTEN 0.14-0.17.4 that code imports by name, and the
shape-only counters ``fna_flop_count``, ``na_qk_flop_count`` and ``na_av_flop_count`` of NATTEN 0.17.4/0.17.5.

NATTEN registered fvcore handles for its own autograd functions. visionattn's op needs none: its reference path is
made of gathers and einsums, which fvcore and PyTorch's ``torch.utils.flop_counter`` count as the papers do
(``B * heads * N * prod(kernel) * head_dim`` multiply-adds for QK and again for AV), and
``visionattn.profile.measure`` counts any zoo model. So ``add_natten_handle`` adds no handle and returns the counter
as given; the legacy handles exist so that imports work, and count as NATTEN's did if something registers them.
"""
import logging
import math
from numbers import Number
from typing import Any, List, Sequence, Tuple

__all__ = ['add_natten_handle', 'get_flops', 'fna_flop_count', 'na_qk_flop_count', 'na_av_flop_count',
           'qk_rpb_flop', 'av_flop', 'qk_1d_rpb_flop', 'av_1d_flop', 'qk_2d_rpb_flop', 'av_2d_flop', 'qk_3d_rpb_flop',
           'av_3d_flop']

_logger = logging.getLogger('visionattn.compat.natten')


def add_natten_handle(flop_ctr):
    """Returns ``flop_ctr`` (an fvcore ``FlopCountAnalysis``) unchanged: no NATTEN op exists to register.

    fvcore traces the model with TorchScript: on the CPU it sees the reference path's einsums and counts them; a
    call that runs visionattn's Triton kernel is reported by fvcore as an unsupported op. For counts that match the
    papers, use ``torch.utils.flop_counter.FlopCounterMode`` on the CPU (or ``visionattn.profile.measure``).
    """
    _logger.info('natten.flops.add_natten_handle (visionattn drop-in): no handle added; fvcore counts the '
                 "reference path's einsums on the CPU")
    return flop_ctr


def get_flops(model, input, disable_warnings: bool = False):
    """NATTEN's ``get_flops``: fvcore's ``FlopCountAnalysis(model, input)`` total (fvcore counts multiply-adds).

    Run it on the CPU, where the drop-in's ops are traceable gathers and einsums (see :func:`add_natten_handle`).

    Args:
        model: The module to count.
        input: Its input, as fvcore takes it (a tensor or a tuple of them).
        disable_warnings: Silence fvcore's warnings about ops it cannot count.

    Raises:
        ImportError: fvcore is not installed (NATTEN's ``get_flops`` needs it as well).
    """
    try:
        from fvcore.nn import FlopCountAnalysis
    except ImportError as error:
        raise ImportError('natten.flops.get_flops needs fvcore, as NATTEN\'s does: pip install fvcore (or count '
                          'with torch.utils.flop_counter.FlopCounterMode, which needs nothing)') from error
    counter = add_natten_handle(FlopCountAnalysis(model, input))
    if disable_warnings:
        counter = counter.unsupported_ops_warnings(False)
    return counter.total()


# fvcore op handles: ``handle(inputs, outputs)`` gets traced values, whose ``type().sizes()`` is the shape.

def _sizes(values: List[Any], n_dim: int, what: str) -> List[List[int]]:
    shapes = [list(v.type().sizes()) for v in values]
    if any(len(s) != n_dim + 3 for s in shapes[:2]):
        raise ValueError(f'natten.flops: {what} expects {n_dim + 3}-D heads-first tensors, got shapes {shapes}')
    return shapes


def _qk_count(n_dim: int, inputs: List[Any], outputs: List[Any]) -> Number:
    query = _sizes(inputs, n_dim, f'the {n_dim}-D QK handle')[0]
    attn = _sizes(outputs, n_dim, f'the {n_dim}-D QK handle')[0]
    # One multiply-add per (query, window slot, channel), and one add per (query, slot) for the bias, as NATTEN.
    weights = math.prod(attn)
    return weights * query[-1] + weights


def _av_count(n_dim: int, inputs: List[Any], outputs: List[Any]) -> Number:
    attn, _ = _sizes(inputs, n_dim, f'the {n_dim}-D AV handle')[:2]
    out = _sizes(outputs, n_dim, f'the {n_dim}-D AV handle')[0]
    return math.prod(attn) * out[-1]


def _handle(count, n_dim: int, name: str, signature: str):
    """One of NATTEN's fvcore handles, under the name NATTEN users import."""
    def handle(inputs: List[Any], outputs: List[Any]) -> Number:
        return count(n_dim, inputs, outputs)
    handle.__name__ = handle.__qualname__ = name
    handle.__doc__ = f"NATTEN's fvcore handle of {n_dim}-D {signature}."
    return handle


_GRID = {1: 'L', 2: 'H, W', 3: 'D, H, W'}
qk_1d_rpb_flop, qk_2d_rpb_flop, qk_3d_rpb_flop = (
    _handle(_qk_count, n, f'qk_{n}d_rpb_flop', f'QK (query, key[, rpb]) -> attn [B, heads, {_GRID[n]}, window]')
    for n in (1, 2, 3))
av_1d_flop, av_2d_flop, av_3d_flop = (
    _handle(_av_count, n, f'av_{n}d_flop', f'AV (attn, value) -> [B, heads, {_GRID[n]}, head_dim]') for n in (1, 2, 3))

# NATTEN 0.14's names of the 2-D handles.
qk_rpb_flop = qk_2d_rpb_flop
av_flop = av_2d_flop


# Shape-only counters (NATTEN 0.17.4-0.17.5's docs/flops.md): the dot products only, as NATTEN counts them (softmax,
# masking, scale and bias are left out, and causal masking does not lower the count).

def _problem(what: str, shape, kernel_size, is_heads_last: bool) -> Tuple[int, int, int, int]:
    """(batch * heads, tokens, head_dim, window slots) of a [batch, *spatial, heads, dim] (heads last) or
    [batch, heads, *spatial, dim] shape."""
    shape = tuple(int(x) for x in shape)
    if len(shape) not in (4, 5, 6):
        raise ValueError(f'natten.flops.{what}: expected a 4-D, 5-D or 6-D shape (1-, 2- or 3-D NA), got {shape}')
    n_dim = len(shape) - 3
    kernel = (kernel_size,) * n_dim if isinstance(kernel_size, int) else tuple(kernel_size)
    if len(kernel) != n_dim or not all(isinstance(k, int) and k >= 1 for k in kernel):
        raise ValueError(f'natten.flops.{what}: kernel_size={kernel_size!r} must be an int or {n_dim} ints for the '
                         f'{len(shape)}-D shape {shape}')
    heads, spatial = (shape[-2], shape[1:-2]) if is_heads_last else (shape[1], shape[2:-1])
    return shape[0] * heads, math.prod(spatial), shape[-1], math.prod(kernel)


def na_qk_flop_count(q_shape: Sequence[int], k_shape: Sequence[int],
                     kernel_size, dilation, is_causal, is_heads_last: bool, return_macs: bool = False) -> int:
    """NATTEN 0.17.4's count for the QK product: ``batch * heads * tokens * prod(kernel_size) * head_dim``
    multiply-adds; FLOPs (twice that) unless ``return_macs``. ``is_heads_last``: the shapes are [batch, *spatial,
    heads, head_dim] (the fused ops' layout) rather than [batch, heads, *spatial, head_dim] (the two-step ops')."""
    bh, tokens, dim, slots = _problem('na_qk_flop_count', q_shape, kernel_size, is_heads_last)
    macs = bh * tokens * slots * dim
    return macs if return_macs else 2 * macs


def na_av_flop_count(a_shape: Sequence[int], v_shape: Sequence[int],
                     kernel_size, dilation, is_causal, is_heads_last: bool, return_macs: bool = False) -> int:
    """NATTEN 0.17.4's count for the AV product, from the value's shape: ``batch * heads * tokens *
    prod(kernel_size) * head_dim`` multiply-adds; FLOPs (twice that) unless ``return_macs``."""
    bh, tokens, dim, slots = _problem('na_av_flop_count', v_shape, kernel_size, is_heads_last)
    macs = bh * tokens * slots * dim
    return macs if return_macs else 2 * macs


def fna_flop_count(q_shape: Sequence[int], k_shape: Sequence[int],
                   v_shape: Sequence[int], kernel_size, dilation, is_causal,
                   is_heads_last: bool, return_macs: bool = False) -> int:
    """NATTEN 0.17.4's count for the whole attention (:func:`na_qk_flop_count` + :func:`na_av_flop_count`); FLOPs
    unless ``return_macs`` (fvcore reports MACs, ``torch.utils.flop_counter`` FLOPs)."""
    return (na_qk_flop_count(q_shape, k_shape, kernel_size, dilation, is_causal, is_heads_last, return_macs)
            + na_av_flop_count(None, v_shape, kernel_size, dilation, is_causal, is_heads_last, return_macs))
