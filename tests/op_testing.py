"""The numerical rule for kernels (the project's standard for every Triton kernel): the kernel's error against an fp32
reference is at most twice the error of the same-dtype PyTorch reference, plus atol; for the output and for every
gradient. An fp32 kernel needs a higher-precision reference (fp64), else the same-dtype error is zero by
construction."""
import os
from typing import Dict, Optional, Sequence

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

# atol per dtype added to twice the same-dtype PyTorch error.
ATOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def max_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item() if a.numel() else 0.0


def assert_kernel_close(kernel: torch.Tensor, same_dtype: torch.Tensor, ref32: torch.Tensor, what: str,
                        atol: Optional[float] = None, factor: float = 2.0) -> None:
    """Assert ``|kernel - ref32| <= factor * |same_dtype - ref32| + atol`` (max norm)."""
    assert kernel.shape == ref32.shape, f'{what}: shape {tuple(kernel.shape)} != reference {tuple(ref32.shape)}'
    assert torch.isfinite(kernel).all(), f'{what}: non-finite values in the kernel output'
    atol = ATOL[kernel.dtype] if atol is None else atol
    err, base = max_error(kernel, ref32), max_error(same_dtype, ref32)
    assert err <= factor * base + atol, (
        f'{what}: kernel error {err:.3g} > {factor} x PyTorch error {base:.3g} + {atol:g}')


def grads(output: torch.Tensor, inputs: Sequence[Optional[torch.Tensor]],
          grad_out: torch.Tensor) -> Dict[int, torch.Tensor]:
    """Gradients of ``(output * grad_out).sum()`` with respect to the inputs that require grad, by position."""
    wanted = [(i, t) for i, t in enumerate(inputs) if t is not None and t.requires_grad]
    values = torch.autograd.grad(output, [t for _, t in wanted], grad_out)
    return {i: g for (i, _), g in zip(wanted, values)}


def leaf_copies(tensors: Sequence[Optional[torch.Tensor]], dtype: torch.dtype) -> list:
    """Detached copies in ``dtype`` that require grad (None stays None)."""
    return [None if t is None else t.detach().to(dtype).requires_grad_(t.requires_grad) for t in tensors]


def kernel_device() -> str:
    """Where this session runs Triton kernels: the CPU under the interpreter, else the GPU (for tests that call the
    kernels without the backend choice, which would refuse CPU tensors where the kernels are compiled)."""
    if os.environ.get('TRITON_INTERPRET') == '1':
        return 'cpu'
    if torch.cuda.is_available():
        return 'cuda'
    pytest.skip('Triton kernels need TRITON_INTERPRET=1 or a GPU')


class DispatchedOps(TorchDispatchMode):
    """Records the aten overloads (``names``, e.g. 'sum.dim_IntList') run inside ``with DispatchedOps() as ops``."""

    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(func.__name__)
        return func(*args, **(kwargs or {}))
