"""Launching compiled Triton kernels without the JIT's per-call argument binding.

``kernel[grid](*args)`` binds and specialises every argument in Python on each call: about 55-75 us of host time for
the NA kernels' ~60 arguments on an H100 host (docs/benchmarks/speed_h100.md). The JIT returns the compiled kernel it
launched; a later call whose arguments specialise the same way (Triton specialises integers on their value being 1 or
a multiple of 16, and pointers on 16-byte alignment) can launch that compiled kernel directly. Callers keep one
:class:`Kernel` slot per plan, and key their plans on everything the JIT specialises on.

The direct path is skipped under the interpreter, where launch hooks are registered (a profiler's: they expect
Triton's own path), and with ``VISIONATTN_TRITON_FAST_LAUNCH=0`` (for debugging).
"""
import inspect
import os
from typing import Dict, Optional, Sequence, Tuple

import torch
import triton
import triton.language as tl
from triton.runtime import driver

from ..checks import _interpreting

__all__ = ['FAST_LAUNCH', 'Kernel', 'aligned', 'launch_compiled', 'launch_hooks_set', 'or_placeholder',
           'signature']

FAST_LAUNCH = os.environ.get('VISIONATTN_TRITON_FAST_LAUNCH', '1') != '0'


def launch_hooks_set() -> bool:
    """Whether a launch hook is registered with Triton; then launches take Triton's own path."""
    runtime = getattr(getattr(triton, 'knobs', None), 'runtime', None)
    if runtime is None:
        return True
    for hook in (getattr(runtime, 'launch_enter_hook', None), getattr(runtime, 'launch_exit_hook', None)):
        # Triton >= 3.5 keeps a chain of hooks (empty when none is set); earlier versions a callable or None.
        if hook is not None and (not hasattr(hook, 'calls') or hook.calls):
            return True
    return False


def launch_compiled(compiled, grid: Sequence[int], args: Sequence[object], device_index: Optional[int] = None) -> None:
    """Launch a compiled kernel on the current stream; ``args`` are all its parameters, constexprs included."""
    grid = tuple(grid) + (1,) * (3 - len(grid))
    if launch_hooks_set():
        compiled[grid](*args)
        return
    if device_index is None:
        device_index = driver.active.get_current_device()
    stream = driver.active.get_current_stream(device_index)
    compiled.run(grid[0], grid[1], grid[2], stream, compiled.function, compiled.packed_metadata, None, None, None,
                 *args)


class Kernel:
    """A JIT kernel whose launches at a known specialisation go straight to its compiled handle.

    ``launch`` takes the runtime arguments in order (tensors, ints, floats) and the constexprs by name. A plan's first
    launch goes through the JIT (compiling or finding the binary, binding every argument); the compiled handle it
    returns is kept in the plan's ``slot``, and later launches pass it the arguments as they are, skipping the JIT's
    per-argument specialisation. Valid because the caller's plan fixes every int argument, dtype and pointer
    alignment the JIT specialises on (the plan's key holds them): one slot per plan and kernel.
    """

    def __init__(self, fn):
        self.fn = fn
        params = list(inspect.signature(fn.fn).parameters.values())  # the Python function (JIT or interpreter)
        flags = [p.annotation is tl.constexpr or 'constexpr' in str(p.annotation) for p in params]
        first = flags.index(True)
        if not all(flags[first:]):
            raise TypeError(f'{fn.__name__}: constexpr parameters must come last')
        self.constexpr_names = tuple(p.name for p in params[first:])

    def launch(self, slot: list, grid: Tuple[int, int, int], args: tuple, consts: Dict[str, object],
               num_warps: int, num_stages: int) -> None:
        # grid: always three axes (a compiled handle, unlike the JIT, does not fill in missing ones)
        handle = slot[0]
        if handle is not None:
            launch_compiled(handle, grid, (*args, *slot[1]))
            return
        compiled = self.fn[grid](*args, **consts, num_warps=num_warps, num_stages=num_stages)
        if FAST_LAUNCH and not _interpreting() and _launchable(compiled, len(args) + len(self.constexpr_names)):
            slot[0], slot[1] = compiled, tuple(consts[name] for name in self.constexpr_names)


def _launchable(compiled, n_params: int) -> bool:
    # A compiled kernel (not the interpreter's None) whose launcher takes every parameter, constexprs included (the
    # convention since Triton 3.2: its signature lists them); anything else keeps the JIT path.
    signature = getattr(getattr(compiled, 'src', None), 'signature', None)
    return compiled is not None and hasattr(compiled, '__getitem__') and isinstance(signature, dict) \
        and len(signature) == n_params


def aligned(x: torch.Tensor) -> bool:
    """Whether the JIT would specialise ``x``'s pointer as 16-byte aligned (plans key on it)."""
    return x.data_ptr() % 16 == 0


def signature(tensors: Sequence[Optional[torch.Tensor]]) -> tuple:
    """What a plan keys on for each tensor argument: shape, strides, dtype and pointer alignment (None stays None)."""
    return tuple(None if t is None else (t.shape, t.stride(), t.dtype, aligned(t)) for t in tensors)


def or_placeholder(t: Optional[torch.Tensor], placeholder: torch.Tensor) -> torch.Tensor:
    """An absent optional input travels as a placeholder that the kernel does not read (its flag is off)."""
    return placeholder if t is None else t
