import subprocess

import pytest

from visionattn.cli import main

pytestmark = pytest.mark.tools


def test_models_prints_the_zoo_table(capsys):
    assert main(['models', 'eca_resnet5*']) == 0
    out = capsys.readouterr().out
    assert out.startswith('| model | family | params (M)')
    row = next(line for line in out.splitlines() if line.startswith('| eca_resnet50 |'))
    assert '| 25.56 | 24.37 ¹ | 4.09 | 3.86 ¹ | 77.42 |' in row


def test_models_names_and_own(capsys):
    assert main(['models', '--names', '--own']) == 0
    names = capsys.readouterr().out.split()
    assert 'ela_resnet50' in names and not any(n.startswith('ecaresnet') for n in names)
    assert main(['models', 'no_such_model*']) == 1


def test_info_through_the_console_script():
    out = subprocess.run(['visionattn', 'info', 'eca_resnet50.in1k'], capture_output=True, text=True, check=True).stdout
    assert 'params:       25,557,112' in out
    assert 'GMACs:        4.089 at 3x224x224' in out
    assert 'licence:      mit' in out
    assert 'id=1670rce333c_lyMWFzBlNZoVUvtxbCF_U' in out


def test_info_unknown_model(capsys):
    assert main(['info', 'eca_resnet5']) == 1
    assert 'similar: eca_resnet50' in capsys.readouterr().err


def test_info_unknown_pretrained_tag(capsys):
    # Issue 21: an unknown tag ended in a traceback; now a message that names the tags there are.
    assert main(['info', 'nat_mini.badtag']) == 1
    err = capsys.readouterr().err
    assert 'badtag' in err and 'nat_mini.in1k' in err


def test_info_says_the_weights_are_unverified(capsys):
    # Issue 22: no own-weight URL carries a sha256, so the check "where one is known" never applied, silently.
    assert main(['info', 'nat_mini']) == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith('checksum:'))
    assert 'unverified' in line and 'no sha256' in line
    assert main(['info', 'efficientvit_m0']) == 0  # hub weights: no such line
    assert 'checksum:' not in capsys.readouterr().out
