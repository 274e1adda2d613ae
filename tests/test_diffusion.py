"""DiT / PixArt denoisers, RelaCtrl, the diffusion task model (loss, samplers), its metrics, the paired data and the
relevance-score tool, on tiny models on CPU."""
import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

pytest.importorskip('diffusers')
pytest.importorskip('mmengine')
from mmengine.config import Config  # noqa: E402
from mmengine.structures import BaseDataElement  # noqa: E402
from visionattn.heads.diffusion import dit  # noqa: E402
from visionattn.heads.diffusion.data import ImageFolderCannyDataset, SyntheticDiffusionPairs, canny_edges  # noqa: E402
from visionattn.heads.diffusion.evaluation import ControlFidelityMetric, SampleQualityMetric, edge_f1  # noqa: E402
from visionattn.heads.diffusion.relactrl import (  # noqa: E402
    RELACTRL_CONTROL_INDICES,
    RELACTRL_GROUP_COUNTS,
    RelaCtrlPixArt,
    ShuffledTokenAttention,
    distribute_group_widths,
    load_denoiser_checkpoint,
)
from visionattn.heads.diffusion.task import (  # noqa: E402
    ControlledDiffusionModel,
    DiffusionModel,
    DiffusionSamplesHook,
    diffusion_collate,
)

from visionattn.engine import MODELS  # noqa: E402

pytestmark = pytest.mark.heads
ROOT = Path(__file__).resolve().parents[1]


