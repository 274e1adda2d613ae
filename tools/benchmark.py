"""Inference and training throughput of zoo models and timm peers, measured side by side in one run.

    python tools/benchmark.py nat_tiny swin_tiny_patch4_window7_224 --batch-size 256 --amp --out docs/benchmarks/x.md
    python tools/benchmark.py 'patnet_*' 'fasternet_*' --device cpu --batch-size 1 --bench infer --threads 4

For each model: samples/s and step time for inference (forward under inference_mode) and training (forward,
backward and an SGD step), peak memory on CUDA, parameters and GMACs (counted on the meta device by
``visionattn.profile``). Names may be fnmatch patterns over the zoo and timm's registry. A model that runs out of
memory or fails is reported in the table with the error, and the run goes on.
"""
import argparse
import csv
import fnmatch
import json
import platform
import statistics
import time
from contextlib import nullcontext
from pathlib import Path

import timm
import torch
from tqdm import tqdm

import visionattn
from visionattn.profile import measure

COLUMNS = ('model', 'params_m', 'gmacs', 'img_size', 'batch', 'infer_samples_per_s', 'infer_step_ms',
           'infer_peak_gib', 'train_samples_per_s', 'train_step_ms', 'train_peak_gib', 'note')


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


def _synchronize(device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def _time_steps(step, device, warmup, iters):
    """Median seconds per call of ``step`` after ``warmup`` calls."""
    for _ in range(warmup):
        step()
    _synchronize(device)
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        step()
        _synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _peak(device, fn):
    if device.type != 'cuda':
        fn()
        return None
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    _synchronize(device)
    return torch.cuda.max_memory_allocated(device) / 2 ** 30


def bench_model(name, args, device):
    row = {'model': name, 'batch': args.batch_size, 'note': ''}
    counted = measure(name, (3, args.img_size, args.img_size) if args.img_size else None)
    row.update(params_m=round(counted.params_m, 3), gmacs=round(counted.gmacs, 3), img_size=counted.input_size[-1])
    size = (args.batch_size, *counted.input_size)
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    amp_dtype = {'bf16': torch.bfloat16, 'fp16': torch.float16}[args.amp_dtype]
    autocast = torch.autocast(device.type, dtype=amp_dtype) if args.amp else nullcontext()

    model = timm.create_model(name, pretrained=False).to(device, memory_format=memory_format)
    runner = torch.compile(model) if args.compile else model
    x = torch.randn(size, device=device).to(memory_format=memory_format)

    if args.bench in ('infer', 'both'):
        model.eval()

        def infer():
            with torch.inference_mode(), autocast:
                runner(x)
        try:
            seconds = _time_steps(infer, device, args.warmup, args.iters)
            row.update(infer_samples_per_s=round(args.batch_size / seconds, 1), infer_step_ms=round(seconds * 1e3, 3),
                       infer_peak_gib=_round(_peak(device, infer)))
        except torch.OutOfMemoryError:
            row['note'] += 'infer: out of memory; '
    if args.bench in ('train', 'both'):
        model.train()
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
        target = torch.randint(0, model.num_classes, (args.batch_size,), device=device)

        def train():
            with autocast:
                loss = torch.nn.functional.cross_entropy(runner(x), target)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        try:
            seconds = _time_steps(train, device, args.warmup, args.iters)
            row.update(train_samples_per_s=round(args.batch_size / seconds, 1), train_step_ms=round(seconds * 1e3, 3),
                       train_peak_gib=_round(_peak(device, train)))
        except torch.OutOfMemoryError:
            row['note'] += 'train: out of memory; '
    return row


def _round(value, digits=2):
    return None if value is None else round(value, digits)


def environment(args, device):
    env = {'torch': torch.__version__, 'timm': timm.__version__, 'visionattn': visionattn.__version__,
           'python': platform.python_version(), 'device': str(device)}
    if device.type == 'cuda':
        env['gpu'] = torch.cuda.get_device_name(device)
        env['cuda'] = torch.version.cuda
        try:
            import triton
            env['triton'] = triton.__version__
        except ImportError:
            pass
    else:
        env['cpu'] = platform.processor() or platform.machine()
        env['threads'] = torch.get_num_threads()
    env['settings'] = (f'batch {args.batch_size}, amp {args.amp_dtype if args.amp else "off"}, '
                       f'channels_last {args.channels_last}, compile {args.compile}, warmup {args.warmup}, '
                       f'iters {args.iters} (median)')
    return env


def markdown_table(rows):
    shown = [c for c in COLUMNS if any(r.get(c) not in (None, '') for r in rows)]
    lines = ['| ' + ' | '.join(shown) + ' |', '|' + '---|' * len(shown)]
    for r in rows:
        lines.append('| ' + ' | '.join('' if r.get(c) is None else str(r.get(c)) for c in shown) + ' |')
    return '\n'.join(lines)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('models', nargs='+', help='model names or fnmatch patterns (zoo and timm)')
    parser.add_argument('--bench', choices=('infer', 'train', 'both'), default='both')
    parser.add_argument('--batch-size', type=int, default=64)
    parser.add_argument('--img-size', type=int, help='square input size (default: each model\'s cfg)')
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--amp', action='store_true', help='autocast (bf16 by default)')
    parser.add_argument('--amp-dtype', choices=('bf16', 'fp16'), default='bf16')
    parser.add_argument('--channels-last', action='store_true')
    parser.add_argument('--compile', action='store_true', help='torch.compile each model')
    parser.add_argument('--threads', type=int, help='torch CPU threads')
    parser.add_argument('--warmup', type=int, default=5)
    parser.add_argument('--iters', type=int, default=20)
    parser.add_argument('--out', type=Path, help='write a Markdown table here and a CSV beside it')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == 'cuda':
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    names = resolve_models(args.models)
    rows = []
    for name in tqdm(names, desc='benchmark', unit='model'):
        try:
            rows.append(bench_model(name, args, device))
            if device.type == 'cuda':
                torch.cuda.empty_cache()
        except Exception as error:  # one broken model must not lose the others' figures
            rows.append({'model': name, 'batch': args.batch_size, 'note': f'{type(error).__name__}: {error}'[:200]})
        tqdm.write(json.dumps(rows[-1]))
    env = environment(args, device)
    table = markdown_table(rows)
    print('\n'.join(f'{k}: {v}' for k, v in env.items()))
    print(table)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        header = '\n'.join(f'- {k}: {v}' for k, v in env.items())
        args.out.write_text(f'# Model benchmark\n\n{header}\n\n{table}\n')
        with args.out.with_suffix('.csv').open('w', newline='') as f:
            writer = csv.DictWriter(f, fieldnames=COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
    return rows


if __name__ == '__main__':
    main()
