"""The distribution lists every package of the source tree (an unlisted one would be missing from a wheel)."""
import tomllib
from pathlib import Path

import pytest

pytestmark = pytest.mark.tools

ROOT = Path(__file__).resolve().parents[1]


def _declared():
    setuptools_cfg = tomllib.loads((ROOT / 'pyproject.toml').read_text())['tool']['setuptools']
    return set(setuptools_cfg['packages']), setuptools_cfg['package-dir']


def test_every_package_is_declared():
    packages, package_dir = _declared()
    roots = {'visionattn': ROOT / 'visionattn', **{name: ROOT / path for name, path in package_dir.items()}}
    found = set()
    for name, root in roots.items():
        for init in root.rglob('__init__.py'):
            rel = init.parent.relative_to(root).parts
            found.add('.'.join((name, *rel)))
    assert found - packages == set(), 'packages missing from pyproject.toml [tool.setuptools] packages'
    assert packages - found == set(), 'pyproject.toml lists packages that do not exist'
