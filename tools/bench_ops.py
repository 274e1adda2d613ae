"""Benchmark visionattn's op kernels against their references and peers on a CUDA device.

    python tools/bench_ops.py --suite na --out docs/benchmarks/na_h200.md

Each suite (tools/bench_suites/<name>.py) defines ``add_arguments(parser)`` (optional) and ``run(args)``, which
returns the rows; this tool prints them as a table and writes Markdown (with the environment) and CSV.

Ops are timed as a user pays for them: eager, with autograd on (inputs that require grad; forward+backward through
``torch.autograd.grad``), host path included. Beside the device-bound time (``ms``, triton's ``do_bench``) each row
measured with ``bench_suites.common.measure`` has ``host µs``, the host time of one call (the wall time until the
call returns with the device idle at its start; ``common.host_us``), and ``launches``, the kernels, memsets and
copies one call puts on the device (torch.profiler; ``common.device_launches``). ``--no-host`` leaves both out.
"""
import argparse
import csv
import importlib
import json
import pkgutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_suites  # noqa: E402
from bench_suites import common  # noqa: E402
from bench_suites.common import environment, markdown  # noqa: E402

SUITES = sorted(m.name for m in pkgutil.iter_modules(bench_suites.__path__) if m.name != 'common')


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--suite', action='append', choices=SUITES, help='suite(s) to run (default: all)')
    parser.add_argument('--out', type=Path, help='write Markdown here and CSV beside it (same stem)')
    parser.add_argument('--quick', action='store_true', help='fewer shapes, for a smoke run')
    parser.add_argument('--no-host', action='store_true',
                        help='do not measure host time and device launches per call (saves a few seconds a row)')
    suites = {name: importlib.import_module(f'bench_suites.{name}') for name in SUITES}
    for module in suites.values():
        if hasattr(module, 'add_arguments'):
            module.add_arguments(parser)
    args = parser.parse_args(argv)

    import torch
    if not torch.cuda.is_available():
        parser.error('bench_ops.py needs a CUDA device: op speed is measured on GPUs only')
    common.HOST_TIMING = not args.no_host
    rows = []
    for name in args.suite or SUITES:
        rows.extend(suites[name].run(args))
    env = environment()
    table = markdown(rows)
    print(json.dumps(env))
    print(table)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        header = '\n'.join(f'- {k}: {v}' for k, v in env.items())
        args.out.write_text(f'# Op benchmark: {", ".join(args.suite or SUITES)}\n\n{header}\n\n{table}\n')
        with args.out.with_suffix('.csv').open('w', newline='') as f:
            dicts = [r.as_dict() for r in rows]
            fields = list(dict.fromkeys(k for d in dicts for k in d))
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(dicts)


if __name__ == '__main__':
    main()
