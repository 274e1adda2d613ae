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


def test_info_of_a_tag_names_that_tags_weights(capsys):
    # Adversarial probe: the weights line named the default tag's weights (timm/ecaresnet50t.ra2_in1k) under the
    # source line of the tag asked for.
    assert main(['info', 'ecaresnet50t.a1_in1k']) == 0
    lines = capsys.readouterr().out.splitlines()
    assert 'weights:      HF hub (timm/ecaresnet50t.a1_in1k)' in lines
    assert 'source:       timm/ecaresnet50t.a1_in1k' in lines


def test_info_of_a_hub_id_or_no_name(capsys):
    # Adversarial probe: an hf-hub:<id> was an 'unknown model' with no hint, and an empty name listed every model as
    # 'similar'.
    assert main(['info', 'hf-hub:timm/efficientvit_m0.r224_in1k']) == 0
    assert 'model:        efficientvit_m0.r224_in1k' in capsys.readouterr().out.splitlines()
    assert main(['info', 'hf-hub:someone/not_registered']) == 1
    assert 'is not the hub id of any registered weights' in capsys.readouterr().err
    for name in ('', '.in1k'):
        assert main(['info', name]) == 1
        err = capsys.readouterr().err
        assert 'names no model' in err and 'similar' not in err


def test_models_pattern_with_a_tag_or_a_hub_id(capsys):
    # Adversarial probe: 'nat_mini.in1k' and '*.in1k' matched nothing ('no zoo model matches') though the weights
    # exist; a pattern with a '.' now lists the weights of that tag.
    assert main(['models', '--names', 'nat_mini.in1k']) == 0
    assert capsys.readouterr().out.split() == ['nat_mini.in1k']
    assert main(['models', '--names', '--own', 'biformer_*.in1k']) == 0
    assert capsys.readouterr().out.split() == ['biformer_b.in1k', 'biformer_s.in1k', 'biformer_t.in1k']
    assert main(['models', 'hf-hub:timm/efficientvit_m0.r224_in1k']) == 1
    assert 'not Hugging Face hub ids' in capsys.readouterr().err


def test_info_of_a_model_the_meta_device_cannot_run(monkeypatch, capsys):
    # Adversarial probe: a model with data-dependent shapes (or any timm model the meta device cannot run, such as
    # pit_ti_224) ended `visionattn info` in a traceback; now the rest of the information is printed.
    import timm
    import torch
    real = timm.create_model

    class DataDependent(torch.nn.Module):
        def __init__(self, device=None):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 1, device=device)
            self.pretrained_cfg = dict(input_size=(3, 8, 8))

        def forward(self, x):
            y = self.conv(x)
            return y[y > 0].sum()  # nonzero: its shape depends on the values, which meta tensors do not have

    monkeypatch.setattr(timm, 'create_model', lambda name, **kw: DataDependent(kw.get('device')) if name == 'nat_mini'
                        else real(name, **kw))
    assert main(['info', 'nat_mini']) == 0
    out = capsys.readouterr().out
    assert 'not measured (nat_mini could not be measured at input_size 3x8x8 on the meta device' in out
    assert 'weights:      official, shi-labs.com' in out
