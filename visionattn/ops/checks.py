"""Backend choice for visionattn's ops: Triton on CUDA when its checks pass, else the PyTorch reference.

Every op takes ``backend=None | 'reference' | 'triton'``; ``None`` reads ``VISIONATTN_BACKEND`` and otherwise picks
automatically. An automatic choice that rejects Triton logs why (logger ``visionattn.ops``, level DEBUG), and
``explain_backend`` returns the same reasons; asking for Triton explicitly where it cannot run raises them.
"""
import importlib.util
import logging
import os
from typing import Iterable, List, Optional, Sequence, Tuple

import torch

__all__ = [
    'BACKENDS', 'BackendUnavailableError', 'choose_backend', 'explain_backend', 'triton_rejections', 'env_backend',
]

_logger = logging.getLogger('visionattn.ops')

BACKENDS = ('reference', 'triton')
TRITON_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


class BackendUnavailableError(RuntimeError):
    """A backend was asked for by name but cannot run these inputs."""


def env_backend() -> Optional[str]:
    """The backend forced by ``VISIONATTN_BACKEND`` (unset or 'auto' means automatic)."""
    value = os.environ.get('VISIONATTN_BACKEND', '').strip().lower()
    if value in ('', 'auto'):
        return None
    if value not in BACKENDS:
        raise ValueError(f"VISIONATTN_BACKEND={value!r}: expected one of {', '.join(BACKENDS)} or 'auto'")
    return value


def _triton_available() -> bool:
    return importlib.util.find_spec('triton') is not None


def _interpreting() -> bool:
    return os.environ.get('TRITON_INTERPRET', '0') == '1'


def triton_rejections(tensors: Iterable[Optional[torch.Tensor]], extra: Sequence[Tuple[bool, str]] = ()) -> List[str]:
    """Why the Triton backend cannot run these tensors; an empty list means it can.

    Args:
        tensors: The op's tensor inputs (None entries are skipped).
        extra: Op-specific ``(ok, reason)`` checks; a reason is reported where ``ok`` is False.
    """
    reasons = []
    if not _triton_available():
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
    if requested is not None and requested not in BACKENDS:
        raise ValueError(f'{op}: unknown backend {requested!r}; expected one of {", ".join(BACKENDS)} or None')
    if requested == 'reference':
        return 'reference'
    reasons = triton_rejections(tensors, extra)
    if requested == 'triton':
        if reasons:
            raise BackendUnavailableError(f'{op}: the triton backend cannot run these inputs: ' + '; '.join(reasons))
        return 'triton'
    if reasons:
        _logger.debug('%s: using the reference backend because %s', op, '; '.join(reasons))
        return 'reference'
    if _interpreting():
        # Under the interpreter Triton runs, slowly, on any device: tests ask for it by name, models do not.
        return 'reference'
    return 'triton'


def explain_backend(op: str, tensors: Iterable[Optional[torch.Tensor]], extra: Sequence[Tuple[bool, str]] = ()) -> str:
    """A one-line answer to "which backend would run these inputs, and why"."""
    reasons = triton_rejections(tensors, extra)
    return f'{op}: triton' if not reasons else f'{op}: reference ({"; ".join(reasons)})'
