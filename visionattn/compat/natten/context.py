"""NATTEN's global switches and capability queries (``natten.context`` and ``natten.has_*``), made harmless.

NATTEN (0.14-0.21) lets code choose among its kernels (fused or unfused, GEMM, tiled, Flex Attention, the
autotuner, KV parallelism, memory preferences) and ask what its build supports. visionattn has one
neighborhood-attention op, which picks its own backend (Triton on CUDA, the PyTorch reference elsewhere), so the
switches here only record what was asked: they change no computation. Each logs once, at INFO level on logger
``visionattn.compat.natten``, what it did. The queries answer as NATTEN's do for its kernels, with visionattn's
Triton kernels in their place: ``has_cuda()``, ``has_half()`` and ``has_fna()``/``has_fused_na()`` are whether those
run (Triton, a CUDA device, ``VISIONATTN_BACKEND`` not 'reference'), ``has_bfloat()`` also needs compute capability
8.0, and ``has_gemm()`` is False (there are no GEMM-based NA kernels). Code that checks them takes its kernel path
where the kernels run and its CPU path elsewhere; the ops themselves run on every device either way.

Their presence matters for code that tests it: the official NAT/DiNAT code passes ``rel_pos_bias=True`` when
``natten.context`` exists (NATTEN >= 0.17) and ``bias=True`` otherwise; the drop-in takes either.
"""
import logging
from typing import Optional

import torch

from ...ops.checks import _TRITON_AVAILABLE, env_backend

__all__ = [
    'use_fused_na', 'is_fused_na_enabled', 'use_fna', 'is_fna_enabled', 'use_kv_parallelism_in_fused_na',
    'is_kv_parallelism_in_fused_na_enabled', 'use_flex_attention', 'force_flex_attention', 'should_use_flex_attention',
    'should_force_flex_attention',
    'use_deterministic_algorithms', 'are_deterministic_algorithms_enabled', 'set_memory_usage_preference',
    'get_memory_usage_preference', 'is_memory_usage_default', 'is_memory_usage_strict', 'is_memory_usage_unrestricted',
    'use_autotuner', 'disable_autotuner', 'is_autotuner_enabled', 'is_autotuner_enabled_for_forward',
    'is_autotuner_enabled_for_backward', 'is_autotuner_thorough_for_forward', 'is_autotuner_thorough_for_backward',
    'use_tf32_in_gemm_na', 'is_tf32_in_gemm_na_enabled', 'use_tiled_na', 'is_tiled_na_enabled', 'use_gemm_na',
    'is_gemm_na_enabled', 'enable_tf32', 'disable_tf32', 'enable_gemm_na', 'disable_gemm_na', 'enable_tiled_na',
    'disable_tiled_na', 'allow_flex_compile', 'allow_flex_compile_backprop', 'disable_flex_compile',
    'disable_flex_compile_backprop', 'is_flex_compile_allowed', 'is_flex_compile_backprop_allowed',
    'has_cuda', 'has_half', 'has_bfloat', 'has_gemm', 'has_fna', 'has_fused_na', 'has_tf32_gemm', 'has_fp32_gemm',
    'has_fp64_gemm',
]

_logger = logging.getLogger('visionattn.compat.natten')
_said = set()
# What NATTEN's switches were last set to; nothing in visionattn reads these.
_flags = dict(fused=False, flex=False, force_flex=False, kv_parallelism=False, deterministic=False, memory='default',
              autotuner_forward=False, autotuner_backward=False, autotuner_thorough_forward=False,
              autotuner_thorough_backward=False, tf32=False, tiled=True, gemm=False, flex_compile=False,
              flex_compile_backprop=False)
_MEMORY_PREFERENCES = ('default', 'strict', 'unrestricted')


def _say(name: str, what: str) -> None:
    if name not in _said:
        _said.add(name)
        _logger.info('natten.%s (visionattn drop-in): %s', name, what)


