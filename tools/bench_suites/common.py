"""Timing, memory and reporting helpers shared by the op benchmark suites (GPU only, but for :func:`host_us`).

A suite times a call with :func:`measure`, which also gives the row the host side of the call: ``host_us`` from
:func:`host_us` (the microseconds until the call returns, the device idle at its start) and ``launches`` from
:func:`device_launches` (the kernels, memsets and copies one call puts on the device, from torch.profiler). A suite
that times by other means can call the two helpers itself and set ``Row.host_us`` / ``Row.launches``. Time the
forward+backward through autograd, as training pays it: inputs that require grad and ``torch.autograd.grad`` (or
``backward``) in the timed function.
"""
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, List, Optional

import torch

# measure() adds host_us and launches to every row unless this is False (tools/bench_ops.py --no-host).
HOST_TIMING = True


@dataclass
class Row:
    """One measured case: an implementation of an op at one shape, forward or forward+backward."""
    suite: str
    case: str
    impl: str
    mode: str  # 'fwd' or 'fwd+bwd'
    ms: Optional[float] = None
    tflops: Optional[float] = None  # effective: the op's useful FLOPs / time
    peak_gib: Optional[float] = None
    bw_floor_pct: Optional[float] = None  # the memory-bandwidth floor's time as a share of the measured time
    note: str = ''
    host_us: Optional[float] = None  # host time of one call (host_us())
    launches: Optional[float] = None  # device kernels, memsets and copies per call (device_launches())
    extra: Dict[str, float] = field(default_factory=dict)

    def as_dict(self):
        d = asdict(self)
        d.update(d.pop('extra'))
        return d


def time_ms(fn: Callable[[], object], warmup: int = 10, rep: int = 50) -> float:
    """Median milliseconds of ``fn`` on the current CUDA device (triton's do_bench, L2 flushed between runs)."""
    from triton.testing import do_bench
    return float(do_bench(fn, warmup=warmup, rep=rep, return_mode='median'))


def peak_gib(fn: Callable[[], object]) -> float:
    """Peak CUDA memory allocated during one call of ``fn``, above what was allocated before, in GiB."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2 ** 30


def _synchronize() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def host_us(fn: Callable[[], object], warmup: int = 3, reps: int = 25) -> float:
    """Host time of one call of ``fn``, in microseconds: the median wall time from the call to its return, with
    the device synchronised before each call and after it, outside the timed span; nothing is subtracted.

    This is what the calling thread pays per call: Python, argument checks, backend choice, dispatch, autograd
    bookkeeping (a backward through ``torch.autograd.grad`` included: the call returns when autograd's device
    thread has run it), allocations and kernel launches, plus any wait for the device inside the call (a host
    synchronisation in an op shows up here as device time). A stream of calls runs at the larger of this and the
    device time per call. Works on the CPU too, where it is simply the call's wall time.
    """
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        _synchronize()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
        _synchronize()
    return statistics.median(times) * 1e6


_DEVICE_ACTIVITIES = ('kernel', 'gpu_memcpy', 'gpu_memset')


def device_launches(fn: Callable[[], object], calls: int = 5) -> Optional[float]:
    """Device work items (kernels, memsets, copies) one call of ``fn`` puts on the GPU, counted by torch.profiler
    over ``calls`` calls after one warm-up call; None without CUDA."""
    if not torch.cuda.is_available():
        return None
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile
    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()

    def on_device(event):
        kind = getattr(event, 'activity_type', None)
        if kind:
            return kind in _DEVICE_ACTIVITIES
        return event.device_type == DeviceType.CUDA and 'sync' not in event.name.lower()
    return sum(1 for event in prof.events() if on_device(event)) / calls


def measure(suite: str, case: str, impl: str, mode: str, fn: Callable[[], object], flops: float,
            min_bytes: Optional[float] = None, bandwidth: float = 4.3e12, host: Optional[bool] = None) -> Row:
    """Time ``fn`` and its peak memory, and (``host``, default :data:`HOST_TIMING`) its host time and device
    launches per call; an out-of-memory error is recorded as a row, not raised."""
    host = HOST_TIMING if host is None else host
    try:
        ms = time_ms(fn)
        mem = peak_gib(fn)
        host_time = host_us(fn) if host else None
        launches = device_launches(fn) if host else None
    except torch.cuda.OutOfMemoryError:
        torch.cuda.empty_cache()
        return Row(suite, case, impl, mode, note='out of memory')
    pct = None if min_bytes is None else 100.0 * (min_bytes / bandwidth) / (ms * 1e-3)
    return Row(suite, case, impl, mode, ms=ms, tflops=flops / (ms * 1e-3) / 1e12, peak_gib=mem, bw_floor_pct=pct,
               host_us=host_time, launches=launches)


def environment() -> Dict[str, str]:
    """GPU, driver-level and library versions for the report's header."""
    import triton
    env = {'torch': torch.__version__, 'triton': triton.__version__, 'python': platform.python_version(),
           'cuda': str(torch.version.cuda)}
    if torch.cuda.is_available():
        env['gpu'] = torch.cuda.get_device_name()
    return env


def markdown(rows: List[Row]) -> str:
    head = '| suite | case | impl | mode | ms | TFLOP/s | peak GiB | % of BW floor | host µs | launches | note |'
    lines = [head, '|' + '---|' * 11]
    fmt = lambda v, f: '' if v is None else format(v, f)  # noqa: E731
    for r in rows:
        lines.append(f'| {r.suite} | {r.case} | {r.impl} | {r.mode} | {fmt(r.ms, ".3f")} | {fmt(r.tflops, ".1f")} | '
                     f'{fmt(r.peak_gib, ".2f")} | {fmt(r.bw_floor_pct, ".0f")} | {fmt(r.host_us, ".0f")} | '
                     f'{fmt(r.launches, "g")} | {r.note} |')
    return '\n'.join(lines)
