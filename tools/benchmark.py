"""Inference and training speed of zoo models and timm peers, eager and under torch.compile, measured side by side.

    python tools/benchmark.py nat_tiny swin_tiny_patch4_window7_224 --amp --channels-last \\
        --bench infer,train,compile-infer,compile-train,infer-bs8 --batch-size 256 --train-batch-size 128 \\
        --precompile 5 --budget 240 --deadline 540 --out docs/benchmarks/x.md
    python tools/benchmark.py 'patnet_*' 'fasternet_*' --device cpu --batch-size 1 --bench infer --threads 4

Benchmarks (``--bench``, comma-separated, in any order; default ``infer,train``):

- ``infer``: eager forward under ``torch.inference_mode`` at ``--batch-size``.
- ``train``: one eager training step at ``--train-batch-size`` (default ``--batch-size``): forward, cross-entropy
  on random labels, backward, a ``torch.optim.AdamW`` step (lr 1e-4) and ``zero_grad(set_to_none=True)``. Until
  issue 20 the step used SGD with momentum; it is AdamW now, as in the issue's measurements and the recipes of the
  attention backbones (Swin, NAT, BiFormer, ConvNeXt). ``--optimizer adamw`` (the default) is torch's default
  implementation (``foreach`` on CUDA, as timm's and mmengine's builders give it), ``adamw-fused`` its
  ``fused=True`` kernels: about a tenth of the host time for models with hundreds of parameter tensors (BiFormer-S
  has 500: its AdamW step took 10.6 ms of host time per step in the thirteenth session's profile), the same update
  up to rounding.
- ``compile-infer`` / ``compile-train``: the same steps with ``torch.compile(model)`` (``--compile-mode``, default
  torch's default mode; ``--fullgraph``; ``--compile-backend``, default inductor), at the same batches. The optimizer
  step stays eager. Compilation happens at the first call: that call is timed on its own and reported as
  ``*_compile_s``, then ``--warmup`` calls and the ``--iters`` timed calls follow. ``*_graphs`` counts the graphs
  Dynamo compiled for the benchmark (1 means no graph break); a recompilation after the first call is noted.
- ``infer-bsN`` (e.g. ``infer-bs8``, ``infer-bs1``): eager inference at batch N, for latency.
- ``both`` means ``infer,train``, ``all`` every benchmark above with ``infer-bs8``. ``--compile`` (the older flag)
  adds the compiled counterpart of ``infer`` and ``train`` where they are chosen.

Every benchmark reports samples/s, the median step time in ms over ``--iters`` steps, each followed by a device
synchronisation (so the time of one step as its caller waits for it, host work included), and the peak memory of
one step on CUDA. ``--amp`` runs under autocast (bf16 unless ``--amp-dtype fp16``), ``--channels-last`` puts model
and input in channels-last. Names may be fnmatch patterns over the zoo and timm's registry.

A benchmark that runs out of memory or fails (a model that does not compile, say) leaves its error in the row's
note and the run goes on. ``--budget S`` runs each model in a subprocess of its own, killed after S seconds: the row
keeps the benchmarks that finished and says which one the budget stopped, so one slow compilation cannot use up a
GPU lease; ``--deadline S`` bounds the whole run the same way (a model still running at S seconds is stopped, later
ones are skipped, each with a note). The report is rewritten after every model, so an interrupted run keeps what it
measured. ``--precompile N`` first runs only the compiling calls, N models at a time in subprocesses (each under
the budget): compilation is mostly single-threaded host work, so this takes about the time of the slowest model,
and the measuring pass (one model at a time, nothing else running) then compiles from Inductor's on-disk caches.
The pre-pass's seconds are ``*_cold_compile_s`` (measured with N compilations sharing the host, an upper bound),
the measuring pass's ``*_compile_s``; a compilation that failed or ran out of budget there is not tried again.
Markdown (with torch, triton, timm versions and the GPU in its header) and CSV go to ``--out``.
"""
import argparse
import csv
import fnmatch
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Callable, Dict, List, Optional

import timm
import torch
import torch.nn.functional as F
from tqdm import tqdm

import visionattn
from visionattn.profile import measure