def _randomise(module: nn.Module, std: float = 0.05) -> nn.Module:
    """Non-zero weights everywhere (the zero-initialised gates would hide bugs)."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, std)
    return module


def _tiny_pixart(**kwargs):
    return dit.pixart_tiny(**dict(dict(input_size=8, hidden_size=32, num_heads=2, depth=3), **kwargs))


# ----------------------------------------------------------------------------------------------------------------
# Official sizes
# ----------------------------------------------------------------------------------------------------------------
def test_official_parameter_counts():
    with torch.device('meta'):
        counts = {name: sum(p.numel() for p in fn().parameters())
                  for name, fn in [('dit_xl_2', dit.dit_xl_2), ('pixart_xl_2', dit.pixart_xl_2)]}
        relactrl = RelaCtrlPixArt(dit.pixart_ms_xl_2())
    assert counts['dit_xl_2'] == 675_129_632  # facebookresearch/DiT, pos_embed included (a frozen Parameter)
    assert counts['pixart_xl_2'] == 610_856_096  # PixArt-XL-2 at 256/512 (pos_embed is a buffer there)
    assert sum(p.numel() for p in relactrl.controlnet.parameters()) == 45_715_968  # "45M" (HF qihoo360/RelaCtrl)
    assert all(not p.requires_grad for p in relactrl.base_model.parameters())


def test_tdsm_group_widths_follow_the_official_rule():
    assert [distribute_group_widths(1152, g) for g in (6, 4, 2)] == [[192] * 6, [288] * 4, [576] * 2]
    assert distribute_group_widths(192, 4) == [32, 32, 64, 64]
    with pytest.raises(ValueError, match='cannot split'):
        distribute_group_widths(128, 6)


# ----------------------------------------------------------------------------------------------------------------
# Blocks
# ----------------------------------------------------------------------------------------------------------------
def test_sincos_pos_embed_layout():
    emb = dit.sincos_pos_embed(8, (2, 3))
    assert emb.shape == (6, 8)
    # first half: columns (sin of col, cos of col at frequency 1 and 1/100), second half: rows
    col, row = 2.0, 1.0
    expected = [math.sin(col), math.sin(col / 100), math.cos(col), math.cos(col / 100),
                math.sin(row), math.sin(row / 100), math.cos(row), math.cos(row / 100)]
    torch.testing.assert_close(emb[1 * 3 + 2], torch.tensor(expected))
    video = dit.sincos_pos_embed(8, (2, 2, 3))  # frames add a 1-D temporal embedding to the spatial one
    frame_step = torch.from_numpy(dit._sincos_1d(8, np.array([1.0])) - dit._sincos_1d(8, np.array([0.0]))).float()
    torch.testing.assert_close(video[:6], emb + torch.from_numpy(dit._sincos_1d(8, np.array([0.0]))).float())
    torch.testing.assert_close(video[6:] - video[:6], frame_step.expand(6, 8))


def test_attention_core_is_pluggable_and_gets_the_grid():
    seen = []

    class ManualCore(nn.Module):
        def forward(self, q, k, v, grid_size=None):
            seen.append(grid_size)
            return torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, -1) @ v

    plain = _randomise(dit.dit_video_tiny(depth=2, hidden_size=32, num_heads=2))
    custom = dit.dit_video_tiny(depth=2, hidden_size=32, num_heads=2, attention_core=lambda i: ManualCore())
    custom.load_state_dict(plain.state_dict())
    x, t, y = torch.randn(2, 4, 4, 8, 8), torch.tensor([10, 900]), torch.tensor([0, 3])
    torch.testing.assert_close(custom(x, t, y), plain(x, t, y), atol=1e-5, rtol=1e-5)
    assert seen == [(4, 4, 4)] * 2


def test_dit_block_adaln_zero_is_identity_and_final_layer_zero():
    block = dit.DiTBlock(32, 2)
    nn.init.zeros_(block.adaLN_modulation[-1].weight)
    nn.init.zeros_(block.adaLN_modulation[-1].bias)
    x, c = torch.randn(2, 5, 32), torch.randn(2, 32)
    torch.testing.assert_close(block(x, c), x)
    model = dit.dit_tiny()  # official init: zero output layer
    assert model(torch.randn(1, 4, 16, 16), torch.tensor([3]), torch.tensor([1])).abs().max() == 0


def test_cross_attention_ignores_masked_tokens():
    attn = _randomise(dit.MultiHeadCrossAttention(32, 4))
    x, cond = torch.randn(2, 6, 32), torch.randn(2, 5, 32)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    changed = cond.clone()
    changed[0, 3:] = 100.0
    torch.testing.assert_close(attn(x, cond, mask), attn(x, changed, mask))
    torch.testing.assert_close(attn(x, cond, mask)[0], attn(x[:1], cond[:1, :3])[0])


@pytest.mark.parametrize('video', [False, True])
def test_unpatchify_inverts_patchify(video):
    model = dit.dit_video_tiny(patch_size=(2, 2, 2)) if video else dit.dit_tiny()
    x = torch.randn(2, 8, 4, 8, 8) if video else torch.randn(2, 8, 16, 16)  # out_channels = 8 (learn_sigma)
    p = model.patch_size
    if video:
        grid = (2, 4, 4)
        tokens = x.reshape(2, 8, 2, p[0], 4, p[1], 4, p[2]).permute(0, 2, 4, 6, 3, 5, 7, 1).reshape(2, 32, -1)
    else:
        grid = (8, 8)
        tokens = x.reshape(2, 8, 8, p[0], 8, p[1]).permute(0, 2, 4, 3, 5, 1).reshape(2, 64, -1)
    torch.testing.assert_close(model.unpatchify(tokens, grid), x)


def test_models_forward_shapes_and_conditions():
    x, t, y = torch.randn(2, 4, 16, 16), torch.tensor([1, 999]), torch.tensor([0, 9])
    assert dit.dit_tiny(learn_sigma=False)(x, t, y).shape == (2, 4, 16, 16)
    assert dit.dit_tiny(num_classes=0)(x, t).shape == (2, 8, 16, 16)
    assert _randomise(dit.dit_tiny())(torch.randn(1, 4, 8, 12), 5, y[:1]).shape == (1, 8, 8, 12)  # other sizes
    video = torch.randn(2, 4, 4, 8, 8)
    assert dit.dit_video_tiny()(video, t, y).shape == (2, 8, 4, 8, 8)
    assert dit.pixart_video_tiny()(video, t, y).shape == (2, 8, 4, 8, 8)
    text = _randomise(dit.pixart_tiny(caption_channels=24, num_classes=0, model_max_length=7, hidden_size=48,
                                      num_heads=4, micro_conditions=True))
    caption = torch.randn(2, 7, 24)
    out = text(x, t, caption=caption, caption_mask=torch.ones(2, 7))
    assert out.shape == (2, 8, 16, 16) and torch.isfinite(out).all()
    assert not torch.allclose(out, text(x, t))  # no caption: the null caption
    assert not torch.allclose(out, text(x, t, caption=caption, img_hw=torch.tensor([[64.0, 256.0]] * 2)))


def test_bad_inputs_raise_clear_errors():
    model = dit.dit_tiny()
    with pytest.raises(ValueError, match='divisible by the patch size'):
        model(torch.randn(1, 4, 15, 16), torch.tensor([1]), torch.tensor([1]))
    with pytest.raises(ValueError, match='input channels'):
        model(torch.randn(1, 3, 16, 16), torch.tensor([1]), torch.tensor([1]))
    with pytest.raises(ValueError, match='class labels'):
        model(torch.randn(1, 4, 16, 16), torch.tensor([1]), torch.tensor([11]))
    with pytest.raises(ValueError, match='pass labels y'):
        model(torch.randn(1, 4, 16, 16), torch.tensor([1]))
    with pytest.raises(ValueError, match='timesteps'):
        model(torch.randn(2, 4, 16, 16), torch.tensor([1, 2, 3]), torch.tensor([1, 1]))
    with pytest.raises(ValueError, match='not divisible by num_heads'):
        dit.DiT(hidden_size=36, num_heads=8, depth=1)


# ----------------------------------------------------------------------------------------------------------------
# RelaCtrl
# ----------------------------------------------------------------------------------------------------------------
def _relactrl(depth=21, **kwargs):
    base = _randomise(_tiny_pixart(depth=depth, hidden_size=64, num_heads=2))
    return RelaCtrlPixArt(base, group_multiple=8, **kwargs).eval(), base


def test_relactrl_zero_init_equals_base_and_trains_only_the_control():
    model, base = _relactrl()
    x, t, y = torch.randn(2, 4, 8, 8), torch.tensor([5, 600]), torch.tensor([1, 2])
    control = torch.randn_like(x)
    torch.testing.assert_close(model(x, t, y, control=control), base(x, t, y), rtol=0, atol=0)
    assert len(model.controlnet) == 11 and model.control_indices == RELACTRL_CONTROL_INDICES
    assert [len(b.process.group_widths) for b in model.controlnet] == list(RELACTRL_GROUP_COUNTS)
    model.train()
    loss = model(x, t, y, control=control).square().mean()
    loss.backward()
    assert all(p.grad is None for p in model.base_model.parameters())
    assert model.controlnet[3].after_proj.weight.grad.abs().sum() > 0


def test_relactrl_permutations_are_seeded_in_eval():
    model, base = _relactrl(inference_seed=7)
    _randomise(model.controlnet)
    x, t, y = torch.randn(2, 4, 8, 8), torch.tensor([5, 600]), torch.tensor([1, 2])
    control = torch.randn_like(x)
    first, second = model(x, t, y, control=control), model(x, t, y, control=control)
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    assert not torch.allclose(first, base(x, t, y))
    model.inference_seed = 8
    assert not torch.allclose(first, model(x, t, y, control=control))
    model.train()
    assert not torch.allclose(model(x, t, y, control=control), model(x, t, y, control=control))


def test_shuffled_token_attention_unpermutes_exactly():
    layer = ShuffledTokenAttention(16)
    layer.attn = nn.Identity()
    x = torch.randn(2, 12, 16)
    torch.testing.assert_close(layer(x, torch.Generator().manual_seed(0)), x, rtol=0, atol=0)
    with pytest.raises(ValueError, match='segments'):
        ShuffledTokenAttention(16)(torch.randn(1, 6, 16))


def test_relactrl_reuses_c_skip_at_positions_without_control():
    model, base = _relactrl(depth=4, control_indices=(0,), group_counts=(2,))
    _randomise(model.controlnet)
    captured = {}
    base.blocks[1].register_forward_hook(lambda m, i, o: captured.__setitem__('out1', o))
    base.blocks[2].register_forward_pre_hook(lambda m, i: captured.__setitem__('in2', i[0]))
    model.controlnet[0].register_forward_hook(lambda m, i, o: captured.__setitem__('c_skip', o[1]))
    x = torch.randn(1, 4, 8, 8)
    model(x, torch.tensor([5]), torch.tensor([1]), control=torch.randn_like(x))
    torch.testing.assert_close(captured['in2'], captured['out1'] + captured['c_skip'])  # official quirk
    model.skip_blocks = {0}
    out_skipped = model(x, torch.tensor([5]), torch.tensor([1]), control=torch.randn_like(x))
    torch.testing.assert_close(out_skipped, base(x, torch.tensor([5]), torch.tensor([1])))


def test_relactrl_checks_and_base_loading(tmp_path):
    with pytest.raises(ValueError, match='needs a base block after it'):
        RelaCtrlPixArt(_tiny_pixart(depth=4))
    with pytest.raises(ValueError, match='group counts'):
        RelaCtrlPixArt(_tiny_pixart(depth=4), control_indices=(0, 1), group_counts=(2,))
    model, base = _relactrl(depth=21, base_checkpoint=str(tmp_path / 'missing'))
    with pytest.raises(FileNotFoundError, match='train the base'):
        model.load_base()
    trained = _randomise(_tiny_pixart(depth=21, hidden_size=64, num_heads=2), std=0.1)
    path = tmp_path / 'iter_1.pth'
    torch.save({'state_dict': {f'denoiser.{k}': v for k, v in trained.state_dict().items()}}, path)
    (tmp_path / 'last_checkpoint').write_text(str(path))
    model.base_checkpoint = str(tmp_path)
    model.load_base()
    x, t, y = torch.randn(1, 4, 8, 8), torch.tensor([3]), torch.tensor([0])
    torch.testing.assert_close(model(x, t, y), trained.eval()(x, t, y))
    torch.save({**trained.state_dict(), 'blocks.0.attn.qkv.weight': torch.zeros(1), 'extra': torch.zeros(1)}, path)
    with pytest.raises(RuntimeError, match=r"unexpected keys \['extra'\].*blocks.0.attn.qkv.weight: \(1,\)"):
        load_denoiser_checkpoint(base, path)


# ----------------------------------------------------------------------------------------------------------------
# Engine
# ----------------------------------------------------------------------------------------------------------------
def _batch(count=2, size=16, seed=1):
    dataset = SyntheticDiffusionPairs(count, size, seed=seed)
    return diffusion_collate([dataset[i] for i in range(count)])


def test_loss_falls_on_a_fixed_batch():
    torch.manual_seed(0)
    model = DiffusionModel(dict(type=dit.dit_tiny, in_channels=3, num_classes=3, hidden_size=32, num_heads=2,
                                depth=2, learn_sigma=True))
    data = model.data_preprocessor(_batch(4), training=True)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(25):
        torch.manual_seed(0)  # same t and noise every step: the loss must fall
        loss = model(**data, mode='loss')['loss']
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]



def test_collate_sends_one_block_per_field():
    """Each item's label and control used to be its own tensor: a loader worker then sent 2 x batch shared-memory
    blocks, and receiving 128 items cost the main process about 100 ms a batch (profiled on an H100 host). Now the
    data samples hold views of one stacked tensor per field, with the items' values."""
    dataset = SyntheticDiffusionPairs(4, 16, seed=1)
    items = [dataset[i] for i in range(4)]
    batch = diffusion_collate(items)
    samples = batch['data_samples']
    for field in ('control', 'gt_label'):
        storages = {s.get(field).untyped_storage().data_ptr() for s in samples}
        assert len(storages) == 1, field
    for sample, item in zip(samples, items):
        assert torch.equal(sample.control, item['control']) and int(sample.gt_label) == item['gt_label']
    # controls of different sizes (a folder of odd images) still collate, one tensor each
    items[1]['control'] = items[1]['control'][:, :8]
    assert diffusion_collate(items)['data_samples'][1].control.shape == (1, 8, 16)


