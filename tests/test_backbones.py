"""The backbone contract, parametrised over the zoo's own registry: every family added later falls under it."""
import re
import warnings
from functools import lru_cache

import numpy as np
import pytest
import timm
import torch
from torch import nn

import visionattn
from visionattn.profile import measure

pytestmark = pytest.mark.backbones

BIG_PARAMS = 50e6  # variants above this run under the `slow` marker


@lru_cache(maxsize=None)
def _params(name):
    return measure(name).params


def _zoo(names):
    return [pytest.param(n, marks=pytest.mark.slow) if _params(n) > BIG_PARAMS else n for n in names]


OWN_MODELS = _zoo(visionattn.list_models(adopted=False))


def _input(model, batch=2, seed=0):
    cfg = model.pretrained_cfg
    if cfg.get('fixed_input_size'):
        size = cfg['input_size']
    else:
        size = cfg.get('min_input_size') or (3, 64, 64)
    return torch.randn((batch, *size), generator=torch.Generator().manual_seed(seed))


def _create(name, **kwargs):
    torch.manual_seed(0)
    return timm.create_model(name, **kwargs)


def test_zoo_has_models():
    assert OWN_MODELS, 'visionattn registered no model'


@pytest.mark.parametrize('name', OWN_MODELS)
def test_forward(name):
    model = _create(name).eval()
    x = _input(model)
    with torch.no_grad():
        out = model(x)
    assert out.shape == (2, model.num_classes)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize('name', OWN_MODELS)
def test_backward_reaches_every_parameter(name):
    model = _create(name, num_classes=10).train()
    out = model(_input(model))
    out.square().mean().backward()
    missing = [n for n, p in model.named_parameters()
               if p.requires_grad and (p.grad is None or not p.grad.abs().sum())]
    assert not missing, f'no gradient reaches {missing}'


@pytest.mark.parametrize('name', OWN_MODELS)
def test_grad_checkpointing_keeps_output(name):
    model = _create(name).eval()
    x = _input(model)
    with torch.no_grad():
        expected = model(x)
    model.set_grad_checkpointing(True)
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected)


