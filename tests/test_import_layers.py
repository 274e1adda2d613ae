"""The import direction (ops -> layers -> backbones -> engine / data -> heads), enforced by import-linter.

The contracts live in pyproject.toml. backbones/ and heads/ are installed as visionattn.backbones and
visionattn.heads (a package-dir mapping that import-linter's graph builder does not follow), so the test lays the
installed package out in a temporary folder and lints that copy.
"""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytest.importorskip('importlinter', reason='import-linter is a dev dependency: pip install -e ".[dev]"')


def _installed_layout(dest: Path) -> Path:
    skip = shutil.ignore_patterns('__pycache__', '*.pyc')
    shutil.copytree(ROOT / 'visionattn', dest / 'visionattn', ignore=skip)
    shutil.copytree(ROOT / 'backbones', dest / 'visionattn' / 'backbones', ignore=skip)
    shutil.copytree(ROOT / 'heads', dest / 'visionattn' / 'heads', ignore=skip)
    shutil.copy(ROOT / 'pyproject.toml', dest / 'pyproject.toml')
    return dest


def _lint(tree: Path) -> subprocess.CompletedProcess:
    code = ('import sys; from importlinter.cli import lint_imports_command; '
            f'sys.exit(lint_imports_command(["--config", {str(tree / "pyproject.toml")!r}, "--no-cache"]))')
    return subprocess.run([sys.executable, '-c', code], cwd=tree, env={'PYTHONPATH': str(tree), 'PATH': ''},
                          capture_output=True, text=True, timeout=300)


def test_import_contracts_are_kept(tmp_path):
    result = _lint(_installed_layout(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert 'Contracts: 2 kept, 0 broken.' in result.stdout


def test_an_upward_import_breaks_the_layers_contract(tmp_path):
    # The check can fail: a layer that imports a task head is reported by name.
    tree = _installed_layout(tmp_path)
    norm = tree / 'visionattn' / 'layers' / 'norm.py'
    norm.write_text(norm.read_text() + '\nfrom ..heads import mm_compat  # noqa: E402,F401\n')
    result = _lint(tree)
    assert result.returncode != 0
    assert 'visionattn.layers.norm -> visionattn.heads.mm_compat' in result.stdout


def test_import_visionattn_imports_only_the_backbones_and_the_zoo_table(tmp_path):
    # The forbidden contract starts from the subpackages; the package's own __init__ is checked here.
    tree = _installed_layout(tmp_path)
    code = ('import grimp; print(sorted(grimp.build_graph("visionattn", cache_dir=None)'
            '.find_modules_directly_imported_by("visionattn")))')
    result = subprocess.run([sys.executable, '-c', code], cwd=tree, env={'PYTHONPATH': str(tree), 'PATH': ''},
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "['visionattn.backbones', 'visionattn.zoo']"