def test_compile_denoiser_keeps_the_parameter_names_and_the_loss():
    def build(**kwargs):
        torch.manual_seed(0)
        return DiffusionModel(dict(type=dit.dit_tiny, in_channels=3, num_classes=3, hidden_size=32, num_heads=2,
                                   depth=1), **kwargs)
    eager, compiled = build(), build(compile_denoiser=dict(backend='eager'))
    assert compiled.denoiser._compiled_call_impl is not None and eager.denoiser._compiled_call_impl is None
    assert list(compiled.state_dict()) == list(eager.state_dict())
    data = eager.data_preprocessor(_batch(2), training=True)
    losses = []
    for model in (eager, compiled):
        torch.manual_seed(3)
        losses.append(model(**data, mode='loss')['loss'])
    torch.testing.assert_close(losses[0], losses[1])
    with pytest.raises(TypeError, match='compile_denoiser must be a bool or a dict'):
        build(compile_denoiser='yes')


class _OracleDenoiser(nn.Module):
    """The exact prediction when every image equals one fixed x0: the noise eps = (x_t - sqrt(a) x0) / sqrt(1 - a),
    or v = sqrt(a) eps - sqrt(1 - a) x0, or x0 itself (``kind``, as DiffusionModel's prediction_type)."""

    def __init__(self, x0, alphas_cumprod, kind='epsilon'):
        super().__init__()
        self.in_channels = self.out_channels = x0.shape[0]
        self.input_size, self.num_classes, self.kind = x0.shape[-1], 0, kind
        self.register_buffer('x0', x0)
        self.register_buffer('alphas', alphas_cumprod)
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x, t, y=None, **cond):
        a = self.alphas[t.long()].view(-1, 1, 1, 1)
        eps = (x - a.sqrt() * self.x0) / (1 - a).sqrt()
        if self.kind == 'v_prediction':
            return a.sqrt() * eps - (1 - a).sqrt() * self.x0
        return self.x0.expand_as(x) if self.kind == 'sample' else eps


@pytest.mark.parametrize('sampler', ['dpm_solver', 'ddim', 'ddpm'])
def test_samplers_recover_the_data_point_with_an_exact_denoiser(sampler):
    x0 = torch.rand(3, 8, 8) * 1.6 - 0.8
    with pytest.raises(AttributeError, match='lacks the attribute'):
        DiffusionModel(nn.Identity())
    from diffusers import DDPMScheduler
    alphas = DDPMScheduler(beta_start=1e-4, beta_end=0.02, beta_schedule='linear').alphas_cumprod
    model = DiffusionModel(_OracleDenoiser(x0, alphas), sampler=sampler, num_inference_steps=10)
    out = model.sample((2, 3, 8, 8))
    torch.testing.assert_close(out, x0.expand(2, -1, -1, -1), atol=2e-3, rtol=0)
    again = model.sample((2, 3, 8, 8))
    torch.testing.assert_close(out, again, rtol=0, atol=0)


@pytest.mark.parametrize('kind', ['v_prediction', 'sample'])
@pytest.mark.parametrize('sampler', ['dpm_solver', 'ddim', 'ddpm'])
def test_samplers_follow_the_prediction_type(sampler, kind):
    x0 = torch.rand(3, 8, 8) * 1.6 - 0.8
    from diffusers import DDPMScheduler
    alphas = DDPMScheduler(beta_start=1e-4, beta_end=0.02, beta_schedule='linear').alphas_cumprod
    model = DiffusionModel(_OracleDenoiser(x0, alphas, kind), prediction_type=kind, sampler=sampler,
                           num_inference_steps=10)
    torch.testing.assert_close(model.sample((2, 3, 8, 8)), x0.expand(2, -1, -1, -1), atol=2e-3, rtol=0)
    # Read as a noise prediction, the same outputs lead elsewhere: the type is used. One step from t = 999, where v
    # is about -x0 (over many steps an oracle's v, close to its noise at small t, pulls a misread run back; DDIM's
    # and DDPM's single steps run at t = 0, their 'leading' spacing: checked with 'sample' only).
    if sampler == 'dpm_solver' or kind == 'sample':
        misread = DiffusionModel(_OracleDenoiser(x0, alphas, kind), sampler=sampler)
        assert (misread.sample((2, 3, 8, 8), num_inference_steps=1) - x0).abs().max() > 0.1


