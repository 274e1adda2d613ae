"""The zoo as a whole: names, adoption, reference parameter counts and the README's table."""
import fnmatch
import json
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torchvision

import visionattn
from visionattn.profile import MeasurementError, measure
from visionattn.zoo import ADOPTED

pytestmark = pytest.mark.tools

ROOT = Path(__file__).resolve().parents[1]
WITH_REFERENCE = [n for n in visionattn.list_models() if (f := visionattn.paper_facts(n)) and f.reference_params]


def _run(code):
    return subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True).stdout


def test_no_name_collides_with_timm():
    # A fresh interpreter: timm's own registry first, then what visionattn adds (a clash would only warn).
    out = json.loads(_run(
        'import json, timm; before = set(timm.list_models()); import visionattn; '
        'ours = visionattn.list_models(adopted=False); '
        'print(json.dumps(dict(ours=ours, clash=sorted(before & set(ours)), '
        'modules=sorted({timm.models.model_entrypoint(n).__module__ for n in ours}))))'))
    assert out['ours'] and not out['clash']
    assert all(m.startswith('visionattn.backbones.') for m in out['modules'])


def test_import_registers_backbones_only():
    loaded = json.loads(_run('import json, sys, visionattn; print(json.dumps(sorted(sys.modules)))'))
    assert 'visionattn.backbones.resnet_attn' in loaded
    assert not [m for m in loaded if m.startswith(('visionattn.heads', 'visionattn.engine', 'mmengine'))]


def test_adopted_models_are_timm_models():
    adopted = [n for n in visionattn.list_models() if visionattn.is_adopted(n)]
    for pattern in ADOPTED:
        assert fnmatch.filter(adopted, pattern), f'timm has no {pattern} model to adopt'
    assert all(timm.models.model_entrypoint(n).__module__.startswith('timm.') for n in adopted)
    assert not set(adopted) & set(visionattn.list_models(adopted=False))


@pytest.mark.parametrize('name', WITH_REFERENCE)
def test_params_match_reference_count(name):
    reference = visionattn.paper_facts(name).reference_params
    measured = measure(name).params
    assert abs(measured - reference) <= 0.01 * reference, f'{name}: {measured:,} vs reference {reference:,}'


@pytest.mark.parametrize('name, kernels, blocks', [
    ('eca_resnet18', (3, 5, 7, 7), (2, 2, 2, 2)),
    ('eca_resnet34', (3, 3, 5, 7), (3, 4, 6, 3)),
    ('eca_resnet50', (3, 5, 5, 7), (3, 4, 6, 3)),
    ('eca_resnet101', (3, 3, 5, 7), (3, 4, 23, 3)),
    ('eca_resnet152', (3, 3, 5, 7), (3, 8, 36, 3)),
])
def test_eca_reference_is_the_official_architecture(name, kernels, blocks):
    # ECANet's models are torchvision's ResNets plus one bias-free Conv1d(1, 1, k) per block.
    base = getattr(torchvision.models, name.replace('eca_', ''))()
    official = sum(p.numel() for p in base.parameters()) + sum(k * n for k, n in zip(kernels, blocks))
    assert visionattn.paper_facts(name).reference_params == official
    # The paper prints thop's count in binary millions; the real count explains the printed one.
    assert abs(official / 2 ** 20 - visionattn.paper_facts(name).params_m) < 0.01


def test_readme_zoo_table_is_current():
    zoo_table = runpy.run_path(str(ROOT / 'tools' / 'zoo_table.py'))
    readme = zoo_table['readme_table']((ROOT / 'README.md').read_text())
    assert readme == zoo_table['current_table'](), 'README zoo table is stale: python tools/zoo_table.py --write'


def test_zoo_table_tool_names_a_bad_readme_before_measuring(tmp_path, capsys):
    # Adversarial probe: a missing README, one without the table markers or an unwritable one ended in tracebacks,
    # after every model had been measured.
    zoo_table = runpy.run_path(str(ROOT / 'tools' / 'zoo_table.py'))
    no_markers = tmp_path / 'README.md'
    no_markers.write_text('# a README without the zoo table\n')
    for args, message in ((['--check', '--readme', str(tmp_path / 'missing.md')], 'No such file'),
                          (['--write', '--readme', str(no_markers)], 'has no <!-- zoo-table:begin -->')):
        assert zoo_table['main'](args) == 1
        assert message in capsys.readouterr().err


def test_measure_checks_the_input_size_and_follows_the_build():
    # Adversarial probe: input_size (3, 0, 0), (3, -1, 224) or (224, 224) failed deep in a conv or as a negative tensor
    # dimension, [] was silently replaced by the default, and a model built with in_chans=1 was measured (and
    # failed) at 3 channels, one built with img_size=192 silently at 224.
    for bad in ((3, 0, 0), (3, -1, 224), (224, 224), (3, 224.0, 224), []):
        with pytest.raises(ValueError, match='input_size must be three positive integers'):
            measure('eca_resnet18', bad)
    assert measure('eca_resnet18', in_chans=1).input_size == (1, 224, 224)
    assert measure('efficientvit_m0', img_size=192).input_size == (3, 192, 192)
    with pytest.raises(MeasurementError, match=r'patnet_t0 could not be measured at input_size 3x16x16.*at least 32'):
        measure('patnet_t0', (3, 16, 16))


def test_zoo_table_tool_names_misplaced_markers_before_measuring(tmp_path, capsys):
    # Adversarial probe: the end marker before the begin marker (or a second block) passed the README check, and
    # --write then failed with an IndexError after every model had been measured.
    zoo_table = runpy.run_path(str(ROOT / 'tools' / 'zoo_table.py'))
    block = '<!-- zoo-table:begin -->\nold\n<!-- zoo-table:end -->\n'
    for text in ('<!-- zoo-table:end -->\n<!-- zoo-table:begin -->\nold\n', block + block):
        with pytest.raises(ValueError, match='once each'):
            zoo_table['readme_table'](text)
        readme = tmp_path / 'README.md'
        readme.write_text(text)
        assert zoo_table['main'](['--write', '--readme', str(readme)]) == 1
        assert 'once each' in capsys.readouterr().err and readme.read_text() == text