BASE_COLUMNS = ('model', 'params_m', 'gmacs', 'img_size', 'batch', 'train_batch')
METRICS = ('samples_per_s', 'step_ms', 'peak_gib')
COMPILE_METRICS = ('compile_s', 'cold_compile_s', 'graphs')
FIXED_BENCHES = ('infer', 'train', 'compile-infer', 'compile-train')
DEFAULT_BENCHES = 'infer,train'
ALL_BENCHES = 'infer,train,compile-infer,compile-train,infer-bs8'
_SMALL_BATCH = re.compile(r'infer-bs([1-9][0-9]*)')


def parse_benches(text: str, compile_too: bool = False) -> List[str]:
    """The benchmarks named in ``text`` (comma-separated) in running order: eager inference, small-batch inference
    (largest batch first), eager training, compiled inference, compiled training."""
    names = []
    for token in (t.strip() for t in text.split(',')):
        if token == 'both':
            names += ['infer', 'train']
        elif token == 'all':
            names += ALL_BENCHES.split(',')
        elif token in FIXED_BENCHES or _SMALL_BATCH.fullmatch(token):
            names.append(token)
        elif token:
            raise argparse.ArgumentTypeError(
                f'unknown benchmark {token!r}: expected {", ".join(FIXED_BENCHES)}, infer-bsN, both or all')
    if compile_too:
        names += ['compile-' + n for n in names if n in ('infer', 'train')]
    if not names:
        raise argparse.ArgumentTypeError('no benchmark chosen')

    def rank(name):
        small = _SMALL_BATCH.fullmatch(name)
        if small:
            return 1, -int(small.group(1))
        return {'infer': 0, 'train': 2, 'compile-infer': 3, 'compile-train': 4}[name], 0
    return sorted(dict.fromkeys(names), key=rank)


def column_prefix(bench: str) -> str:
    """'infer' -> 'infer', 'compile-train' -> 'compile_train', 'infer-bs8' -> 'infer_bs8'."""
    return bench.replace('-', '_')


def columns(benches: List[str]) -> List[str]:
    cols = list(BASE_COLUMNS)
    for bench in benches:
        prefix = column_prefix(bench)
        cols += [f'{prefix}_{m}' for m in METRICS]
        if bench.startswith('compile-'):
            cols += [f'{prefix}_{m}' for m in COMPILE_METRICS]
    return cols + ['note']


def resolve_models(patterns):
    """Expand fnmatch patterns over the zoo and timm's registry, keeping the order given and dropping repeats."""
    names = []
    for pattern in patterns:
        if any(c in pattern for c in '*?['):
            zoo = visionattn.list_models(pattern)
            found = zoo or sorted(fnmatch.filter(timm.list_models(), pattern))
            if not found:
                raise SystemExit(f'no model matches {pattern!r}')
            names.extend(found)
        elif timm.is_model(pattern.split('.')[0]):
            names.append(pattern)
        else:
            raise SystemExit(f'unknown model {pattern!r} (not in the zoo or timm; did you import its package?)')
    return list(dict.fromkeys(names))


# ---------------------------------------------------------------------------------------------------------------
# measuring


