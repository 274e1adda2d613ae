"""The timm families the zoo adopts, under what a task head needs of them; parametrised over the zoo's registry.

Every name comes from ``visionattn.list_models()`` filtered by ``visionattn.is_adopted``: a family added to
``zoo.ADOPTED`` (or a model timm adds to one) falls under these tests without a hand list. Models above 50M
parameters run under the ``slow`` marker.
"""
import copy
import math
from functools import lru_cache

import pytest
import timm
import torch
from timm.layers import DropPath
from torch import nn

import visionattn
from visionattn.zoo import family, paper_facts, weight_source

pytestmark = pytest.mark.backbones

BIG_PARAMS = 50e6
SMALL_INPUT = 64  # stride 32 leaves a 2×2 map: every adopted family accepts it unless its cfg fixes the size


@lru_cache(maxsize=None)
def _params(name):
    return sum(p.numel() for p in timm.create_model(name, device='meta').parameters())


def _adopted():
    names = [n for n in visionattn.list_models() if visionattn.is_adopted(n)]
    return [pytest.param(n, marks=pytest.mark.slow) if _params(n) > BIG_PARAMS else n for n in names]


ADOPTED = _adopted()


def _input(model, batch=2):
    cfg = model.pretrained_cfg
    size = cfg['input_size'] if cfg.get('fixed_input_size') else (3, SMALL_INPUT, SMALL_INPUT)
    return torch.randn((batch, *size), generator=torch.Generator().manual_seed(0))


def _undo_zero_init(model):
    """Give zero-initialised norm gains (timm's zero_init_last residual branches) a value, so gradients flow."""
    with torch.no_grad():
        for module in model.modules():
            weight = getattr(module, 'weight', None)
            if isinstance(module, (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)) and \
                    weight is not None and not weight.any():
                weight.fill_(1.)


def _nchw(feature_model, features):
    """Features as a head consumes them: NCHW (MambaOut's default feature wrapper returns NHWC)."""
    fmt = getattr(feature_model, 'output_fmt', 'NCHW')
    if getattr(fmt, 'value', fmt) == 'NHWC':
        return [f.permute(0, 3, 1, 2) for f in features]
    return list(features)


def _create(name, **kwargs):
    torch.manual_seed(0)
    return timm.create_model(name, **kwargs)


@lru_cache(maxsize=2)
def _cached(name):
    return _create(name)


def _model(name):
    """A fresh copy of the default model (copying is much cheaper than timm's weight init of a large model)."""
    return copy.deepcopy(_cached(name))


def test_zoo_adopts_models():
    assert ADOPTED, 'the zoo adopts no timm model'
    assert not set(visionattn.list_models(adopted=False)) & {getattr(p, 'values', [p])[0] for p in ADOPTED}


@pytest.mark.parametrize('name', ADOPTED)
def test_forward_and_backward_reach_every_parameter(name):
    model = _model(name)
    model.reset_classifier(10)
    model.train()
    _undo_zero_init(model)
    # BatchNorm on running statistics: over a batch of two, a BatchNorm (EfficientViT's BatchNorm1d head) cancels
    # any per-channel shift before it, so biases there get an exact-zero gradient in training mode.
    # Stochastic depth and dropout off too: a dropped branch gets no gradient.
    for module in model.modules():
        if isinstance(module, (nn.modules.batchnorm._BatchNorm, nn.Dropout, DropPath)):
            module.eval()
    out = model(_input(model))
    assert out.shape == (2, 10)
    assert torch.isfinite(out).all()
    (out * torch.randn(out.shape, generator=torch.Generator().manual_seed(1))).sum().backward()
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    missing = [n for n, p in params if p.grad is None]
    assert not missing, f'no gradient reaches {missing}'
    # In the deepest stacks (ecaresnet269d: 89 blocks in layer3) a few ECA kernels of the last blocks get gradients
    # that underflow to exact zeros at random init on a 2-image batch; a broken graph would zero far more.
    zero = [n for n, p in params if not p.grad.abs().sum()]
    assert len(zero) <= 0.02 * len(params), f'exact-zero gradients for {zero}'


@pytest.mark.parametrize('name', ADOPTED)
def test_features_only_for_heads(name):
    model = _create(name, features_only=True).eval()
    x = _input(model, batch=1)
    with torch.no_grad():
        native = model(x)
    features = _nchw(model, native)
    info = model.feature_info
    assert len(features) >= 3, f'{name} gives {len(features)} feature levels; dense heads need 3 or more'
    assert all(f.dim() == 4 for f in features)
    assert [f.shape[1] for f in features] == info.channels()
    for f, reduction in zip(features, info.reduction()):  # maps of sizes not divisible by the stride round up
        for size, extent in zip(x.shape[-2:], f.shape[-2:]):
            assert math.floor(size / reduction) <= extent <= math.ceil(size / reduction)
    if features[0] is not native[0]:
        # NHWC natively (MambaOut): the getter wrapper (forward_intermediates) gives the same maps as NCHW
        getter = _create(name, features_only=True, feature_cls='getter').eval()
        with torch.no_grad():
            for a, b in zip(getter(x), features):
                torch.testing.assert_close(a, b)