_NO_KERNEL_CHOICE = 'recorded only; visionattn runs its own neighborhood-attention op whatever the setting'


def use_fused_na(mode: bool = True, kv_parallel: bool = True, use_flex_attention: bool = False,
                 force_flex_attention: bool = False) -> None:
    """Records the setting as NATTEN 0.17 does (off by default; off also turns KV parallelism and Flex off); the
    computation is the same either way: visionattn always runs its one op (fused on CUDA)."""
    _say('use_fused_na', 'recorded only; visionattn always runs its fused neighborhood-attention op')
    mode = bool(mode)
    _flags.update(fused=mode, flex=mode and bool(use_flex_attention), force_flex=mode and bool(force_flex_attention),
                  kv_parallelism=mode and bool(kv_parallel))


def is_fused_na_enabled() -> bool:
    """The value last given to :func:`use_fused_na` (False until then, as in NATTEN 0.17, whose default kernels
    were the unfused ones); what runs does not depend on it."""
    return _flags['fused']


use_fna = use_fused_na
is_fna_enabled = is_fused_na_enabled


def use_kv_parallelism_in_fused_na(mode: bool = True) -> None:
    """Records the setting; visionattn's Triton kernels choose their own parallelism."""
    _say('use_kv_parallelism_in_fused_na', _NO_KERNEL_CHOICE)
    _flags['kv_parallelism'] = bool(mode)


def is_kv_parallelism_in_fused_na_enabled() -> bool:
    """The value last given to :func:`use_kv_parallelism_in_fused_na` (or ``use_fused_na``)."""
    return _flags['kv_parallelism']


def use_flex_attention() -> None:
    """Records the setting as NATTEN does (``use_fused_na`` with Flex); visionattn does not run NA through
    FlexAttention (its own kernels are faster at NAT's shapes)."""
    _say('use_flex_attention', 'recorded only; visionattn does not use FlexAttention')
    use_fused_na(True, use_flex_attention=True)


def force_flex_attention() -> None:
    """Records the setting, as :func:`use_flex_attention`."""
    _say('force_flex_attention', 'recorded only; visionattn does not use FlexAttention')
    use_fused_na(True, use_flex_attention=True, force_flex_attention=True)


def should_use_flex_attention() -> bool:
    """The Flex setting last recorded (NATTEN 0.17.5's query); nothing here runs FlexAttention."""
    return _flags['flex']


def should_force_flex_attention() -> bool:
    """The forced-Flex setting last recorded."""
    return _flags['force_flex']


def use_deterministic_algorithms(mode: bool = True) -> None:
    """Records the setting; use ``torch.use_deterministic_algorithms`` for PyTorch's own switch."""
    _say('use_deterministic_algorithms', _NO_KERNEL_CHOICE)
    _flags['deterministic'] = bool(mode)


def are_deterministic_algorithms_enabled() -> bool:
    """The value last given to :func:`use_deterministic_algorithms`."""
    return _flags['deterministic']


def set_memory_usage_preference(pref: str = 'default') -> None:
    """Records 'default', 'strict' or 'unrestricted' (NATTEN's kernel-tiling preference); nothing reads it here."""
    if pref not in _MEMORY_PREFERENCES:
        raise ValueError(f'natten.set_memory_usage_preference: pref={pref!r} must be one of '
                         f'{", ".join(_MEMORY_PREFERENCES)}')
    _say('set_memory_usage_preference', _NO_KERNEL_CHOICE)
    _flags['memory'] = pref


def get_memory_usage_preference() -> str:
    """The preference last set (a string; NATTEN returns an enum member of the same name)."""
    return _flags['memory']


def is_memory_usage_default() -> bool:
    """Whether the recorded preference is 'default'."""
    return _flags['memory'] == 'default'


def is_memory_usage_strict() -> bool:
    """Whether the recorded preference is 'strict'."""
    return _flags['memory'] == 'strict'