@pytest.mark.parametrize('kind', ['epsilon', 'v_prediction', 'sample'])
def test_training_target_and_estimates_invert_each_other(kind):
    torch.manual_seed(0)
    model = DiffusionModel(_OracleDenoiser(torch.zeros(3, 8, 8), torch.ones(1000)), prediction_type=kind,
                           beta_schedule='squaredcos_cap_v2')
    x0, noise = torch.rand(4, 3, 8, 8) * 2 - 1, torch.randn(4, 3, 8, 8)
    t = torch.tensor([0, 10, 500, 999])
    x_t = model.train_scheduler.add_noise(x0, noise, t)
    target = model.target(x0, noise, t)
    expected = {'epsilon': noise, 'sample': x0}.get(kind)
    if expected is not None:
        torch.testing.assert_close(target, expected, rtol=0, atol=0)
    eps, x0_estimate = model.estimates(x_t, target, t)
    # float32 rounding, magnified where the conversion divides by sqrt(1 - a) (0.01 at t = 0) or sqrt(a) (near 0 at
    # t = 999); a wrong formula is off by O(1)
    torch.testing.assert_close(eps, noise, rtol=0, atol=1e-2)
    torch.testing.assert_close(x0_estimate, x0, rtol=0, atol=1e-2)
    with pytest.raises(ValueError, match='prediction_type must be one of'):
        DiffusionModel(_OracleDenoiser(x0[0], torch.ones(1000)), prediction_type='velocity')