def _synchronize(device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def _timed_calls(step, device, iters):
    """Median seconds of ``iters`` calls of ``step``, each followed by a synchronisation."""
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        step()
        _synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _time_steps(step, device, warmup, iters):
    """Median seconds per call of ``step`` after ``warmup`` calls."""
    for _ in range(warmup):
        step()
    _synchronize(device)
    return _timed_calls(step, device, iters)


def _peak(device, fn):
    if device.type != 'cuda':
        return None
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    _synchronize(device)
    return torch.cuda.max_memory_allocated(device) / 2 ** 30


def _graph_count() -> int:
    """Graphs Dynamo has compiled in this process so far."""
    from torch._dynamo.utils import counters
    return int(counters['stats']['unique_graphs'])


def _short(error: BaseException, limit: int = 180) -> str:
    """The error's type and first non-empty line (Inductor's errors run to pages)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = f'{type(error).__name__}: {lines[0] if lines else ""}'
    return text if len(text) <= limit else text[:limit - 3] + '...'


def _round(value, digits=2):
    return None if value is None else round(value, digits)


def fuse_conv_bn(model: torch.nn.Module, input_size, device, name: str) -> torch.nn.Module:
    """An inference copy of ``model`` with every BatchNorm that directly follows a convolution folded into it, as
    FasterNet's and PartialNet's official speed measurements do (their ``--fuse_conv_bn``): torch.fx traces the
    model and fuses the Conv2d -> BatchNorm2d pairs of its graph (``torch.fx.experimental.optimization.fuse``). The
    copy must give the model's output on a random input (float32), or this raises naming the model."""
    from torch.fx.experimental.optimization import fuse
    model.eval()
    try:
        fused = fuse(model)
    except Exception as error:
        raise RuntimeError(f'--fuse-conv-bn: {name} could not be traced by torch.fx: {_short(error)}') from error
    x = torch.randn((2, *input_size), device=device)
    with torch.no_grad():
        expected, got = model(x), fused(x)
    error = (got - expected).abs().max().item()
    if not error <= 1e-2 * expected.abs().max().item() + 1e-5:
        raise RuntimeError(f'--fuse-conv-bn changed {name}\'s output (max |difference| {error:.3g})')
    return fused


class _Setup:
    """What every benchmark of one model shares: the model, its input size, autocast and memory format."""

    def __init__(self, name, args, device):
        self.name, self.args, self.device = name, args, device
        self.memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
        self.amp_dtype = {'bf16': torch.bfloat16, 'fp16': torch.float16}[args.amp_dtype]
        self.model = timm.create_model(name, pretrained=False).to(device, memory_format=self.memory_format)
        self.input_size = None
        self._inference_model = None

    def inference_model(self) -> torch.nn.Module:
        """The model the inference benchmarks run: the model, or with --fuse-conv-bn its fused copy (made once)."""
        if not self.args.fuse_conv_bn:
            return self.model
        if self._inference_model is None:
            fused = fuse_conv_bn(self.model, self.input_size, self.device, self.name)
            self._inference_model = fused.to(memory_format=self.memory_format)  # the folded weights' layout too
        return self._inference_model

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp_dtype) if self.args.amp else nullcontext()

    def batch_of(self, bench):
        small = _SMALL_BATCH.fullmatch(bench)
        if small:
            return int(small.group(1))
        if bench.endswith('train'):
            return self.args.train_batch_size or self.args.batch_size
        return self.args.batch_size

    def inputs(self, batch):
        x = torch.randn((batch, *self.input_size), device=self.device).to(memory_format=self.memory_format)
        return x, torch.randint(0, self.model.num_classes, (batch,), device=self.device)

    def runner(self, bench):
        model = self.model if bench.endswith('train') else self.inference_model()
        if not bench.startswith('compile-'):
            return model
        args = self.args
        mode = None if args.compile_mode == 'default' else args.compile_mode
        return torch.compile(model, mode=mode, fullgraph=args.fullgraph, backend=args.compile_backend)

    def step(self, bench, runner, x, target) -> Callable[[], None]:
        model = self.model
        if not bench.endswith('train'):
            model.eval()

            def infer():
                with torch.inference_mode(), self.autocast():
                    runner(x)
            return infer
        model.train()
        optimizer = make_optimizer(model, self.args.optimizer)

        def train():
            with self.autocast():
                loss = F.cross_entropy(runner(x), target)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        train.optimizer = optimizer
        return train


OPTIMIZERS = ('adamw', 'adamw-fused')


def make_optimizer(model: torch.nn.Module, choice: str) -> torch.optim.Optimizer:
    """The training benchmarks' AdamW (lr 1e-4): torch's default implementation, or its fused kernels."""
    if choice not in OPTIMIZERS:
        raise ValueError(f'optimizer {choice!r}: choose one of {", ".join(OPTIMIZERS)}')
    extra = dict(fused=True) if choice == 'adamw-fused' else {}
    return torch.optim.AdamW(model.parameters(), lr=1e-4, **extra)


