"""Backend choice for visionattn's ops: Triton on CUDA when its checks pass, else the PyTorch reference.

Every op takes ``backend=None | 'reference' | 'triton'``; ``None`` reads ``VISIONATTN_BACKEND`` and otherwise picks
automatically. An automatic choice that rejects Triton logs why (logger ``visionattn.ops``, level DEBUG), and
``explain_backend`` returns the same reasons; asking for Triton explicitly where it cannot run raises them.

The choice runs on every op call, so it is cheap (a few attribute reads; the reasons are only put into words when they
are raised, logged or explained) and traceable by Dynamo: whether Triton is installed is looked up once, at import,
and the environment is read through :func:`torch.compiler.assume_constant_result`, so ``torch.compile(fullgraph=True)``
takes the choice as a constant of the graph (the environment as it was when the graph was compiled) instead of
breaking the graph at every attention call.
"""
import functools
import importlib.util
import logging
import math
import numbers
import os
from typing import Iterable, List, Optional, Sequence, Tuple

import torch

__all__ = [
    'BACKENDS', 'BackendUnavailableError', 'NotSupportedError', 'choose_backend', 'explain_backend',
    'triton_rejections', 'env_backend', 'env_signature', 'finite_scale', 'first_order_only', 'positive_int',
]

_logger = logging.getLogger('visionattn.ops')

BACKENDS = ('reference', 'triton')
TRITON_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

# Looked up once: find_spec walks sys.path on every call, and Dynamo refuses to trace it.
_TRITON_AVAILABLE = importlib.util.find_spec('triton') is not None


class BackendUnavailableError(RuntimeError):
    """A backend was asked for by name but cannot run these inputs."""


class NotSupportedError(NotImplementedError, ValueError):
    """A combination of valid arguments that an op does not implement (NA: a relative positional bias with a causal
    axis). A ValueError, as every argument check here, and a NotImplementedError, as NATTEN raises it, so that code
    written for either catches it."""


@torch.compiler.assume_constant_result
def _env(name: str) -> str:
    # Eager calls read the environment every time (tests and users switch it at run time); a compiled graph keeps the
    # value it was traced with.
    return os.environ.get(name, '')


def env_backend() -> Optional[str]:
    """The backend forced by ``VISIONATTN_BACKEND`` (unset or 'auto' means automatic)."""
    value = _env('VISIONATTN_BACKEND').strip().lower()
    if value in ('', 'auto'):
        return None
    if value not in BACKENDS:
        raise ValueError(f"VISIONATTN_BACKEND={value!r}: expected one of {', '.join(BACKENDS)} or 'auto'")
    return value


def env_signature() -> Tuple[str, str]:
    """The environment variables the backend choice reads, for callers that cache a choice."""
    return _env('VISIONATTN_BACKEND'), _env('TRITON_INTERPRET')


def _interpreting() -> bool:
    return _env('TRITON_INTERPRET') == '1'


def _triton_can_run(tensors: Sequence[Optional[torch.Tensor]], extra: Sequence[Tuple[bool, str]], auto: bool) -> bool:
    """:func:`triton_rejections` as a yes/no answer without wording the reasons (the per-call path); ``auto`` also
    rejects the interpreter, which runs only when asked for by name. The environment is read only where it decides."""
    if not _TRITON_AVAILABLE:
        return False
    device = None
    for t in tensors:
        if t is None:
            continue
        if device is None:
            device = t.device
            if auto and device.type != 'cuda':
                return False
        elif t.device != device:
            return False
        if t.is_floating_point() and t.dtype not in TRITON_DTYPES:
            return False
    for ok, _ in extra:
        if not ok:
            return False
    if auto:
        return not _interpreting()
    return device is None or device.type == 'cuda' or _interpreting()


def triton_rejections(tensors: Iterable[Optional[torch.Tensor]], extra: Sequence[Tuple[bool, str]] = ()) -> List[str]:
    """Why the Triton backend cannot run these tensors; an empty list means it can.

    Args:
        tensors: The op's tensor inputs (None entries are skipped).
        extra: Op-specific ``(ok, reason)`` checks; a reason is reported where ``ok`` is False.
    """
    reasons = []
    if not _TRITON_AVAILABLE:
        reasons.append('triton is not installed')
    present = [t for t in tensors if t is not None]
    devices = {t.device for t in present}
    if len(devices) > 1:
        reasons.append(f'inputs are on several devices: {sorted(map(str, devices))}')
    if not _interpreting() and any(t.device.type != 'cuda' for t in present):
        reasons.append('inputs are not on a CUDA device (set TRITON_INTERPRET=1 to run kernels on the CPU)')
    bad = sorted({str(t.dtype) for t in present if t.is_floating_point() and t.dtype not in TRITON_DTYPES})
    if bad:
        reasons.append(f'unsupported dtype {", ".join(bad)}')
    reasons.extend(reason for ok, reason in extra if not ok)
    return reasons


