"""tools/benchmark.py on the CPU at a tiny size: the table and CSV have the measured columns."""
import csv
import importlib.util
from pathlib import Path

import pytest

pytestmark = pytest.mark.tools

ROOT = Path(__file__).resolve().parents[1]


def _tool():
    spec = importlib.util.spec_from_file_location('benchmark_tool', ROOT / 'tools' / 'benchmark.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmark_writes_table_and_csv(tmp_path):
    out = tmp_path / 'bench.md'
    rows = _tool().main(['eca_resnet18', 'resnet18', '--device', 'cpu', '--batch-size', '2', '--img-size', '32',
                         '--warmup', '0', '--iters', '1', '--out', str(out)])
    assert [r['model'] for r in rows] == ['eca_resnet18', 'resnet18']
    for row in rows:
        assert row['infer_samples_per_s'] > 0 and row['train_samples_per_s'] > 0 and not row['note']
    assert rows[0]['params_m'] == pytest.approx(11.69, abs=0.01)  # ECA adds 4 x (3..7) weights to ResNet-18
    with out.with_suffix('.csv').open() as f:
        assert [r['model'] for r in csv.DictReader(f)] == ['eca_resnet18', 'resnet18']
    assert '| eca_resnet18 |' in out.read_text() and '- torch:' in out.read_text()


def test_benchmark_expands_patterns_and_rejects_unknown_names():
    tool = _tool()
    assert sorted(tool.resolve_models(['eca_resnet1*'])) == ['eca_resnet101', 'eca_resnet152', 'eca_resnet18']
    with pytest.raises(SystemExit, match='unknown model'):
        tool.resolve_models(['no_such_model'])