@pytest.mark.parametrize('name', OWN_MODELS)
def test_features_only(name):
    model = _create(name, features_only=True).eval()
    x = _input(model)
    with torch.no_grad():
        features = model(x)
    info = model.feature_info
    assert len(features) >= 3
    assert [f.shape[1] for f in features] == info.channels()
    assert [x.shape[-1] // f.shape[-1] for f in features] == info.reduction()


def _smallest_per_family():
    from visionattn.zoo import family
    smallest = {}
    for name in visionattn.list_models(adopted=False):
        best = smallest.get(family(name))
        if best is None or _params(name) < _params(best):
            smallest[family(name)] = name
    return sorted(smallest.values())


@pytest.mark.parametrize('name', _smallest_per_family())
def test_features_only_refuses_bad_out_indices(name):
    # Issue 21: unsorted or repeated out_indices gave tensors that disagreed with feature_info; an empty tuple and an
    # index past the last level failed in max() or with an IndexError.
    for bad in ((2, 0), (), (0, 9)):
        with pytest.raises(ValueError, match='indices'):
            _create(name, features_only=True, out_indices=bad)
    # Levels that are not ints (a config's 1.0, a bool) failed inside the model's stage slicing with "slice indices
    # must be integers", naming neither out_indices nor the value; NumPy ints are levels.
    for bad in ((1.0, 2.0), 2.0, (True, 2)):
        with pytest.raises(ValueError, match='levels are ints'):
            _create(name, features_only=True, out_indices=bad)
    assert len(_create(name, features_only=True, out_indices=(np.int64(0), 1)).feature_info.channels()) == 2


@pytest.mark.parametrize('name', _smallest_per_family())
def test_forward_under_cpu_autocast(name):
    # CPU autocast casts other ops than CUDA's (layer_norm and sum keep the input's dtype there): every family runs
    # under bf16 autocast on the CPU, with mixed-dtype maps reaching its custom layers, and stays near its fp32 output.
    model = _create(name).eval()
    x = _input(model)
    with torch.no_grad():
        expected = model(x)
        with torch.autocast('cpu', dtype=torch.bfloat16):
            out = model(x)
    assert torch.isfinite(out).all()
    scale = expected.abs().max().item()
    assert (out.float() - expected).abs().max().item() <= 0.1 * scale + 1e-3


@pytest.mark.parametrize('name', OWN_MODELS)
def test_forward_intermediates(name):
    model = _create(name).eval()
    x = _input(model)
    with torch.no_grad():
        final, intermediates = model.forward_intermediates(x)
        torch.testing.assert_close(final, model.forward_features(x))
        only = model.forward_intermediates(x, intermediates_only=True)
    assert len(intermediates) == len(only) >= 3
    for a, b in zip(intermediates, only):
        torch.testing.assert_close(a, b)
    # stopping early with the final features asked for: features, or a clear error (NAT and LaMamba failed inside
    # the final norm, as timm's Swin does; adversarial probe)
    try:
        with torch.no_grad():
            model.forward_intermediates(x, indices=(0,), stop_early=True)
    except ValueError as error:
        assert 'intermediates_only=True' in str(error)
    model.prune_intermediate_layers(indices=1, prune_head=True)
    with torch.no_grad():
        assert len(model.forward_intermediates(x, indices=1, intermediates_only=True)) == 1


@pytest.mark.parametrize('name', OWN_MODELS)
def test_default_cfg(name):
    model = timm.create_model(name, device='meta')
    cfg = model.pretrained_cfg
    for key in ('input_size', 'mean', 'std', 'crop_pct', 'interpolation', 'first_conv', 'classifier', 'license',
                'pool_size', 'num_classes', 'origin_url', 'paper_ids'):
        assert cfg.get(key) is not None, f'{name} pretrained cfg has no {key}'
    assert isinstance(model.get_submodule(cfg['first_conv']), nn.Conv2d)
    assert model.get_submodule(cfg['classifier']).out_features == cfg['num_classes']
    feats = model.forward_features(torch.empty((1, *cfg['input_size']), device='meta'))
    assert tuple(feats.shape[-2:]) == tuple(cfg['pool_size'])


@pytest.mark.parametrize('name', OWN_MODELS)
def test_reset_classifier_and_headless(name):
    model = _create(name).eval()
    x = _input(model)
    headless = _create(name, num_classes=0, global_pool='').eval()
    classifier = model.pretrained_cfg['classifier'] + '.'
    headless.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith(classifier)})
    # timm's rule: without a classifier the model returns the pre-logits, head_hidden_size wide (num_features unless
    # a conv head sits before the classifier, as in FasterNet and PATNet, where it still runs on the unpooled map).
    width = getattr(model, 'head_hidden_size', None) or model.num_features
    with torch.no_grad():
        features = model.forward_features(x)
        model.reset_classifier(0)
        pre_logits = model(x)
        assert pre_logits.shape == (2, width)
        torch.testing.assert_close(pre_logits, model.forward_head(features, pre_logits=True))
        out = headless(x)
        # a conv head (PATNet, FasterNet) runs even headless, also where its width equals num_features (patnet_l)
        if not isinstance(getattr(model, 'conv_head', None), torch.nn.Conv2d):
            torch.testing.assert_close(out, features)
        else:
            assert out.shape == (2, width, *features.shape[-2:])


@pytest.mark.parametrize('name', OWN_MODELS)
def test_torchscript_and_fx(name):
    model = _create(name).eval()
    x = _input(model)
    with torch.no_grad():
        expected = model(x)
        torch.testing.assert_close(torch.fx.symbolic_trace(model)(x), expected)
        # A family whose attention runs through custom ops says why it cannot be scripted (a class attribute).
        reason = getattr(model, 'torchscript_unsupported', None)
        if reason is None:
            torch.testing.assert_close(torch.jit.script(model)(x), expected)
        else:
            assert isinstance(reason, str) and reason, 'torchscript_unsupported must give the reason'
            with pytest.raises(RuntimeError, match='cannot be scripted with torch.jit.script: ' + re.escape(reason)):
                torch.jit.script(model)  # the reason, not TorchScript's error inside an op (adversarial probe)


@pytest.mark.parametrize('name', OWN_MODELS)
def test_empty_batch_gives_empty_outputs(name):
    # Issue 21: a batch of no image failed differently in every family (a reshape of 0 elements in BiFormer and the
    # ECA-ResNets, the attention op's refusal in NAT/DiNAT, a warning in PATNet). Every family now gives the outputs of
    # a one-image batch with 0 rows, in eval and training (where backward runs too).
    model = _create(name).eval()
    one, empty = _input(model, batch=1), _input(model, batch=0)
    calls = {'forward': model, 'forward_features': model.forward_features,
             'forward_intermediates': lambda x: model.forward_intermediates(x, intermediates_only=True)}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter('error', UserWarning)  # PATNet's std of no value warned
        for what, call in calls.items():
            expected, got = call(one), call(empty)
            expected = [expected] if torch.is_tensor(expected) else expected
            got = [got] if torch.is_tensor(got) else got
            assert [tuple(t.shape) for t in got] == [(0, *t.shape[1:]) for t in expected], what
    model.train()
    out = model(empty)
    assert out.shape == (0, model.num_classes)
    out.sum().backward()