def run_bench(setup: _Setup, bench: str, compile_only: bool = False) -> Dict[str, object]:
    """One benchmark of one model: its columns, and a note where something went wrong (raises nothing but
    KeyboardInterrupt). ``compile_only`` stops a compiled benchmark after its compiling call (--precompile)."""
    args, device = setup.args, setup.device
    prefix = column_prefix(bench)
    batch = setup.batch_of(bench)
    compiled = bench.startswith('compile-')
    out: Dict[str, object] = {}
    step = None
    try:
        x, target = setup.inputs(batch)
        runner = setup.runner(bench)
        step = setup.step(bench, runner, x, target)
        first_graphs = None
        if compiled:
            before = _graph_count()
            _synchronize(device)
            start = time.perf_counter()
            step()  # compilation happens here
            _synchronize(device)
            out[f'{prefix}_compile_s'] = round(time.perf_counter() - start, 1)
            first_graphs = _graph_count()
            out[f'{prefix}_graphs'] = first_graphs - before
            if compile_only:
                return out
        seconds = _time_steps(step, device, args.warmup, args.iters)
        out[f'{prefix}_samples_per_s'] = round(batch / seconds, 1)
        out[f'{prefix}_step_ms'] = round(seconds * 1e3, 3)
        out[f'{prefix}_peak_gib'] = _round(_peak(device, step))
        if compiled:
            total = _graph_count()
            out[f'{prefix}_graphs'] = total - before
            if total > first_graphs:
                out['note'] = f'{bench}: {total - first_graphs} graph(s) recompiled after the first call'
    except torch.OutOfMemoryError:
        out['note'] = f'{bench}: out of memory at batch {batch}'
    except Exception as error:  # a model that fails to compile or run is a row with its error, the run goes on
        out['note'] = f'{bench}: {_short(error)}'
    finally:
        optimizer = getattr(step, 'optimizer', None)
        if optimizer is not None:
            optimizer.state.clear()
        del step
        setup.model.zero_grad(set_to_none=True)
        if compiled:
            torch._dynamo.reset()  # the compiled graphs of this benchmark are not needed again
        if device.type == 'cuda':
            torch.cuda.empty_cache()
    return out


def bench_model(name: str, args, device, benches: List[str],
                progress: Optional[Callable[[dict, Optional[str]], None]] = None, compile_only: bool = False) -> dict:
    """Every chosen benchmark of one model, in order. ``progress(row, running)`` is told before each benchmark
    starts (``running`` its name) and at the end (``running`` None). ``compile_only``: only the compiling call of
    the compiled benchmarks."""
    if compile_only:
        benches = [b for b in benches if b.startswith('compile-')]
    row = {'model': name, 'batch': args.batch_size, 'note': ''}
    if any(b.endswith('train') for b in benches):
        row['train_batch'] = args.train_batch_size or args.batch_size
    if progress:
        progress(row, 'setup')
    counted = measure(name, (3, args.img_size, args.img_size) if args.img_size else None)
    row.update(params_m=round(counted.params_m, 3), gmacs=round(counted.gmacs, 3), img_size=counted.input_size[-1])
    setup = _Setup(name, args, device)
    setup.input_size = counted.input_size
    notes = []
    for bench in benches:
        if progress:
            progress(row, bench)
        result = run_bench(setup, bench, compile_only)
        if 'note' in result:
            notes.append(result.pop('note'))
        row.update(result)
        row['note'] = '; '.join(notes)
    if progress:
        progress(row, None)
    return row


# ---------------------------------------------------------------------------------------------------------------
# subprocesses: one per model under --budget, several at once for --precompile


def _write_json(path: Path, data) -> None:
    tmp = path.with_suffix('.tmp')
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def _worker(spec_path: str) -> None:
    """Run one model's benchmarks as the spec written by :class:`_Worker` asks, recording progress."""
    spec = json.loads(Path(spec_path).read_text())
    args = argparse.Namespace(**spec['args'])
    out = Path(spec['out'])
    device = _setup_device(args)
    last = {'row': {'model': spec['model'], 'batch': args.batch_size}, 'running': 'setup'}

    def progress(row, running):
        last.update(row=row, running=running)
        _write_json(out, last)
    try:
        bench_model(spec['model'], args, device, spec['benches'], progress=progress,
                    compile_only=spec['compile_only'])
    except Exception as error:  # e.g. a model that cannot be built: its row says why
        row = dict(last['row'])
        row['note'] = '; '.join(n for n in (row.get('note'), f"{last['running']}: {_short(error, 300)}") if n)
        _write_json(out, {'row': row, 'running': None})