def test_the_loss_trains_the_configured_target(monkeypatch):
    x0 = torch.rand(3, 8, 8) * 1.6 - 0.8
    from diffusers import DDPMScheduler
    alphas = DDPMScheduler(beta_start=1e-4, beta_end=0.02, beta_schedule='linear').alphas_cumprod
    images = ((x0 + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).expand(4, -1, -1, -1)
    for kind in ('epsilon', 'v_prediction', 'sample'):
        exact = DiffusionModel(_OracleDenoiser((images[0].float() / 127.5 - 1), alphas, kind), prediction_type=kind)
        data = exact.data_preprocessor({'inputs': images.clone(), 'data_samples': None}, training=True)
        assert exact(**data, mode='loss')['loss'] < 1e-8  # the oracle of its own type: no loss
        wrong = 'sample' if kind != 'sample' else 'epsilon'
        other = DiffusionModel(_OracleDenoiser((images[0].float() / 127.5 - 1), alphas, wrong), prediction_type=kind)
        assert other(**data, mode='loss')['loss'] > 1e-2


@pytest.mark.parametrize('sampler', ['dpm_solver', 'ddim', 'ddpm'])
def test_clip_sample_bounds_the_x0_prediction(sampler):
    x0 = torch.full((3, 8, 8), 3.0)  # a data point outside [-1, 1]: only clipping can keep the sample inside
    from diffusers import DDPMScheduler
    alphas = DDPMScheduler(beta_start=1e-4, beta_end=0.02, beta_schedule='linear').alphas_cumprod
    free, clipped = (DiffusionModel(_OracleDenoiser(x0, alphas), sampler=sampler, num_inference_steps=10,
                                    clip_sample=clip).sample((2, 3, 8, 8)) for clip in (False, True))
    torch.testing.assert_close(free, x0.expand(2, -1, -1, -1), atol=2e-2, rtol=0)
    assert clipped.abs().max() <= 1.0 + 1e-5 and clipped.min() > 0.9


def test_predict_with_guidance_and_seeded_noise():
    torch.manual_seed(0)
    model = DiffusionModel(_randomise(dit.dit_tiny(in_channels=3, num_classes=3, hidden_size=32, num_heads=2,
                                                   depth=2)), num_inference_steps=3, guidance_scale=3.0).eval()
    data = model.data_preprocessor(_batch(2))
    with torch.no_grad():
        first = model(**data, mode='predict')
        again = model(**model.data_preprocessor(_batch(2)), mode='predict')
        model.guidance_scale = 1.0
        plain = model(**model.data_preprocessor(_batch(2)), mode='predict')
    assert first[0].pred_img.shape == (3, 16, 16) and first[0].pred_img.dtype == torch.uint8
    assert torch.equal(first[1].pred_img, again[1].pred_img)
    assert not torch.equal(first[0].pred_img, plain[0].pred_img)
    assert model(**data, mode='tensor').shape == (2, 6, 16, 16)
    with pytest.raises(ValueError, match='sampler'):
        DiffusionModel(dit.dit_tiny(), sampler='euler')


def _controlled_model(**kwargs):
    base = _randomise(_tiny_pixart(depth=21, hidden_size=64, num_heads=2, in_channels=3, num_classes=3))
    denoiser = RelaCtrlPixArt(base, group_multiple=8)
    _randomise(denoiser.controlnet)
    return ControlledDiffusionModel(denoiser, num_inference_steps=2, **kwargs).eval()


def test_controlled_model_and_metrics_report_base_and_control():
    model = _controlled_model()
    batch = _batch(2)
    with torch.no_grad():
        samples = model(**model.data_preprocessor(batch), mode='predict')
        losses = model.train()(**model.data_preprocessor(batch, training=True), mode='loss')
    assert torch.isfinite(losses['loss'])
    assert samples[0].pred_img.shape == samples[0].base_img.shape == (3, 16, 16)
    assert not torch.equal(samples[0].pred_img, samples[0].base_img)
    fidelity, quality = ControlFidelityMetric(), SampleQualityMetric()
    for metric in (fidelity, quality):
        metric.process(None, [s.to_dict() for s in samples])
    scores = fidelity.compute_metrics(fidelity.results)
    assert set(scores) >= {'control_f1', 'base_control_f1'} and 0 <= scores['control_f1'] <= 1
    assert set(quality.compute_metrics(quality.results)) == {'psnr', 'ssim', 'base_psnr', 'base_ssim'}
    no_control = [BaseDataElement(gt_label=torch.tensor(0))] * 2
    with pytest.raises(ValueError, match='control map'):
        model(**model.data_preprocessor({'inputs': batch['inputs'], 'data_samples': no_control}), mode='loss')


def test_samples_hook_draws_control_base_generated_and_real(tmp_path):
    from PIL import Image
    model = _controlled_model()
    assert model.show_hook is DiffusionSamplesHook  # what tools/test.py --show-dir registers
    with torch.no_grad():
        samples = model(**model.data_preprocessor(_batch(2)), mode='predict')
    hook = DiffusionSamplesHook(tmp_path, max_images=3, scale=2)
    hook.after_test_iter(None, 0, outputs=samples)
    hook.after_test_iter(None, 1, outputs=samples)
    written = sorted(tmp_path.glob('*.png'))
    assert len(written) == 3 and written[0].name.startswith('00000_label-')
    strip = np.asarray(Image.open(written[1]))
    assert strip.shape == (16 + 32, 4 * (32 + 4) - 4, 3)  # four 16-pixel panels, enlarged twice, under titles
    for column, key in ((1, 'base_img'), (2, 'pred_img'), (3, 'gt_img')):
        panel = strip[16:, column * 36:column * 36 + 32]
        expected = samples[1].get(key).permute(1, 2, 0).numpy()
        assert np.array_equal(panel[::2, ::2], expected), key
    assert np.array_equal(strip[16::2, 0:32:2, 0], samples[1].control[0].numpy())
    # the overview at the end of the test: the drawings side by side in one picture, in order
    hook.after_test_epoch(None)
    sheet = np.asarray(Image.open(tmp_path / 'overview.png'))
    width = strip.shape[1]
    assert sheet.shape == (strip.shape[0], 3 * width + 2 * 4, 3)
    for i, path in enumerate(written):
        assert np.array_equal(sheet[:, i * (width + 4):i * (width + 4) + width], np.asarray(Image.open(path)))


def test_edge_f1_on_known_maps():
    edges = np.zeros((10, 10), bool)
    edges[2:8, 4] = True
    shifted = np.roll(edges, 1, axis=1)
    assert edge_f1(edges, edges)['f1'] == 1.0
    assert edge_f1(shifted, edges, tolerance=1)['f1'] == 1.0
    assert edge_f1(shifted, edges, tolerance=0)['f1'] == 0.0
    assert edge_f1(np.zeros_like(edges), edges)['f1'] == 0.0
    half = edges.copy()
    half[5:] = False
    scores = edge_f1(half, edges, tolerance=0)
    assert scores['precision'] == 1.0 and scores['recall'] == 0.5 and abs(scores['f1'] - 2 / 3) < 1e-9
    with pytest.raises(ValueError, match='shape'):
        edge_f1(edges, edges[:5])


def test_control_fidelity_of_the_real_image_is_perfect():
    dataset = SyntheticDiffusionPairs(4, 32, seed=3)
    metric = ControlFidelityMetric(tolerance=0)
    metric.process(None, [{'pred_img': item['img'].numpy(), 'control': item['control'].numpy()}
                          for item in (dataset[i] for i in range(4))])
    assert metric.compute_metrics(metric.results)['control_f1'] == 1.0
    # tensors that NumPy cannot read directly (on a GPU, or needing grad) are detached and copied first
    metric = ControlFidelityMetric(tolerance=0)
    metric.process(None, [{'pred_img': item['img'], 'control': item['control'].float().requires_grad_()}
                          for item in (dataset[i] for i in range(4))])
    assert metric.compute_metrics(metric.results)['control_f1'] == 1.0


def test_latent_diffusion_with_a_tiny_vae():
    from diffusers import AutoencoderKL
    vae = dict(type=AutoencoderKL, from_pretrained='not/downloaded', block_out_channels=(8, 8),
               down_block_types=('DownEncoderBlock2D',) * 2, up_block_types=('UpDecoderBlock2D',) * 2,
               layers_per_block=1, latent_channels=4, norm_num_groups=4, sample_size=16)
    torch.manual_seed(0)
    model = DiffusionModel(dict(type=dit.dit_tiny, input_size=8, in_channels=4, num_classes=3, hidden_size=32,
                                num_heads=2, depth=2), vae=vae, pretrained=False, num_inference_steps=2)
    assert all(not p.requires_grad for p in model.vae.parameters())
    batch = _batch(2)
    losses = model.train()(**model.data_preprocessor(batch, training=True), mode='loss')
    assert model.vae.training is False and torch.isfinite(losses['loss'])
    with torch.no_grad():
        samples = model.eval()(**model.data_preprocessor(batch), mode='predict')
    assert samples[0].pred_img.shape == (3, 16, 16)


# ----------------------------------------------------------------------------------------------------------------
# Data, configs, tool
# ----------------------------------------------------------------------------------------------------------------
def test_synthetic_pairs_are_deterministic_and_paired():
    dataset = SyntheticDiffusionPairs(16, 32, seed=0)
    first, again = dataset[5], SyntheticDiffusionPairs(16, 32, seed=0)[5]
    assert torch.equal(first['img'], again['img']) and first['gt_label'] == again['gt_label']
    assert not torch.equal(first['img'], dataset[6]['img'])
    assert first['img'].shape == (3, 32, 32) and first['control'].shape == (1, 32, 32)
    assert set(first['control'].unique().tolist()) <= {0, 255} and first['control'].any()
    edges = canny_edges(first['img'].permute(1, 2, 0).numpy())
    assert np.array_equal(edges, first['control'][0].numpy() > 0)
    assert {dataset[i]['gt_label'] for i in range(16)} <= {0, 1, 2}
    with pytest.raises(ValueError, match='at least 16'):
        SyntheticDiffusionPairs(4, 8)


def test_image_folder_canny_dataset(tmp_path):
    from PIL import Image
    for label, name in enumerate(('cats', 'dogs')):
        (tmp_path / name).mkdir()
        image = np.zeros((40, 60, 3), np.uint8)
        image[10:30, 20 + 10 * label:40 + 10 * label] = 255
        Image.fromarray(image).save(tmp_path / name / 'a.png')
    dataset = ImageFolderCannyDataset(tmp_path, img_size=32, canny_sigma=1.0)
    assert dataset.classes == ('cats', 'dogs') and len(dataset) == 2
    item = dataset[1]
    assert item['img'].shape == (3, 32, 32) and item['gt_label'] == 1 and item['control'].any()
    with pytest.raises(FileNotFoundError):
        ImageFolderCannyDataset(tmp_path / 'nothing')


def test_relactrl_config_refuses_a_missing_base_run():
    """tests/test_configs.py runs loss and predict for every diffusion config; here the base checkpoint's error."""
    cfg = Config.fromfile(ROOT / 'configs' / 'diffusion' / 'relactrl_pixart_tiny_synthetic_pairs.py')
    model = MODELS.build(cfg.model)
    assert isinstance(model, ControlledDiffusionModel)
    with pytest.raises(FileNotFoundError, match='train the base'):
        model.init_weights()  # the base run's work dir does not exist here


def test_relevance_score_ranks_every_block():
    spec = importlib.util.spec_from_file_location('relevance_score', ROOT / 'tools' / 'relevance_score.py')
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    model = _controlled_model()
    report = tool.relevance_scores(model, [_batch(2)], progress=False)
    assert sorted(report['ranking']) == list(range(11))
    assert {row['after_base_block'] for row in report['blocks']} == set(RELACTRL_CONTROL_INDICES)
    assert model.denoiser.skip_blocks == set()


@pytest.mark.parametrize('build', [
    lambda: dit.dit_tiny(input_size=8, hidden_size=32, num_heads=2, depth=1),
    lambda: _tiny_pixart(caption_channels=0, num_classes=10, depth=1),
    lambda: __import__('visionattn.heads.diffusion.lamamba_diff', fromlist=['x']).lamamba_diff_tiny(),
], ids=['dit', 'pixart', 'lamamba_diff'])
def test_class_labels_are_checked_and_an_empty_batch_runs(build):
    # Adversarial probe: labels of another count or shape failed in a reshape or a broadcast ([1, B] passed PixArt
    # and dropped every label together in training), and an empty batch failed in labels.min().
    model = build().eval()
    size = model.input_size
    x, t = torch.randn(2, model.in_channels, size, size), torch.tensor([1, 2])
    for labels in (torch.tensor([1, 2, 3]), torch.tensor([[1], [2]]), torch.tensor([[1, 2]]), torch.tensor([1., 2.])):
        with pytest.raises(ValueError, match=r'class labels must be an integer tensor \[B=2\]'):
            model(x, t, labels)
    empty = model(x[:0], t[:0], torch.zeros(0, dtype=torch.long))
    assert empty.shape[0] == 0 and empty.shape[1] == model.out_channels


# ----------------------------------------------------------------------------------------------------------------
# Adversarial probe of the metrics, the synthetic pairs and the relevance tool
# ----------------------------------------------------------------------------------------------------------------
def test_metrics_refuse_float_images_and_read_grey_ones():
    # [0, 1] floats (a model's own output range) scored F1 0 and PSNR ~7 dB without an error
    item = SyntheticDiffusionPairs(2, 32, seed=3)[0]
    as_float = item['img'].float() / 255
    for metric, sample in ((ControlFidelityMetric(), {'pred_img': as_float, 'control': item['control']}),
                           (SampleQualityMetric(), {'pred_img': as_float, 'gt_img': item['img']})):
        with pytest.raises(ValueError, match=r'pred_img must be a uint8 image .* got float32 \(3, 32, 32\)'):
            metric.process(None, [sample])
    with pytest.raises(ValueError, match=r'pred_img \(3, 16, 16\) and gt_img \(3, 32, 32\) differ in shape'):
        SampleQualityMetric().process(None, [{'pred_img': item['img'][:, :16, :16], 'gt_img': item['img']}])
    # a one-channel model's samples: the edges of the grey image (this failed in canny_edges)
    grey = torch.from_numpy((item['img'].permute(1, 2, 0).numpy() @ np.array([0.299, 0.587, 0.114])).round()
                            .astype(np.uint8))
    metric = ControlFidelityMetric(tolerance=0)
    metric.process(None, [{'pred_img': grey[None], 'control': item['control']}])
    f1 = metric.compute_metrics(metric.results)['control_f1']
    assert f1 == edge_f1(canny_edges(grey.numpy()), item['control'][0].numpy() > 0, 0)['f1'] and f1 > 0.9


def test_canny_and_edge_f1_refuse_what_they_would_misread():
    image = SyntheticDiffusionPairs(1, 32, seed=3)[0]['img'].permute(1, 2, 0).numpy()
    with pytest.raises(ValueError, match='uint8 .* got uint16'):  # 16 bits gave edges all over the image
        canny_edges(image.astype(np.uint16) * 257)
    with pytest.raises(ValueError, match=r'finite and in \[0, 255\]'):
        canny_edges(np.where(image > 100, np.nan, image.astype(np.float32)))
    edges = canny_edges(image)
    with pytest.raises(ValueError, match='pred_edges must be a binary edge map'):  # soft maps: all pixels edges
        edge_f1(edges * 0.9 + 0.01, edges)
    assert edge_f1(edges.astype(np.uint8) * 255, edges)['f1'] == 1.0  # 0/255 maps are binary
    for tolerance in (-1, 1.5):
        with pytest.raises(ValueError, match='tolerance must be a non-negative integer'):
            edge_f1(edges, edges, tolerance)
        with pytest.raises(ValueError, match='tolerance must be a non-negative integer'):
            ControlFidelityMetric(tolerance=tolerance)


def test_every_synthetic_pair_has_control_edges():
    # 1 in ~300 shapes differed from the background in hue only: an empty control map, and a trivial F1 of 1
    dataset = SyntheticDiffusionPairs(600, 32, seed=0)
    empty = [i for i in (358, 528, 585) if not dataset[i]['control'].any()]
    assert not empty
    # the other pairs are drawn as before (seeded runs keep their data)
    assert dataset[5]['img'][:, 10, :6].tolist() == [[69, 70, 72, 74, 76, 77], [139, 138, 137, 136, 136, 135],
                                                       [47, 48, 49, 50, 52, 53]]
    with pytest.raises(TypeError, match='img_size must be an integer, got 32.0'):
        SyntheticDiffusionPairs(4, 32.0)


def test_relevance_score_restores_the_model_after_an_error(monkeypatch):
    spec = importlib.util.spec_from_file_location('relevance_score', ROOT / 'tools' / 'relevance_score.py')
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    model = _controlled_model()
    model.compare_base = True
    calls = []

    def failing(*args):
        calls.append(model.denoiser.skip_blocks)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return {'control_f1': 1.0, 'psnr': 20.0}
    monkeypatch.setattr(tool, 'evaluate', failing)
    with pytest.raises(KeyboardInterrupt):
        tool.relevance_scores(model, [], progress=False)
    assert calls[2] == {1} and model.denoiser.skip_blocks == set() and model.compare_base is True



def test_psnr_of_identical_images_is_capped_and_relevance_is_never_nan(monkeypatch):
    # identical images have an infinite PSNR: the mean over the samples became inf, and the relevance score of a
    # block, (PSNR_full - PSNR_skip) / PSNR_full, became (inf - inf) / inf = NaN
    from skimage.metrics import peak_signal_noise_ratio
    item = SyntheticDiffusionPairs(1, 16, seed=3)[0]
    image, other = item['img'], item['img'].clone()
    other[0, 0, 0] ^= 1  # one value one level off: a finite PSNR, which must stay exact
    metric = SampleQualityMetric()
    metric.process(None, [{'pred_img': image.clone(), 'gt_img': image}])
    assert metric.results[0]['psnr'] == 100.0
    metric.process(None, [{'pred_img': other, 'gt_img': image}])
    assert metric.results[1]['psnr'] == peak_signal_noise_ratio(image.numpy(), other.numpy(), data_range=255)
    assert metric.compute_metrics(metric.results)['psnr'] == pytest.approx((100.0 + metric.results[1]['psnr']) / 2)

    spec = importlib.util.spec_from_file_location('relevance_score', ROOT / 'tools' / 'relevance_score.py')
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)

    def perfect(model, batches, factory):  # every variant reproduces the real image exactly
        scores = {}
        for metric in factory():
            metric.process(None, [{'pred_img': image.clone(), 'gt_img': image, 'control': item['control']}])
            scores.update(metric.compute_metrics(metric.results))
        return scores
    monkeypatch.setattr(tool, 'evaluate', perfect)
    report = tool.relevance_scores(_controlled_model(), [], progress=False)
    assert report['full']['psnr'] == 100.0
    assert [row['relevance'] for row in report['blocks']] == [0.0] * 11


