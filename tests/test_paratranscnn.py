"""ParaTransCNN: the official parameter count and state-dict layout, forward shapes, the features_only CNN branch,
and clear errors for bad inputs."""
import hashlib

import pytest
import torch
from visionattn.heads.segmentation.paratranscnn import PARATRANSCNN_PARAMS, ParaTransCNN, SelfAttention

pytestmark = pytest.mark.heads

# From the official module (HongkunSun/ParaTransCNN commit 2702b8b, model/ParaTransCNN.py, torchvision 0.29
# resnet34(weights=None)) built in a throwaway script: parameters with 9 and 2 classes, the number of state-dict
# entries, and the sha256 of its sorted 'key:shape' lines (buffers included).
OFFICIAL_PARAMS_9 = 245_468_937
OFFICIAL_PARAMS_2 = 245_466_690
OFFICIAL_STATE_ENTRIES = 377
OFFICIAL_LAYOUT_SHA256 = 'e7c9c50afff82b3fb5ca92862c13501130dee1fd3762acdca46e0a0a4e5369db'
OFFICIAL_KEYS = {
    'firstconv.weight': (64, 3, 7, 7),
    'firstbn.running_var': (64,),
    'encoder1.2.conv2.weight': (64, 64, 3, 3),
    'encoder2.0.downsample.0.weight': (128, 64, 1, 1),
    'encoder4.2.bn2.num_batches_tracked': (),
    'patch_embed_1.weight': (320, 3, 4, 4),
    'patch_embed_3.weight': (1280, 640, 2, 2),
    'vit_1.net.0.fn.norm.weight': (320,),
    'vit_1.net.0.fn.fn.qkv.weight': (960, 320),
    'vit_2.net.1.fn.fn.net.0.weight': (1280, 640),
    'vit_3.net.5.fn.fn.net.3.weight': (1280, 2560),
    'vit_3.net.4.fn.fn.proj.bias': (1280,),
    'SE_1.fc.0.weight': (112, 1792),
    'SE_3.fc.2.weight': (448, 28),
    'decoder1.conv1.weight': (1792, 1792, 3, 3),
    'decoder3.norm3.running_mean': (1344,),
    'up3_1.weight': (1792, 896, 2, 2),
    'up2_1.weight': (1792, 896, 2, 2),
    'up1_1.weight': (1344, 320, 4, 4),
    'out.weight': (9, 320, 1, 1),
}

SMALL = dict(dim=32, depth=(1, 1, 1), heads=2)


@pytest.fixture(scope='module')
def small_model():
    torch.manual_seed(0)
    return ParaTransCNN(num_classes=2, **SMALL)


def _meta_model(**kwargs) -> ParaTransCNN:
    with torch.device('meta'):
        return ParaTransCNN(**kwargs)


def test_parameter_count_equals_the_official_model():
    for num_classes, official in ((9, OFFICIAL_PARAMS_9), (2, OFFICIAL_PARAMS_2)):
        model = _meta_model(num_classes=num_classes)
        assert sum(p.numel() for p in model.parameters()) == official == PARATRANSCNN_PARAMS[num_classes]


def test_state_dict_layout_equals_the_official_one():
    state = _meta_model().state_dict()
    assert len(state) == OFFICIAL_STATE_ENTRIES
    for key, shape in OFFICIAL_KEYS.items():
        assert tuple(state[key].shape) == shape, key
    lines = '\n'.join(f'{k}:{tuple(v.shape)}' for k, v in sorted(state.items()))
    assert hashlib.sha256(lines.encode()).hexdigest() == OFFICIAL_LAYOUT_SHA256


def test_forward_shapes_and_gradients():
    torch.manual_seed(0)
    model = ParaTransCNN(num_classes=4, **SMALL)
    x = torch.randn(2, 3, 32, 48)
    logits = model(x)
    assert logits.shape == (2, 4, 32, 48)
    logits.square().mean().backward()
    assert all(p.grad is not None for p in model.parameters()), 'a parameter got no gradient'
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(x))


def test_strict_round_trip_of_the_state_dict(small_model):
    source = small_model.eval()
    torch.manual_seed(1)
    target = ParaTransCNN(num_classes=2, **SMALL).eval()
    target.load_state_dict(source.state_dict(), strict=True)
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(target(x), source(x))


def test_attention_matches_the_explicit_softmax():
    torch.manual_seed(0)
    attn = SelfAttention(16, heads=4, dropout_rate=0.1).eval()
    x = torch.randn(2, 5, 16)
    q, k, v = attn.qkv(x).view(2, 5, 3, 4, 4).permute(2, 0, 3, 1, 4)
    weights = (q @ k.transpose(-2, -1) * 4 ** -0.5).softmax(-1)
    expected = attn.proj((weights @ v).transpose(1, 2).reshape(2, 5, 16))
    torch.testing.assert_close(attn(x), expected)


@pytest.mark.parametrize('size', [(40, 48), (48, 36)])
def test_size_not_divisible_by_16_is_refused(small_model, size):
    with pytest.raises(ValueError, match='divisible by 16'):
        small_model(torch.zeros(1, 3, *size))


def test_wrong_channel_count_is_refused(small_model):
    with pytest.raises(ValueError, match=r'\[B, 3, H, W\]'):
        small_model(torch.zeros(1, 1, 32, 32))


def test_features_only_backbone_sets_the_fusion_widths():
    model = ParaTransCNN(num_classes=2, cnn_backbone='resnet10t', **SMALL)
    assert model.cnn_channels == (64, 128, 256)  # timm's levels at reductions 4, 8, 16
    assert model.SE_1.fc[0].in_features == 4 * 32 + 256
    assert model.decoder3.conv1.in_channels == (32 + 64) + (64 + 128)
    assert model(torch.rand(1, 3, 32, 32)).shape == (1, 2, 32, 32)


def test_backbone_without_the_needed_reductions_is_refused():
    with pytest.raises(ValueError, match=r'reductions \[4, 8, 16\]'):
        ParaTransCNN(num_classes=2, cnn_backbone='efficientvit_m0', **SMALL)  # levels at 16, 32, 64


def test_resnet34_branch_needs_patch_size_2():
    with pytest.raises(ValueError, match='patch_size=2'):
        _meta_model(patch_size=4)