def is_memory_usage_unrestricted() -> bool:
    """Whether the recorded preference is 'unrestricted'."""
    return _flags['memory'] == 'unrestricted'


def use_autotuner(forward_pass: Optional[bool] = None, backward_pass: Optional[bool] = None,
                  thorough_mode_forward: Optional[bool] = None, thorough_mode_backward: Optional[bool] = None,
                  warmup_steps_forward: Optional[int] = None, warmup_steps_backward: Optional[int] = None,
                  steps_forward: Optional[int] = None, steps_backward: Optional[int] = None) -> None:
    """Records which passes NATTEN's autotuner would tune; visionattn's kernels use Triton's autotuning."""
    _say('use_autotuner', _NO_KERNEL_CHOICE)
    for key, value in (('autotuner_forward', forward_pass), ('autotuner_backward', backward_pass),
                       ('autotuner_thorough_forward', thorough_mode_forward),
                       ('autotuner_thorough_backward', thorough_mode_backward)):
        if value is not None:
            _flags[key] = bool(value)


def disable_autotuner() -> None:
    """Records the autotuner as off."""
    use_autotuner(False, False, False, False)


def is_autotuner_enabled() -> bool:
    """Whether either pass was recorded as autotuned."""
    return _flags['autotuner_forward'] or _flags['autotuner_backward']


def is_autotuner_enabled_for_forward() -> bool:
    """The recorded forward setting of :func:`use_autotuner`."""
    return _flags['autotuner_forward']


def is_autotuner_enabled_for_backward() -> bool:
    """The recorded backward setting of :func:`use_autotuner`."""
    return _flags['autotuner_backward']


def is_autotuner_thorough_for_forward() -> bool:
    """The recorded ``thorough_mode_forward``."""
    return _flags['autotuner_thorough_forward']


def is_autotuner_thorough_for_backward() -> bool:
    """The recorded ``thorough_mode_backward``."""
    return _flags['autotuner_thorough_backward']


def use_tf32_in_gemm_na(mode: bool = True) -> None:
    """Records the setting (NATTEN's GEMM kernels); use ``torch.backends.cuda.matmul.allow_tf32`` for PyTorch's."""
    _say('use_tf32_in_gemm_na', _NO_KERNEL_CHOICE)
    _flags['tf32'] = bool(mode)


def is_tf32_in_gemm_na_enabled() -> bool:
    """The value last given to :func:`use_tf32_in_gemm_na`."""
    return _flags['tf32']


def use_tiled_na(mode: bool = True) -> None:
    """Records the setting (NATTEN's tiled unfused kernels)."""
    _say('use_tiled_na', _NO_KERNEL_CHOICE)
    _flags['tiled'] = bool(mode)


def is_tiled_na_enabled() -> bool:
    """The value last given to :func:`use_tiled_na` (default True, as NATTEN)."""
    return _flags['tiled']


def use_gemm_na(mode: bool = True) -> None:
    """Records the setting (NATTEN's GEMM-based unfused kernels)."""
    _say('use_gemm_na', _NO_KERNEL_CHOICE)
    _flags['gemm'] = bool(mode)


def is_gemm_na_enabled() -> bool:
    """The value last given to :func:`use_gemm_na`."""
    return _flags['gemm']


def enable_tf32() -> bool:
    """NATTEN 0.15's name: :func:`use_tf32_in_gemm_na` (True); returns True."""
    use_tf32_in_gemm_na(True)
    return True


def disable_tf32() -> bool:
    """NATTEN 0.15's name: :func:`use_tf32_in_gemm_na` (False); returns False."""
    use_tf32_in_gemm_na(False)
    return False


def enable_gemm_na() -> bool:
    """NATTEN 0.15's name: :func:`use_gemm_na` (True); returns True."""
    use_gemm_na(True)
    return True


def disable_gemm_na() -> bool:
    """NATTEN 0.15's name: :func:`use_gemm_na` (False); returns False."""
    use_gemm_na(False)
    return False