def test_ssim_of_small_images_uses_a_window_that_fits_or_refuses():
    # skimage's 7-pixel SSIM window does not fit images under 7 pixels: the metric left 'ssim' out without a word
    # (and an image without a channel axis had its SSIM dropped the same way)
    from skimage.metrics import structural_similarity
    rng = np.random.default_rng(0)
    real = torch.from_numpy(rng.integers(0, 256, (3, 5, 6), dtype=np.uint8))
    fake = torch.from_numpy(rng.integers(0, 256, (3, 5, 6), dtype=np.uint8))
    metric = SampleQualityMetric()
    with pytest.warns(UserWarning, match='5-pixel window'):
        metric.process(None, [{'pred_img': fake, 'gt_img': real}])
    want = structural_similarity(real.numpy(), fake.numpy(), channel_axis=0, data_range=255, win_size=5)
    assert metric.compute_metrics(metric.results)['ssim'] == pytest.approx(want)
    big = torch.from_numpy(rng.integers(0, 256, (3, 9, 8), dtype=np.uint8))  # 7 px and more: skimage's default
    metric = SampleQualityMetric()
    metric.process(None, [{'pred_img': big.flip(-1), 'gt_img': big}])
    want = structural_similarity(big.numpy(), big.flip(-1).numpy(), channel_axis=0, data_range=255)
    assert metric.compute_metrics(metric.results)['ssim'] == want
    with pytest.raises(ValueError, match='at least 3x3 pixels .* got 2x6'):
        SampleQualityMetric().process(None, [{'pred_img': real[:, :2], 'gt_img': real[:, :2]}])
    with pytest.raises(ValueError, match=r'gt_img must be an image \[C, H, W\], got \(5, 6\)'):
        SampleQualityMetric().process(None, [{'pred_img': real[0], 'gt_img': real[0]}])

