"""The README is the front door: its commands are the ones CI runs."""
import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.tools

ROOT = Path(__file__).resolve().parents[1]


def _bash_blocks():
    return re.findall(r'```bash\n(.*?)\n```', (ROOT / 'README.md').read_text(), flags=re.S)


def test_ci_runs_the_readme_install_and_test_commands():
    install, main_job, test = _bash_blocks()[:3]
    lines = (ROOT / '.ci' / 'run').read_text().splitlines()
    ci = [line for line in lines if line and not line.startswith(('#', 'set ', 'cd '))]
    assert ci == [install, test]
    assert main_job == 'python tools/train.py configs/classification/resnet_attn_digits.py'
    assert (ROOT / main_job.split()[-1]).is_file()