@pytest.mark.parametrize('name', _smallest_per_family())
def test_bad_images_are_named(name):
    # Issue 21 sweep: an image without its batch axis and uint8 images failed inside the network (LaMamba in a sparse
    # permute, the others in a conv with a dtype message); each family with its own stem names the expected input.
    model = _create(name).eval()
    x = _input(model, batch=2)
    bad = {'3-D': x[0], 'uint8': (x * 50 + 128).clamp(0, 255).to(torch.uint8)}
    if not isinstance(model, timm.models.ResNet):  # ELA/ECA-ResNet are timm's own ResNet class: torch's messages
        for what, images in bad.items():
            with pytest.raises(ValueError, match=r'expects images of shape .* got .*' + str(images.dtype)):
                model(images)
            with pytest.raises(ValueError, match='expects images'):
                model.forward_intermediates(images)


# --- adversarial campaign (timm / mm user's view of the zoo API) ---------------------------------------------------

@pytest.mark.parametrize('name', _smallest_per_family())
def test_nhwc_intermediates_keep_the_final_features_nchw(name):
    # NAT/DiNAT and LaMamba returned their final features NHWC under output_fmt='NHWC': forward_head then pooled the
    # wrong axes, silently so with num_classes=0 (a [B, H] "pre-logits" vector).
    model = _create(name, num_classes=0).eval()
    x = torch.randn(1, 3, 32, 32)
    try:
        with torch.no_grad():
            final, intermediates = model.forward_intermediates(x, output_fmt='NHWC')
    except ValueError as error:  # families without NHWC output say so
        assert "output_fmt='NHWC'" in str(error)
        return
    with torch.no_grad():
        torch.testing.assert_close(final, model.forward_features(x))
        torch.testing.assert_close(model.forward_head(final), model(x))
    assert intermediates[-1].shape[-1] == model.feature_info[-1]['num_chs']


@pytest.mark.parametrize('name', _smallest_per_family())
def test_classifier_on_an_unpooled_map_is_refused(name):
    # num_classes > 0 with global_pool='' failed only at the first forward, in a matmul naming neither argument.
    with pytest.raises(ValueError, match="global_pool=''"):
        _create(name, num_classes=5, global_pool='')
    model = _create(name, num_classes=0, global_pool='')
    with pytest.raises(ValueError, match="global_pool=''"):
        model.reset_classifier(5)  # keeps the '' pooling
    model.reset_classifier(5, 'avg')
    with torch.no_grad():
        assert model.eval()(_input(model, batch=1)).shape == (1, 5)
    with pytest.raises(ValueError, match="global_pool=''"):
        model.reset_classifier(5, '')


@pytest.mark.parametrize('name', _smallest_per_family())
def test_forward_intermediates_refuses_unordered_or_repeated_indices(name):
    # timm's ResNet (ECA/ELA-ResNet) sorted and deduplicated them: indices=[2, 1] gave levels 1, 2 and [0, 0] one map;
    # stop_early without intermediates_only returned a truncated map as the final features.
    model = _create(name).eval()
    x = _input(model, batch=1)
    for bad in ([2, 1], [0, 0]):
        with pytest.raises(ValueError, match='indices'):
            model.forward_intermediates(x, indices=bad)
        with pytest.raises(ValueError, match='indices'):
            model.prune_intermediate_layers(indices=bad)
    with pytest.raises(ValueError, match='intermediates_only=True'):
        model.forward_intermediates(x, indices=[1], stop_early=True)


@pytest.mark.parametrize('name', _smallest_per_family())
def test_features_only_grad_checkpointing_keeps_outputs_and_gradients(name):
    # timm's FeatureGetterNet (the zoo families' features_only wrapper) had no set_grad_checkpointing.
    model = _create(name, features_only=True, out_indices=(0, 1)).train()  # stages 0-1 only: fast on CPU
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))

    def run():
        model.zero_grad()
        features = model(x)
        sum(f.square().mean() for f in features).backward()
        return [f.detach() for f in features], {n: p.grad.clone() for n, p in model.named_parameters()
                                                if p.grad is not None}

    expected, grads = run()
    model.set_grad_checkpointing(True)
    features, checkpointed = run()
    torch.testing.assert_close(features, expected)
    assert grads.keys() == checkpointed.keys() and grads
    for n in grads:
        torch.testing.assert_close(checkpointed[n], grads[n], msg=n)


