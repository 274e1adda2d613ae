"""Launching compiled Triton kernels without the JIT's per-call argument binding.

``kernel[grid](*args)`` binds and specialises every argument in Python on each call: about 55-75 us of host time for
the NA kernels' ~60 arguments on an H100 host (docs/benchmarks/speed_h100.md). The JIT returns the compiled kernel it
launched; a later call whose arguments specialise the same way (Triton specialises integers on their value being 1 or
a multiple of 16, and pointers on 16-byte alignment) can launch that compiled kernel directly. Callers key their
cache on everything the JIT specialises on.

The direct path is skipped under the interpreter, where launch hooks are registered (a profiler's: they expect
Triton's own path), and with ``VISIONATTN_TRITON_FAST_LAUNCH=0`` (for debugging).
"""
import os
from typing import Dict, Optional, Sequence, Tuple

import torch
import triton
from triton.runtime import driver

from ..checks import _interpreting

__all__ = ['FAST_LAUNCH', 'CachedLauncher', 'launch_compiled', 'launch_hooks_set']

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


class CachedLauncher:
    """Launches one kernel config; after the first launch of a specialisation, through its compiled kernel.

    Arguments come grouped as the kernels declare them: pointers, then integers, then floats, then constexprs (by
    name, with ``num_warps`` / ``num_stages``). The cache key is the integers' values and the pointers' alignment.
    """

    def __init__(self):
        self.compiled: Dict[tuple, Tuple[object, tuple]] = {}

    def __call__(self, kernel, grid, pointers: Sequence[torch.Tensor], ints: tuple, floats: tuple,
                 consts: Dict[str, object]) -> None:
        if not FAST_LAUNCH or _interpreting() or launch_hooks_set():
            kernel[grid](*pointers, *ints, *floats, **consts)
            return
        key = (ints, tuple(p.data_ptr() % 16 == 0 for p in pointers))
        entry = self.compiled.get(key)
        if entry is None:
            compiled = kernel[grid](*pointers, *ints, *floats, **consts)
            if compiled is not None and hasattr(compiled, 'packed_metadata'):
                compiled.run  # noqa: B018  (loads the module, sets .function)
                order = tuple(consts[p.name] for p in kernel.params if p.is_constexpr)
                self.compiled[key] = (compiled, order)
            return
        compiled, order = entry
        launch_compiled(compiled, grid, (*pointers, *ints, *floats, *order), pointers[0].device.index)