@pytest.mark.parametrize('sampler', ['ddpm', 'dpm_solver'])
def test_an_items_sample_does_not_depend_on_its_batch(sampler):
    # DDPM's per-step noise came from one generator per batch: item 5's sample changed with the batch around it
    torch.manual_seed(0)
    model = DiffusionModel(_randomise(dit.dit_tiny(in_channels=3, num_classes=3, hidden_size=32, num_heads=2,
                                                   depth=2)), sampler=sampler, num_inference_steps=4).eval()
    labels = torch.tensor([1, 2])
    alone = model.sample((1, 3, 16, 16), labels[1:], data_samples=[BaseDataElement(metainfo={'index': 5})])
    paired = model.sample((2, 3, 16, 16), labels, data_samples=[BaseDataElement(metainfo={'index': i})
                                                                 for i in (3, 5)])
    torch.testing.assert_close(paired[1:], alone, rtol=1e-4, atol=1e-3)  # (batched matmuls round apart)
    other = model.sample((1, 3, 16, 16), labels[1:], data_samples=[BaseDataElement(metainfo={'index': 6})])
    assert not torch.allclose(other, alone)


def test_image_folder_canny_dataset_refuses_layouts_that_shift_or_drop_labels(tmp_path):
    # a hidden .ipynb_checkpoints folder became class 0 (every label shifted), loose images beside class folders were
    # dropped, an empty class folder took a label without a sample, a truncated image raised PIL's nameless error
    from PIL import Image
    for name in ('cats', 'dogs', '.ipynb_checkpoints'):
        (tmp_path / name).mkdir()
        Image.fromarray(np.full((8, 8, 3), 9, np.uint8)).save(tmp_path / name / 'a.png')
    dataset = ImageFolderCannyDataset(tmp_path, img_size=8)
    assert dataset.classes == ('cats', 'dogs') and [label for _, label in dataset.samples] == [0, 1]
    (tmp_path / 'birds').mkdir()
    with pytest.raises(ValueError, match='class folders without images .*: birds'):
        ImageFolderCannyDataset(tmp_path, img_size=8)
    (tmp_path / 'birds').rmdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / 'loose.png')
    with pytest.raises(ValueError, match=r'both class folders .* 1 images beside them \(e.g. loose.png\)'):
        ImageFolderCannyDataset(tmp_path, img_size=8)
    (tmp_path / 'loose.png').unlink()
    (tmp_path / 'dogs' / 'a.png').write_bytes((tmp_path / 'cats' / 'a.png').read_bytes()[:40])
    with pytest.raises(OSError, match=r"cannot read image .*dogs.*a\.png"):
        ImageFolderCannyDataset(tmp_path, img_size=8)[1]


def test_denoise_probe_measures_one_step_x0_errors(tmp_path):
    spec = importlib.util.spec_from_file_location('denoise_probe', ROOT / 'tools' / 'denoise_probe.py')
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    from diffusers import DDPMScheduler
    alphas = DDPMScheduler(beta_start=1e-4, beta_end=0.02, beta_schedule='linear').alphas_cumprod
    batch = _batch(2)
    x0 = DiffusionModel(_OracleDenoiser(torch.zeros(3, 16, 16), alphas)).data_preprocessor(batch)['inputs'][0]
    exact = DiffusionModel(_OracleDenoiser(x0, alphas))  # the exact noise for item 0, not for item 1
    one = {key: value[:1] for key, value in batch.items()}
    report = tool.denoise_probe(exact, one, [10, 500, 900], [('ddim', 5)])
    assert [row['t'] for row in report['rows']] == [10, 500, 900]
    assert max(row['x0_mse'] for row in report['rows']) < 1e-4
    both = tool.denoise_probe(exact, batch, [500], [])
    assert both['rows'][0]['x0_mse'] > 1e-2  # item 1 is another image: the oracle's noise is wrong for it
    assert [label for label, _ in report['images']] == ['real', 'x0 at t=10', 'x0 at t=500', 'x0 at t=900',
                                                         'ddim, 5 steps']
    tool.save_figure(report['images'], str(tmp_path / 'probe.png'))
    from PIL import Image
    assert Image.open(tmp_path / 'probe.png').size == (130 + 16 * 3, 16 * 3 * 5)
    with pytest.raises(ValueError, match='outside the training range'):
        tool.denoise_probe(exact, one, [1000])
    with pytest.raises(SystemExit, match='sampler:steps'):
        tool._parse_samplers(['euler:10'])


def test_smoke_script_passes_the_recorded_checkpoints_as_paths(tmp_path):
    # last_checkpoint records a name relative to its work dir; the script must hand the tools a path they can open
    import subprocess
    root = Path(__file__).resolve().parents[1]
    for run, name in (('base', 'iter_3000.pth'), ('relactrl', 'iter_2000.pth')):
        (tmp_path / run).mkdir()
        (tmp_path / run / 'last_checkpoint').write_text(name)
    (tmp_path / 'lamamba').mkdir()
    (tmp_path / 'lamamba' / 'last_checkpoint').write_text('/elsewhere/iter_4000.pth')  # absolute: kept as it is
    out = subprocess.run(['bash', str(root / 'tools' / 'diffusion_smoke.sh'), 'eval'], cwd=root, capture_output=True,
                         text=True, env={'PATH': '/usr/bin:/bin', 'WORK': str(tmp_path), 'PYTHON': 'echo'},
                         check=True).stdout.split()
    assert f'{tmp_path}/base/iter_3000.pth' in out and f'{tmp_path}/relactrl/iter_2000.pth' in out
    assert 'iter_3000.pth' not in out
    calls = subprocess.run(['bash', str(root / 'tools' / 'diffusion_smoke.sh'), 'relevance'], cwd=root,
                           capture_output=True, text=True, check=True,
                           env={'PATH': '/usr/bin:/bin', 'WORK': str(tmp_path), 'PYTHON': 'echo'}).stdout.split()
    assert f'{tmp_path}/relactrl/iter_2000.pth' in calls