def choose_backend(op: str, backend: Optional[str], tensors: Iterable[Optional[torch.Tensor]],
                   extra: Sequence[Tuple[bool, str]] = ()) -> str:
    """Resolve ``backend`` for ``op`` to 'reference' or 'triton'.

    Args:
        op: Op name, for messages.
        backend: None (automatic, or ``VISIONATTN_BACKEND``), 'reference' or 'triton'.
        tensors: The op's tensor inputs.
        extra: Op-specific ``(ok, reason)`` checks for the Triton backend.
    """
    requested = backend if backend is not None else env_backend()
    if requested == 'reference':
        return 'reference'
    if requested is not None and requested != 'triton':
        raise ValueError(f'{op}: unknown backend {requested!r}; expected one of {", ".join(BACKENDS)} or None')
    tensors = tuple(tensors)  # walked twice where Triton is rejected
    if _triton_can_run(tensors, extra, auto=requested is None):
        return 'triton'
    if requested == 'triton':
        raise BackendUnavailableError(f'{op}: the triton backend cannot run these inputs: '
                                      + '; '.join(triton_rejections(tensors, extra)))
    # Logger methods are not traceable (Dynamo), and the reasons cost more than the choice: log only in eager mode
    # and only where someone listens. Under the interpreter Triton runs, slowly, on any device: tests ask for it by
    # name, an automatic choice does not take it.
    if not torch.compiler.is_compiling() and _logger.isEnabledFor(logging.DEBUG):
        reasons = triton_rejections(tensors, extra) or ['TRITON_INTERPRET=1 (the interpreter runs only when asked for)']
        _logger.debug('%s: using the reference backend because %s', op, '; '.join(reasons))
    return 'reference'


def explain_backend(op: str, tensors: Iterable[Optional[torch.Tensor]], extra: Sequence[Tuple[bool, str]] = ()) -> str:
    """A one-line answer to "which backend would run these inputs, and why"."""
    reasons = triton_rejections(tensors, extra)
    return f'{op}: triton' if not reasons else f'{op}: reference ({"; ".join(reasons)})'


def finite_scale(op: str, scale, default: float) -> float:
    """An attention op's logit ``scale`` as a float (``default`` for None): any finite real number, NumPy's
    included; a NaN, infinite, boolean or non-numeric scale is refused naming it (instead of all-NaN attention)."""
    if scale is None:
        return default
    if type(scale) is not float and (isinstance(scale, bool) or not isinstance(scale, numbers.Real)):
        raise ValueError(f'{op}: scale={scale!r} must be a finite number or None')
    if not math.isfinite(scale):
        raise ValueError(f'{op}: scale={scale!r} must be a finite number or None')
    return float(scale)


def positive_int(op: str, name: str, value) -> int:
    """A count argument (heads, regions, channels) as an int >= 1; a float, bool or smaller value is refused naming
    it (a float passes divisibility checks and fails later, unclearly)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f'{op}: {name}={value!r} must be an int >= 1')
    return int(value)


class _SecondDerivativeRefused(torch.autograd.Function):
    """Copies of an op's gradients, tied to what they depend on, whose own backward raises."""

    @staticmethod
    def forward(ctx, op: str, hint: str, n_grads: int, *tensors):
        ctx.op, ctx.hint = op, hint
        return tuple(t.clone() for t in tensors[:n_grads])

    @staticmethod
    def backward(ctx, *grads):
        raise RuntimeError(f'{ctx.op}: its backward gives first derivatives only; a derivative of its gradients (a '
                           f'gradient penalty, a Hessian product) needs {ctx.hint}')


def first_order_only(op: str, hint: str = "backend='reference'"):
    """Decorate an autograd Function's ``backward`` whose kernels are not differentiable themselves.

    Outside ``create_graph`` (training) the backward runs as it is. Under ``create_graph=True`` the gradients are right
    but would have no graph back to the inputs, so a derivative of them came out as if they were constants: silently
    wrong. Here they are tied (by a copy) to the gradient outputs and saved inputs, so that differentiating them again
    raises (``hint`` says what gives second derivatives). ``torch.autograd.function.once_differentiable`` does not
    suffice: its error node hangs off detached copies, which ``torch.autograd.grad(..., inputs)`` prunes, dropping the
    second-order terms without an error. The Function must save the tensors its gradients depend on.
    """
    def wrap(backward):
        @functools.wraps(backward)
        def checked(ctx, *grad_outputs):
            if not torch.is_grad_enabled():
                return backward(ctx, *grad_outputs)
            with torch.no_grad():
                grads = backward(ctx, *grad_outputs)
            deps = [t for t in (*grad_outputs, *ctx.saved_tensors) if isinstance(t, torch.Tensor) and t.requires_grad]
            tensors = [(i, g) for i, g in enumerate(grads) if isinstance(g, torch.Tensor)]
            if not deps or not tensors:
                return grads
            tied = _SecondDerivativeRefused.apply(op, hint, len(tensors), *(g for _, g in tensors), *deps)
            out = list(grads)
            for (i, _), g in zip(tensors, tied):
                out[i] = g
            return tuple(out)
        return checked
    return wrap