def test_lamamba_names_its_smallest_input():
    # Images under 4x4 failed inside the stem conv ("Kernel size can't be greater than actual input size").
    model = _create('lamamba_tiny').eval()
    with pytest.raises(ValueError, match='LaMamba needs images of at least 4x4.*got 3x8'):
        model(torch.randn(1, 3, 3, 8))


def test_biformer_features_only_loads_a_checkpoint_in_its_own_layout(tmp_path):
    # A classifier checkpoint already in this layout (tools/publish.py's) skipped the fresh extra_norms that
    # features_only adds, so pretrained=True failed with missing keys extra_norms.*.
    source = _create('biformer_t')
    path = tmp_path / 'biformer_t.pth'
    torch.save(source.state_dict(), path)
    model = timm.create_model('biformer_t', pretrained=True, features_only=True,
                              pretrained_cfg_overlay=dict(file=str(path)))
    torch.testing.assert_close(model.model.stem[0].weight, source.stem[0].weight)
    torch.testing.assert_close(model.model.extra_norms[0].weight, torch.ones(64))


@pytest.mark.parametrize('name', _smallest_per_family())
def test_pruning_to_an_early_stage_leaves_a_working_trunk(name):
    # NAT/DiNAT and LaMamba kept the final LayerNorm (sized for the last stage) and the classifier when
    # prune_intermediate_layers dropped the later stages: forward, forward_features and forward_intermediates failed
    # inside the norm ("Given normalized_shape=[512] ..."), and num_features still gave the dropped stage's width.
    # timm's Swin and ConvNeXt drop the norm and the head, and give the kept stage's width.
    model = _create(name).eval()
    x = _input(model, batch=1)
    with torch.no_grad():
        expected = model.forward_intermediates(x, indices=[1], intermediates_only=True)[0]
    take = model.prune_intermediate_layers(indices=[0, 1], prune_head=False)
    width = model.feature_info[take[-1]]['num_chs']
    assert model.num_classes == 0
    assert model.num_features == width and getattr(model, 'head_hidden_size', width) == width
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected)
        final, intermediates = model.forward_intermediates(x, indices=take)
    torch.testing.assert_close(final, expected)
    torch.testing.assert_close(intermediates[-1], expected)