class _Worker:
    """:func:`bench_model` for one model in a subprocess of its own session, killed (with the compile workers it
    started) once its time limit has passed: ``args.budget`` seconds, or less where the run's ``--deadline`` comes
    first (no limit when neither is set)."""

    def __init__(self, name: str, args, benches: List[str], compile_only: bool = False):
        self.name, self.args = name, args
        budget = args.budget if args.budget > 0 else float('inf')
        left = args.deadline_at - time.monotonic() if args.deadline_at else float('inf')
        self.limit, self.why = (budget, f'the {budget:g} s budget') if budget <= left else \
            (max(left, 0.0), f'the --deadline of {args.deadline:g} s')
        self._tmp = tempfile.TemporaryDirectory(prefix='benchmark_')
        spec, self._out = Path(self._tmp.name) / 'spec.json', Path(self._tmp.name) / 'row.json'
        plain = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != 'deadline_at'}
        _write_json(spec, {'model': name, 'args': plain, 'benches': benches, 'out': str(self._out),
                           'compile_only': compile_only})
        self.start = time.monotonic()
        self.deadline = None if self.limit == float('inf') else self.start + self.limit
        self.stopped = False
        self.proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), '--worker', str(spec)],
                                     start_new_session=True)

    def poll(self) -> bool:
        """Whether the worker is done, killing it when its budget has run out."""
        if self.proc.poll() is not None:
            return True
        if self.deadline is not None and time.monotonic() >= self.deadline:
            self.stopped = True
            self.kill()
            return True
        return False

    def wait(self) -> None:
        try:
            self.proc.wait(timeout=None if self.deadline is None else max(0.0, self.deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.stopped = True
        finally:
            self.kill()  # at the budget, or when this process is interrupted

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)  # the worker and its compile workers
            self.proc.wait()

    def result(self):
        """The worker's row (the benchmarks it finished, a note for the one the budget stopped or the worker died
        in) and the benchmark that did not finish (None if all did)."""
        state = (json.loads(self._out.read_text()) if self._out.exists()
                 else {'row': {'model': self.name}, 'running': 'setup'})
        self._tmp.cleanup()
        row, running = state['row'], state['running']
        row.setdefault('batch', self.args.batch_size)
        notes = [n for n in [row.get('note', '')] if n]
        code = self.proc.returncode
        if self.stopped:
            notes.append(f'{running}: stopped at {self.why} (model total {time.monotonic() - self.start:.0f} s)')
        elif code != 0:
            notes.append(f'{running or "after the last benchmark"}: the worker exited with code {code}')
        else:
            running = None
        row['note'] = '; '.join(notes)
        return row, running


def _run_isolated(name: str, args, benches: List[str]) -> dict:
    worker = _Worker(name, args, benches)
    worker.wait()
    return worker.result()[0]


def _precompile(names: List[str], args, benches: List[str]) -> Dict[str, dict]:
    """The compiling calls of the compiled benchmarks, ``args.precompile`` models at a time, each in its own
    subprocess under the budget. It fills Inductor's and Triton's on-disk caches, so the measuring pass compiles
    from them; returns per model its cold compile seconds, graphs, notes and the benchmarks not to run again (they
    failed or ran out of budget)."""
    compiled = [b for b in benches if b.startswith('compile-')]
    pending, running, results = list(names), [], {}
    try:
        while pending or running:
            while pending and len(running) < args.precompile:
                running.append(_Worker(pending.pop(0), args, compiled, compile_only=True))
            time.sleep(0.2)
            for worker in [w for w in running if w.poll()]:
                running.remove(worker)
                row, unfinished = worker.result()
                failed = {b for b in compiled if f'{b}: ' in row['note']} | ({unfinished} - {None, 'setup'})
                if unfinished == 'setup':
                    failed |= set(compiled)
                results[worker.name] = dict(row=row, failed=failed)
                tqdm.write(f'precompiled {worker.name}: {json.dumps(row)}')
    finally:
        for worker in running:
            worker.kill()
    return results


def _with_precompiled(row: dict, pre: dict, benches: List[str]) -> dict:
    """The measuring pass's row with the pre-pass's cold compile seconds and notes."""
    for bench in benches:
        if bench.startswith('compile-'):
            prefix = column_prefix(bench)
            if bench not in pre['failed'] and f'{prefix}_compile_s' in pre['row']:
                row[f'{prefix}_cold_compile_s'] = pre['row'][f'{prefix}_compile_s']
    if pre['row'].get('note'):
        row['note'] = '; '.join(n for n in (f"precompile: {pre['row']['note']}", row.get('note')) if n)
    return row


# ---------------------------------------------------------------------------------------------------------------
# report


def environment(args, device, benches: List[str]):
    env = {'torch': torch.__version__, 'timm': timm.__version__, 'visionattn': visionattn.__version__,
           'python': platform.python_version(), 'device': str(device)}
    try:
        import triton
        env['triton'] = triton.__version__
    except ImportError:
        env['triton'] = 'not installed'
    if device.type == 'cuda':
        env['gpu'] = torch.cuda.get_device_name(device)
        env['cuda'] = torch.version.cuda
    else:
        env['cpu'] = platform.processor() or platform.machine()
        env['threads'] = torch.get_num_threads()
    compiled = [b for b in benches if b.startswith('compile-')]
    env['settings'] = (f'benchmarks {",".join(benches)}; batch {args.batch_size}'
                       + (f', train batch {args.train_batch_size or args.batch_size}'
                          if any(b.endswith('train') for b in benches) else '')
                       + f'; amp {args.amp_dtype if args.amp else "off"}, channels_last {args.channels_last}'
                       + ('; conv-BN fused for inference' if args.fuse_conv_bn else '')
                       + (f'; torch.compile mode {args.compile_mode}, backend {args.compile_backend}, '
                          f'fullgraph {args.fullgraph}, recompile limit {args.recompile_limit or "default"}'
                          if compiled else '')
                       + f'; optimizer {"AdamW (fused=True)" if args.optimizer == "adamw-fused" else "AdamW"}; '
                         f'warmup {args.warmup}, iters {args.iters} (median)'
                       + (f'; budget {args.budget:g} s per model' if args.budget else '')
                       + (f'; deadline {args.deadline:g} s' if args.deadline else '')
                       + (f'; precompile {args.precompile} models at a time (cold compile seconds measured so)'
                          if args.precompile and compiled else ''))
    return env


def _cell(value) -> str:
    if value is None:
        return ''
    return str(value).replace('|', '\\|').replace('\n', ' ')


def markdown_table(rows, cols):
    shown = [c for c in cols if any(r.get(c) not in (None, '') for r in rows)]
    lines = ['| ' + ' | '.join(shown) + ' |', '|' + '---|' * len(shown)]
    for r in rows:
        lines.append('| ' + ' | '.join(_cell(r.get(c)) for c in shown) + ' |')
    return '\n'.join(lines)


def _at_least(least: int):
    """An argparse type: a whole number >= ``least`` (0 or a negative batch, size or count was taken, or meant
    'the default', without a word)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f'{text!r} is not a whole number') from None
        if value < least:
            raise argparse.ArgumentTypeError(f'{value} must be at least {least}')
        return value
    return parse


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('models', nargs='+', help='model names or fnmatch patterns (zoo and timm)')
    parser.add_argument('--bench', default=DEFAULT_BENCHES,
                        help='comma-separated: infer, train, compile-infer, compile-train, infer-bsN; both, all '
                             f'(default {DEFAULT_BENCHES})')
    parser.add_argument('--batch-size', type=_at_least(1), default=64,
                        help='batch of infer and compile-infer (and of train when --train-batch-size is not given)')
    parser.add_argument('--train-batch-size', type=_at_least(1), help='batch of train and compile-train')
    parser.add_argument('--img-size', type=_at_least(1), help='square input size (default: each model\'s cfg)')
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--amp', action='store_true', help='autocast (bf16 by default)')
    parser.add_argument('--amp-dtype', choices=('bf16', 'fp16'), default='bf16')
    parser.add_argument('--channels-last', action='store_true')
    parser.add_argument('--fuse-conv-bn', action='store_true',
                        help='inference benchmarks run a copy with each conv\'s BatchNorm folded into it (FasterNet\'s '
                             'and PartialNet\'s speed protocol); training runs the model as it is')
    parser.add_argument('--compile', action='store_true',
                        help='also run compile-infer / compile-train where infer / train are chosen')
    parser.add_argument('--compile-mode', default='default',
                        help="torch.compile mode: default, reduce-overhead, max-autotune, ...")
    parser.add_argument('--compile-backend', default='inductor', help="torch.compile backend ('eager' for tests)")
    parser.add_argument('--fullgraph', action='store_true', help='torch.compile(fullgraph=True): a break is an error')
    parser.add_argument('--recompile-limit', type=int, default=64,
                        help="at least this many compiled versions of one frame (Dynamo's default is 8; 0 keeps it)")
    parser.add_argument('--budget', type=float, default=0.0,
                        help='seconds per model; each model then runs in a subprocess killed at the budget '
                             '(0: in this process, no limit)')
    parser.add_argument('--deadline', type=float, default=0.0,
                        help='seconds for the whole run: models run in subprocesses, a model still running then is '
                             'stopped and later ones are skipped, with notes, and the report is written (0: none)')
    parser.add_argument('--precompile', type=int, default=0, metavar='N',
                        help='first run the compiling calls of the compiled benchmarks, N models at a time in '
                             'subprocesses (each under --budget), so that the measuring pass compiles from '
                             "Inductor's warm on-disk caches; their seconds are reported as *_cold_compile_s")
    parser.add_argument('--optimizer', choices=OPTIMIZERS, default='adamw',
                        help="training benchmarks: torch's default AdamW or AdamW(fused=True)")
    parser.add_argument('--threads', type=_at_least(1), help='torch CPU threads')
    parser.add_argument('--warmup', type=_at_least(0), default=5, help='calls before timing (after the compiling call)')
    parser.add_argument('--iters', type=_at_least(1), default=20, help='timed calls (the median is reported)')
    parser.add_argument('--out', type=Path, help='write a Markdown table here and a CSV beside it')
    args = parser.parse_args(argv)
    try:
        args.benches = parse_benches(args.bench, args.compile)
    except argparse.ArgumentTypeError as error:
        parser.error(str(error))
    return args


def _setup_device(args) -> torch.device:
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.recompile_limit:
        # a frame called at several shapes or argument values (every stage's attention layer) needs one entry each
        import torch._dynamo.config as dynamo_config
        name = 'recompile_limit' if hasattr(dynamo_config, 'recompile_limit') else 'cache_size_limit'
        setattr(dynamo_config, name, max(getattr(dynamo_config, name), args.recompile_limit))
    device = torch.device(args.device)
    if device.type == 'cuda':
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return device


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ['--worker']:
        return _worker(argv[1])
    args = parse_args(argv)
    args.deadline_at = time.monotonic() + args.deadline if args.deadline > 0 else None
    benches = args.benches
    device = _setup_device(args)
    names = resolve_models(args.models)
    cols = columns(benches)
    env = environment(args, device, benches)
    pre = {}
    if args.precompile > 0 and any(b.startswith('compile-') for b in benches):
        pre = _precompile(names, args, benches)
    isolated = args.budget > 0 or args.deadline > 0
    rows = []
    for name in tqdm(names, desc='benchmark', unit='model'):
        todo = [b for b in benches if name not in pre or b not in pre[name]['failed']]
        if args.deadline_at and time.monotonic() >= args.deadline_at:
            row = {'model': name, 'batch': args.batch_size, 'note': f'skipped: the --deadline of {args.deadline:g} s '
                                                                    'had passed'}
        elif isolated:
            row = _run_isolated(name, args, todo)
        else:
            try:
                row = bench_model(name, args, device, todo)
            except Exception as error:  # one broken model must not lose the others' figures
                row = {'model': name, 'batch': args.batch_size, 'note': _short(error, 300)}
        rows.append(_with_precompiled(row, pre[name], benches) if name in pre else row)
        tqdm.write(json.dumps(rows[-1]))
        if args.out:  # after every model, so that an interrupted run still leaves the rows it measured
            write_report(args.out, env, rows, cols)
    print('\n'.join(f'{k}: {v}' for k, v in env.items()))
    print(markdown_table(rows, cols))
    return rows


def write_report(out: Path, env: dict, rows: List[dict], cols: List[str]) -> None:
    """Markdown (the environment, then the table) at ``out`` and CSV beside it."""
    out.parent.mkdir(parents=True, exist_ok=True)
    header = '\n'.join(f'- {k}: {v}' for k, v in env.items())
    out.write_text(f'# Model benchmark\n\n{header}\n\n{markdown_table(rows, cols)}\n')
    with out.with_suffix('.csv').open('w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=cols, extrasaction='ignore')
        writer.writeheader()
        writer.writerows(rows)


if __name__ == '__main__':
    main()
