"""Timing, memory and reporting helpers shared by the op benchmark suites (GPU only)."""
import platform
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, List, Optional

import torch


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


def measure(suite: str, case: str, impl: str, mode: str, fn: Callable[[], object], flops: float,
            min_bytes: Optional[float] = None, bandwidth: float = 4.3e12) -> Row:
    """Time ``fn`` and its peak memory; an out-of-memory error is recorded as a row, not raised."""
    try:
        ms = time_ms(fn)
        mem = peak_gib(fn)
    except torch.cuda.OutOfMemoryError:
        torch.cuda.empty_cache()
        return Row(suite, case, impl, mode, note='out of memory')
    pct = None if min_bytes is None else 100.0 * (min_bytes / bandwidth) / (ms * 1e-3)
    return Row(suite, case, impl, mode, ms=ms, tflops=flops / (ms * 1e-3) / 1e12, peak_gib=mem, bw_floor_pct=pct)


def environment() -> Dict[str, str]:
    """GPU, driver-level and library versions for the report's header."""
    import triton
    env = {'torch': torch.__version__, 'triton': triton.__version__, 'python': platform.python_version(),
           'cuda': str(torch.version.cuda)}
    if torch.cuda.is_available():
        env['gpu'] = torch.cuda.get_device_name()
    return env


def markdown(rows: List[Row]) -> str:
    head = '| suite | case | impl | mode | ms | TFLOP/s | peak GiB | % of BW floor | note |'
    lines = [head, '|' + '---|' * 9]
    fmt = lambda v, f: '' if v is None else format(v, f)  # noqa: E731
    for r in rows:
        lines.append(f'| {r.suite} | {r.case} | {r.impl} | {r.mode} | {fmt(r.ms, ".3f")} | {fmt(r.tflops, ".1f")} | '
                     f'{fmt(r.peak_gib, ".2f")} | {fmt(r.bw_floor_pct, ".0f")} | {r.note} |')
    return '\n'.join(lines)