@pytest.mark.parametrize('name', ADOPTED)
def test_forward_intermediates(name):
    model = _model(name).eval()
    x = _input(model, batch=1)
    with torch.no_grad():
        final, intermediates = model.forward_intermediates(x)
        torch.testing.assert_close(final, model.forward_features(x))
        only = model.forward_intermediates(x, intermediates_only=True)
    assert len(intermediates) == len(only) >= 3
    for a, b in zip(intermediates, only):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize('name', ADOPTED)
def test_reset_classifier(name):
    model = _model(name).eval()
    x = _input(model, batch=1)
    # timm's convention: without a classifier the model returns its pre-logits, ``head_hidden_size`` wide
    # (FasterNet's 1280-channel conv head, MambaOut's MLP head), else ``num_features``.
    width = getattr(model, 'head_hidden_size', None) or model.num_features
    model.reset_classifier(0)
    with torch.no_grad():
        assert model(x).shape == (1, width)
    model.reset_classifier(7)
    with torch.no_grad():
        assert model(x).shape == (1, 7)


# What a head and the zoo table read from timm's pretrained cfg. timm leaves ``origin_url`` and ``paper_ids``
# out for most adopted families (only FasterNet has both): they are not required here.
_CFG_KEYS = ('input_size', 'mean', 'std', 'crop_pct', 'interpolation', 'first_conv', 'classifier', 'license',
             'pool_size', 'num_classes')


@pytest.mark.parametrize('name', ADOPTED)
def test_default_cfg(name):
    model = timm.create_model(name, device='meta').eval()
    cfg = model.pretrained_cfg
    for key in _CFG_KEYS:
        assert cfg.get(key) is not None, f'{name} pretrained cfg has no {key}'
    assert isinstance(model.get_submodule(cfg['first_conv']), nn.Conv2d)
    assert model.get_submodule(cfg['classifier']).out_features == cfg['num_classes']


@pytest.mark.parametrize('name', ADOPTED)
def test_zoo_lists_family_and_weights(name):
    assert family(name), f'{name} has no family in the zoo'
    source = weight_source(name)
    cfg = timm.get_pretrained_cfg(name)
    assert source == (f'HF hub ({cfg.hf_hub_id})' if cfg.hf_hub_id else 'none')
    facts = paper_facts(name)
    if facts is not None and facts.params_m is not None:  # the paper's count, as printed, matches timm's model
        assert facts.params_m == pytest.approx(_params(name) / 1e6, rel=0.02, abs=0.06)


def _missing_facts():
    return [n for n in visionattn.list_models() if visionattn.is_adopted(n) and paper_facts(n) is None]


def test_every_adopted_model_has_zoo_facts():
    missing = _missing_facts()
    assert not missing, f'no zoo facts for {missing}'


# timm's own code reshapes with -1 on the batch's behalf and cannot take an empty batch: EcaModule's
# ``view(B, 1, -1)`` and EfficientViT-M's attention ``view(B, -1, H, W)``. visionattn does not patch timm's classes;
# its task models give empty outputs themselves (tests/test_reliability.py). Strict: passes once timm fixes them.
TIMM_EMPTY_BATCH_BUGS = ('ECA-ResNet-D/T (timm)', 'EfficientViT-M (timm)')


@pytest.mark.parametrize('name', ADOPTED)
def test_empty_batch_gives_empty_outputs(name):
    # Issue 21: the behaviour on a batch of no image, as for the zoo's own families (tests/test_backbones.py).
    model = _model(name).eval()
    one, empty = _input(model, batch=1), _input(model, batch=0)
    with torch.no_grad():
        try:
            got, expected = model(empty), model(one)
        except RuntimeError as error:
            if family(name) in TIMM_EMPTY_BATCH_BUGS and 'cannot reshape tensor of 0 elements' in str(error):
                pytest.xfail(f'{family(name)}: timm reshapes with -1 and fails on an empty batch')
            raise
    assert family(name) not in TIMM_EMPTY_BATCH_BUGS, f'timm now takes empty batches in {family(name)}: drop it from ' \
                                                        'TIMM_EMPTY_BATCH_BUGS'
    assert got.shape == (0, *expected.shape[1:])