@pytest.mark.parametrize('name', _smallest_per_family())
def test_features_only_extractor_classes_match_feature_info(name):
    # timm's 'hook'/'fx'/'list'/'dict' extractors take each feature_info module's output. NAT/DiNAT's levels.i and
    # LaMamba's layers.i end in the next stage's downsampler, channels-last: 'hook' and 'fx' silently gave maps of twice
    # the channels and half the size feature_info states, NHWC. BiFormer's skipped the extra_norms of its features_only
    # model; 'list'/'dict' failed in an assert on stage names. Each extractor now gives forward_intermediates' maps
    # or a ValueError naming feature_cls.
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = _create(name).eval().forward_intermediates(x, indices=[1, 2], intermediates_only=True)
    for feature_cls in ('hook', 'fx', 'list', 'dict'):
        try:
            model = _create(name, features_only=True, out_indices=(1, 2), feature_cls=feature_cls).eval()
        except ValueError as error:
            assert 'feature_cls' in str(error), feature_cls
            continue
        with torch.no_grad():
            features = model(x)
        features = list(features.values()) if isinstance(features, dict) else features
        info = model.feature_info
        assert [f.shape[1] for f in features] == info.channels(), feature_cls
        assert [x.shape[-1] // f.shape[-1] for f in features] == info.reduction(), feature_cls
        torch.testing.assert_close(features, expected, msg=feature_cls)


@pytest.mark.parametrize('name', _smallest_per_family())
def test_features_only_getter_by_name_keeps_grad_checkpointing(name):
    # feature_cls='getter' (timm's name for the zoo's default extractor) gave timm's FeatureGetterNet, which has no
    # set_grad_checkpointing, instead of the zoo's FeatureGetter.
    model = _create(name, features_only=True, feature_cls='getter', out_indices=(0, 1))
    model.set_grad_checkpointing(True)
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    sum(f.sum() for f in model(x)).backward()


@pytest.mark.parametrize('name', _smallest_per_family())
def test_reset_classifier_keeps_the_model_dtype(name):
    # NAT/DiNAT and LaMamba built the new classifier in torch's default dtype and device, as did BiFormer once its
    # head had been removed (num_classes=0): after model.to(bfloat16) (or .cuda()) the first forward failed in a matmul
    # ("mat1 and mat2 must have the same dtype"). timm's ResNet and ConvNeXt build it like the model's parameters.
    model = _create(name).eval().to(torch.bfloat16)
    x = _input(model, batch=1).bfloat16()
    for num_classes, global_pool in ((10, None), (0, None), (7, 'avg')):
        model.reset_classifier(num_classes, global_pool)
        with torch.no_grad():
            out = model(x)
        assert out.dtype == torch.bfloat16 and out.shape == (1, num_classes or out.shape[1])
        assert all(p.dtype == torch.bfloat16 for p in model.parameters())


# --- adversarial probe: timm user's kwargs and API calls ------------------------------------------------------------

def _group_matcher_params():
    return [(name, coarse) for name in _smallest_per_family() for coarse in (False, True)]


@pytest.mark.parametrize('name, coarse', _group_matcher_params())
def test_group_matcher_follows_the_forward_order(name, coarse):
    # timm's layer decay (param_groups_layer_decay) scales each group's learning rate by its depth in the network.
    # LaMamba's patch merging closes stage i (after its last block) but was grouped with stage i's first block, so it
    # got a smaller learning rate than the blocks before it. Every parameter is in one group, and the groups of the
    # modules a forward calls never go back.
    from timm.models import group_parameters
    model = _create(name).eval()
    group_of = group_parameters(model, model.group_matcher(coarse=coarse), reverse=True)
    assert sorted(group_of) == sorted(n for n, _ in model.named_parameters())
    order = []
    for module_name, module in model.named_modules():
        if next(module.parameters(recurse=False), None) is not None:
            module.register_forward_pre_hook(
                lambda *_, module_name=module_name: order.append(module_name) if module_name not in order else None)
    with torch.no_grad():
        model(_input(model, batch=1))
    groups = [sorted({group_of[f'{m}.{p}' if m else p] for p, _ in model.get_submodule(m).named_parameters(
        recurse=False)}) for m in order]
    backwards = [(a, b) for a, b, ga, gb in zip(order, order[1:], groups, groups[1:]) if gb[0] < ga[-1]]
    assert not backwards, f'groups go back along the forward at {backwards[:3]}'


@pytest.mark.parametrize('name', _smallest_per_family())
def test_reset_classifier_refuses_what_create_model_refuses(name):
    # timm.create_model refuses num_classes=-1 (issue 21), but reset_classifier(-1) built a model reporting
    # num_classes == -1 with no classifier, and reset_classifier(True) / (2.5) failed inside torch.empty.
    model = _create(name).eval()
    for bad in (-1, True, 2.5, '10'):
        with pytest.raises(ValueError, match=re.escape(f'num_classes={bad!r}')):
            model.reset_classifier(bad)
        assert model.num_classes == 1000
    model.reset_classifier(3)
    with torch.no_grad():
        assert model(_input(model, batch=1)).shape == (1, 3)


@pytest.mark.parametrize('name', _smallest_per_family())
def test_whole_model_pickles(name):
    # torch.save(model) (and multiprocessing's spawn) pickle the model: ECA-ResNet's _build_args held the per-stage
    # ECA factory, a local closure ("Can't pickle local object '_eca_per_stage.<locals>.make'").
    import pickle
    model = _create(name).eval()
    x = _input(model, batch=1)
    copy = pickle.loads(pickle.dumps(model))
    with torch.no_grad():
        torch.testing.assert_close(copy(x), model(x), rtol=0, atol=0)
    assert copy._build_args.keys() == model._build_args.keys()


_THREE_STAGES = [  # a smaller, three-stage model of each stage-by-stage family, as a user would ask timm for it
    ('biformer_t', dict(depths=(1, 1, 1), embed_dims=(64, 128, 256), mlp_ratios=(3, 3, 3), topks=(1, 4, -2))),
    ('lamamba_tiny', dict(depths=(1, 1, 1), dims=(32, 64, 128), num_heads=(1, 2, 4))),
    ('nat_mini', dict(depths=(1, 1, 1), num_heads=(2, 4, 8))),
    ('patnet_t0', dict(depths=(1, 1, 1))),
]


@pytest.mark.parametrize('name, kwargs', _THREE_STAGES)
def test_features_only_default_levels_follow_the_stage_count(name, kwargs):
    # features_only without out_indices asked for four levels whatever the depths: a three-stage model failed with
    # "indices=(0, 1, 2, 3): feature index 3 is out of range", naming out_indices the user never gave.
    model = _create(name, features_only=True, **kwargs).eval()
    with torch.no_grad():
        features = model(torch.randn(1, 3, 64, 64))
    assert len(features) == len(model.feature_info) == 3
    assert [f.shape[1] for f in features] == model.feature_info.channels()


@pytest.mark.parametrize('name', ['eca_resnet18', 'ela_resnet18'])
def test_resnet_output_stride_is_checked_by_name(name):
    # timm's ResNet takes output_stride 8, 16 or 32 (dilated later stages); any other value failed in a bare
    # AssertionError with no message. The strides it takes give features whose reductions feature_info states.
    for bad in (4, 64, 0):
        with pytest.raises(ValueError, match=f'output_stride={bad}'):
            _create(name, output_stride=bad)
    x = torch.randn(1, 3, 64, 64)
    for stride in (8, 16):
        model = _create(name, features_only=True, output_stride=stride).eval()
        with torch.no_grad():
            features = model(x)
        assert [x.shape[-1] // f.shape[-1] for f in features] == model.feature_info.reduction()
        assert model.feature_info.reduction()[-1] == stride


@pytest.mark.parametrize('name', _smallest_per_family())
def test_head_hidden_size_is_the_pre_logits_width_under_every_pooling(name):
    # biformer_t with global_pool='catavgmax' reported head_hidden_size 512 and returned 1024 pre-logits features
    # (timm's ResNet reports the pooled width, 1024); families whose heads refuse a pooling say so by name.
    for pool in ('avg', 'catavgmax'):
        try:
            model = _create(name, global_pool=pool, num_classes=3).eval()
        except ValueError as error:
            assert 'global_pool' in str(error)
            continue
        size = 224 if name.startswith('dinat') else 64
        with torch.no_grad():
            pre = model.forward_head(model.forward_features(torch.randn(1, 3, size, size)), pre_logits=True)
        assert pre.shape[-1] == model.head_hidden_size, (name, pool)
        model.reset_classifier(0, 'avg')
        with torch.no_grad():
            pre = model.forward_head(model.forward_features(torch.randn(1, 3, size, size)), pre_logits=True)
        assert pre.shape[-1] == model.head_hidden_size, (name, pool, 'reset')


# --- adversarial probe: what timm's training tools read from a model ------------------------------------------------

@pytest.mark.parametrize('name', _smallest_per_family())
def test_timm_optimizer_skips_the_no_weight_decay_keywords(name):
    # The official Swin-style recipes (NAT/DiNAT, LaMamba) skip weight decay for every parameter whose name holds one
    # of no_weight_decay_keywords(); timm's optimizer factory reads only no_weight_decay(), so timm's train.py silently
    # decayed NAT's rpb and LaMamba's relative_position_bias_table and A_logs.
    from timm.optim import create_optimizer_v2
    model = timm.create_model(name, device='meta')
    keywords = model.no_weight_decay_keywords() if hasattr(model, 'no_weight_decay_keywords') else ()
    optimizer = create_optimizer_v2(model, 'adamw', lr=1e-3, weight_decay=0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for group in optimizer.param_groups if group['weight_decay'] for p in group['params']}
    assert decayed, 'no parameter is decayed'
    assert not {n for n in decayed if any(k in n for k in keywords)}


@pytest.mark.parametrize('name', ['eca_resnet18', 'ela_resnet18'])
def test_resnet_attention_arguments_are_checked_by_name(name):
    # block_args=dict(attn_layer=...) was silently replaced by the family's own attention, eca_kernel_sizes turned an
    # ELA-ResNet into an ECA-ResNet, and eca_kernel_sizes short of a stage failed in the first block ("KeyError: 512").
    with pytest.raises(ValueError, match=r"block_args\['attn_layer'\]"):
        _create(name, block_args=dict(attn_layer='se'))
    with pytest.raises(ValueError, match='eca_kernel_sizes'):
        _create(name, eca_kernel_sizes=(3, 3, 3) if name.startswith('eca') else (3, 5, 7, 7))
    model = _create(name, block_args=dict(), drop_rate=0.)
    assert isinstance(model.layer4[-1].se, type(_create(name).layer4[-1].se))