# ----------------------------------------------------------------------------------------------------------------
# Adversarial probe of the denoisers' and the sampler's model API
# ----------------------------------------------------------------------------------------------------------------
def test_denoisers_refuse_conditions_they_would_ignore():
    # labels given to an unconditional DiT, or a control map given to a DiT (ControlledDiffusionModel) were dropped
    # silently; a caption-only PixArt given labels used the null caption; bool / NaN timesteps ran
    x, t, y = torch.randn(2, 4, 8, 8), torch.tensor([1, 999]), torch.tensor([0, 9])
    with pytest.raises(ValueError, match=r'unconditional \(num_classes=0\): it takes no labels y'):
        dit.dit_tiny(input_size=8, hidden_size=32, num_heads=2, depth=1, num_classes=0)(x, t, y)
    small = dit.dit_tiny(input_size=8, hidden_size=32, num_heads=2, depth=1)
    with pytest.raises(ValueError, match=r"DiT takes no conditions besides labels y, got \['control'\]"):
        small(x, t, y, control=torch.randn(2, 4, 8, 8))
    with pytest.raises(ValueError, match='timesteps must be real numbers, got torch.bool'):
        small(x, torch.tensor([True, False]), y)
    with pytest.raises(ValueError, match='timesteps must be finite'):
        small(x, torch.tensor([float('nan'), 1.0]), y)
    text = _tiny_pixart(caption_channels=24, num_classes=0, model_max_length=7, hidden_size=48, num_heads=4,
                        micro_conditions=True, depth=1)
    caption = torch.randn(2, 7, 24)
    with pytest.raises(ValueError, match='takes a caption, not labels y'):
        text(x, t, y)
    with pytest.raises(ValueError, match=r'caption must be \[B=2, L, C\], got \(1, 7, 24\)'):
        text(x, t, caption=caption[:1])  # was a reshape error in the cross-attention
    for mask in (torch.ones(2, 5), torch.ones(1, 7)):  # [1, L] was broadcast over the batch
        with pytest.raises(ValueError, match=r'caption_mask must be \[B=2, L=7\]'):
            text(x, t, caption=caption, caption_mask=mask)
    with pytest.raises(ValueError, match='0/1 or bools'):  # an additive mask was read inverted
        text(x, t, caption=caption, caption_mask=torch.zeros(2, 7).masked_fill(torch.rand(2, 7) > 0.5, -1e9))
    with pytest.raises(ValueError, match=r'img_hw must be \[B=2, 2\], got \(2,\)'):
        text(x, t, caption=caption, img_hw=torch.tensor([64.0, 64.0]))
    both = _tiny_pixart(caption_channels=24, num_classes=10, model_max_length=7, depth=1)
    with pytest.raises(ValueError, match='either a caption or labels y'):
        both(x, t, y, caption=caption)


def test_relactrl_and_lamamba_refuse_misread_inputs():
    # a uint8 0/255 control went through the patch embedding as 0..255; an odd guidance batch lost its last row and
    # failed on the timesteps' length
    control, base = _relactrl(depth=3, control_indices=(0,), group_counts=(2,))
    x = torch.randn(1, 4, 8, 8)
    with pytest.raises(ValueError, match='control image must be float'):
        control(x, torch.tensor([1]), torch.tensor([1]), control=torch.zeros(1, 4, 8, 8, dtype=torch.uint8))
    from visionattn.heads.diffusion.lamamba_diff import lamamba_diff_tiny
    with pytest.raises(ValueError, match='an even batch, got 3'):
        lamamba_diff_tiny().forward_with_cfg(torch.randn(3, 4, 16, 16), torch.tensor([1, 2, 3]),
                                             torch.tensor([1, 2, 10]), 4.0)


def test_sampler_options_are_checked():
    # steps 0 (or -1) silently meant the configured number, more than the training steps failed in an IndexError
    # inside the DPM-Solver; guidance on an unconditional model was skipped without a word, NaN guidance ran
    denoiser = dit.dit_tiny(in_channels=3, num_classes=3, hidden_size=32, num_heads=2, depth=1, input_size=8)
    model = DiffusionModel(denoiser, num_inference_steps=2).eval()
    labels = torch.tensor([0, 1])
    for steps in (0, -1, 1001, 2.5):
        with pytest.raises(ValueError, match=r'num_inference_steps must be an integer in \[1, num_train_timesteps'):
            model.sample((2, 3, 8, 8), labels, num_inference_steps=steps)
    with pytest.raises(ValueError, match='num_inference_steps must be an integer'):
        DiffusionModel(denoiser, num_inference_steps=2000)
    with pytest.raises(ValueError, match='num_train_timesteps must be a positive integer'):
        DiffusionModel(denoiser, num_train_timesteps=0)
    with pytest.raises(ValueError, match='guidance_scale must be a finite number'):
        DiffusionModel(denoiser, guidance_scale=float('nan'))
    unconditional = dit.dit_tiny(in_channels=3, num_classes=0, hidden_size=32, num_heads=2, depth=1, input_size=8)
    with pytest.raises(ValueError, match='guidance_scale=3 guides class labels'):
        DiffusionModel(unconditional, num_inference_steps=2, guidance_scale=3).sample((2, 3, 8, 8))
    no_null = dit.dit_tiny(in_channels=3, num_classes=3, hidden_size=32, num_heads=2, depth=1, input_size=8,
                           class_dropout_prob=0)
    with pytest.raises(ValueError, match='needs the null label'):
        DiffusionModel(no_null, num_inference_steps=2, guidance_scale=3).sample((2, 3, 8, 8), labels)
    with pytest.raises(ValueError, match='1 data samples for a batch of 2'):  # was an IndexError
        model.sample((2, 3, 8, 8), labels, data_samples=[BaseDataElement(metainfo={'index': 0})])
    assert model.sample((0, 3, 8, 8), labels[:0]).shape == (0, 3, 8, 8)  # was a torch.stack error
    samples = [BaseDataElement(gt_label=torch.tensor([1, 2])), BaseDataElement(gt_label=torch.tensor(1))]
    with pytest.raises(ValueError, match=r'one gt_label; samples \[0\] hold \(2,\)'):
        model._labels(samples, 2, 'cpu')