def enable_tiled_na() -> bool:
    """NATTEN 0.15's name: :func:`use_tiled_na` (True); returns True."""
    use_tiled_na(True)
    return True


def disable_tiled_na() -> bool:
    """NATTEN 0.15's name: :func:`use_tiled_na` (False); returns False."""
    use_tiled_na(False)
    return False


def allow_flex_compile(mode: bool = True, backprop: bool = False) -> None:
    """Records the setting (NATTEN >= 0.20's torch.compile of FlexAttention); visionattn does not use Flex."""
    _say('allow_flex_compile', _NO_KERNEL_CHOICE)
    _flags['flex_compile'] = bool(mode)
    _flags['flex_compile_backprop'] = bool(mode and backprop)


def allow_flex_compile_backprop(mode: bool = True) -> None:
    """Records the setting, as :func:`allow_flex_compile`."""
    _say('allow_flex_compile_backprop', _NO_KERNEL_CHOICE)
    _flags['flex_compile_backprop'] = bool(mode)


def disable_flex_compile() -> None:
    """Records Flex compilation as off."""
    allow_flex_compile(False)


def disable_flex_compile_backprop() -> None:
    """Records Flex compilation of the backward pass as off."""
    allow_flex_compile_backprop(False)


def is_flex_compile_allowed() -> bool:
    """The value last given to :func:`allow_flex_compile`."""
    return _flags['flex_compile']


def is_flex_compile_backprop_allowed() -> bool:
    """The value last given to :func:`allow_flex_compile_backprop`."""
    return _flags['flex_compile_backprop']


def get_device_cc(device_index: Optional[int] = None) -> int:
    """The CUDA device's compute capability as ``10 * major + minor`` (NATTEN 0.15's ``natten.functional`` and
    0.17's ``natten.utils``); without a CUDA device it raises as ``torch.cuda.get_device_capability`` does."""
    major, minor = torch.cuda.get_device_capability(device_index)
    return major * 10 + minor


def _kernels_run() -> bool:
    """Whether visionattn's Triton kernels run here: Triton is installed, a CUDA device is available and
    ``VISIONATTN_BACKEND`` does not force the reference backend."""
    return _TRITON_AVAILABLE and torch.cuda.is_available() and env_backend() != 'reference'


def has_cuda() -> bool:
    """Whether visionattn's kernels run (Triton and a CUDA device), as NATTEN's says whether its CUDA build and a
    CUDA device are there. False on a CPU-only machine, where the ops still run on the reference path."""
    return _kernels_run()


def has_half(device_index: Optional[int] = None) -> bool:
    """Whether the kernels run in float16 (NATTEN: CUDA and compute capability >= 5.0): :func:`has_cuda`. The
    reference path takes float16 as well; NATTEN answers for its kernels, hence False without CUDA."""
    return _kernels_run()


def has_bfloat(device_index: Optional[int] = None) -> bool:
    """Whether the kernels run in bfloat16: :func:`has_cuda` and compute capability >= 8.0 (NATTEN's bound)."""
    return _kernels_run() and get_device_cc(device_index) >= 80


def has_fna(device_index: Optional[int] = None) -> bool:
    """Whether the fused kernels run (NATTEN: built with FNA and a device that runs it): :func:`has_cuda`. Code that
    turns fused NA on when this is True changes nothing here; the op is fused on every device."""
    return _kernels_run()


has_fused_na = has_fna


def has_gemm(device_index: Optional[int] = None) -> bool:
    """False: visionattn has no GEMM-based neighborhood-attention kernels (nor needs them)."""
    return False


def has_tf32_gemm(device_index: Optional[int] = None) -> bool:
    """False, as :func:`has_gemm`."""
    return False


def has_fp32_gemm(device_index: Optional[int] = None) -> bool:
    """False, as :func:`has_gemm`."""
    return False


def has_fp64_gemm(device_index: Optional[int] = None) -> bool:
    """False, as :func:`has_gemm`."""
    return False
