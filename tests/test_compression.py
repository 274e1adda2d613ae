"""S2LIC compression: real bitstream round trip, determinism, bpp accounting, codec file format, bad input."""
import json
import math
from pathlib import Path

import pytest
import torch
from conftest import load_tool
from visionattn.heads.compression.s2lic import build_s2lic, checkerboard_mask

pytestmark = pytest.mark.heads
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope='module')
def image():
    torch.manual_seed(1)
    # Smooth image plus noise: compressible, but not trivially constant.
    base = torch.nn.functional.interpolate(torch.rand(1, 3, 8, 8), size=(64, 64), mode='bilinear')
    return (base + 0.05 * torch.randn(1, 3, 64, 64)).clamp(0, 1)


def test_checkerboard_mask_alternates():
    mask = checkerboard_mask(3, 4)
    assert mask.sum() == 6 and mask[0, 0] and not mask[0, 1] and not mask[1, 0] and mask[1, 1]


def test_round_trip_matches_forward_and_is_deterministic(codec_model, image):
    with torch.no_grad():
        reference = codec_model(image)['x_hat']
    first = codec_model.compress(image)
    second = codec_model.compress(image)
    assert first['strings'] == second['strings'], 'compress is not deterministic'
    decoded = codec_model.decompress(first['strings'], first['shape'])['x_hat']
    assert decoded.shape == image.shape
    torch.testing.assert_close(decoded, reference, rtol=0, atol=1e-5)


def test_bitstream_length_matches_likelihood_bpp(codec_model, image):
    with torch.no_grad():
        likelihoods = codec_model(image)['likelihoods']
    estimated_bits = {k: float(-torch.log2(v).sum()) for k, v in likelihoods.items()}
    strings = codec_model.compress(image)['strings']
    actual_bits = {'y': 8 * len(strings[0][0]), 'z': 8 * len(strings[1][0])}
    for key in ('y', 'z'):
        # rANS costs the entropy plus a constant; scales are snapped to the 64-level table, hence the 15% slack.
        assert abs(actual_bits[key] - estimated_bits[key]) <= 0.15 * estimated_bits[key] + 128, (key, actual_bits,
                                                                                              estimated_bits)


def test_training_step_has_gradients():
    from compressai.losses import RateDistortionLoss

    torch.manual_seed(0)
    model = build_s2lic('tiny').train()
    x = torch.rand(2, 3, 64, 64)
    out = model(x)
    loss = RateDistortionLoss(lmbda=0.013)(out, x)
    assert math.isfinite(loss["loss"].item())
    loss['loss'].backward()
    assert model.g_a_enh.fuse.weight.grad is not None and model.ep_nonanchor[3][0].weight.grad.abs().sum() > 0
    assert model.acctx[2].qkv.weight.grad is not None and model.agctx[2].weights.weight.grad is not None


@pytest.mark.parametrize('shape, message', [((1, 3, 48, 64), 'multiples of 64'), ((1, 1, 64, 64), '3, H, W'),
                                            ((0, 3, 64, 64), 'empty batch')])  # the last: a reshape error before
def test_bad_input_is_rejected(codec_model, shape, message):
    with pytest.raises(ValueError, match=message):
        codec_model(torch.rand(shape))


def test_codec_file_round_trip_and_rejects_bad_files(codec_model, image):
    codec = load_tool('codec')
    decode_bytes, encode_image, unpack = codec.decode_bytes, codec.encode_image, codec.unpack
    data = encode_image(codec_model, 's2lic-tiny', 3, image[..., :50, :60])
    fields = unpack(data)
    assert fields['model'] == 's2lic-tiny' and fields['quality'] == 3 and fields['image_size'] == (50, 60)
    decoded = decode_bytes(codec_model, 's2lic-tiny', data)
    assert decoded.shape == (1, 3, 50, 60)
    with pytest.raises(ValueError, match='truncated'):
        unpack(data[:-3])
    with pytest.raises(ValueError, match='bad magic'):
        unpack(b'\x89PNG' + data[4:])
    with pytest.raises(ValueError, match='encoded with model'):
        decode_bytes(codec_model, 's2lic-small', data)


# -- the task: model, metric, baselines, data (visionattn.heads.compression.{task,evaluation,baselines,data}) --------
def _compressor(**kwargs):
    from visionattn.heads.compression.task import ImageCompressor

    torch.manual_seed(0)
    return ImageCompressor(codec=dict(type=build_s2lic, size='tiny'), **kwargs)


def _batch(images, metas=None):
    from mmengine.structures import BaseDataElement

    metas = metas or [{} for _ in images]
    return {'inputs': images, 'data_samples': [BaseDataElement(metainfo=m) for m in metas]}


def test_task_model_loss_and_real_bitstream_predict(image):
    model = _compressor(lmbda=0.013)
    images = to_uint8_batch(torch.cat([image, image.flip(-1)]))
    model.train()
    batch = model.data_preprocessor(_batch(images), training=True)
    assert batch['inputs'].dtype == torch.float32 and float(batch['inputs'].max()) <= 1.0
    losses = model(**batch, mode='loss')
    assert set(losses) == {'loss', 'bpp', 'mse'}
    expected = 0.013 * 255 ** 2 * losses['mse'] + losses['bpp']
    torch.testing.assert_close(losses['loss'].detach(), expected, rtol=1e-5, atol=1e-5)
    losses['loss'].backward()
    model.eval()
    with torch.no_grad():
        batch = model.data_preprocessor(_batch(images, [{'index': 0}, {'index': 1, 'ori_size': (50, 60)}]))
        predictions = model(**batch, mode='predict')
    first, padded = predictions
    assert first.pred_img.shape == (3, 64, 64) and first.pred_img.dtype == torch.uint8
    assert first.bpp == pytest.approx(8 * first.num_bytes / (64 * 64))
    # The padded image: quality measured on its original 50x60 pixels, rate divided by them.
    assert padded.pred_img.shape == padded.gt_img.shape == (3, 50, 60)
    assert padded.bpp == pytest.approx(8 * padded.num_bytes / (50 * 60))
    # predict decodes exactly what the eval forward pass reconstructs (rounded to uint8).
    with torch.no_grad():
        reference = model.codec(batch['inputs'][:1])['x_hat']
    assert (first.pred_img.int() - (reference[0].clamp(0, 1) * 255).round().int()).abs().max() <= 1
    assert first.encode_ms > 0 and first.decode_ms > 0 and first.bpp_estimated > 0


def to_uint8_batch(images):
    from visionattn.heads.compression.measures import to_uint8

    return to_uint8(images)


def test_msssim_loss_variant_and_bad_arguments():
    with pytest.raises(ValueError, match='metric'):
        _compressor(metric='psnr')
    with pytest.raises(ValueError, match='lmbda'):
        _compressor(lmbda=0)
    model = _compressor(metric='ms-ssim', lmbda=8.73)
    with pytest.raises(ValueError, match='at least 161'):
        model(torch.rand(1, 3, 64, 64), mode='loss')


def test_two_optimizers_step_main_and_aux_separately():
    from mmengine.optim import OptimWrapper
    from visionattn.heads.compression.task import CompressionOptimWrapperConstructor

    model = _compressor()
    cfg = dict(main=dict(type=OptimWrapper, optimizer=dict(type=torch.optim.Adam, lr=1e-3)),
               aux=dict(type=OptimWrapper, optimizer=dict(type=torch.optim.Adam, lr=1e-2)))
    wrappers = CompressionOptimWrapperConstructor(cfg)(model)
    aux_params = wrappers['aux'].optimizer.param_groups[0]['params']
    assert aux_params == [model.codec.entropy_bottleneck.quantiles]
    assert not any(p is aux_params[0] for p in wrappers['main'].optimizer.param_groups[0]['params'])
    quantiles, weight = aux_params[0].detach().clone(), model.codec.g_a_enh.fuse.weight.detach().clone()
    model.train()
    log_vars = model.train_step(_batch(torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)), wrappers)
    assert {'loss', 'bpp', 'mse', 'aux_loss'} <= set(log_vars)
    assert not torch.equal(quantiles, model.codec.entropy_bottleneck.quantiles)
    assert not torch.equal(weight, model.codec.g_a_enh.fuse.weight)
    with pytest.raises(ValueError, match='amp'):
        CompressionOptimWrapperConstructor(dict(cfg, type='AmpOptimWrapper'))
    with pytest.raises(ValueError, match='"main" and "aux"'):
        CompressionOptimWrapperConstructor(dict(main=cfg['main']))


def test_metric_on_a_known_pair():
    from visionattn.heads.compression.evaluation import RateDistortionMetric
    from visionattn.heads.compression.measures import psnr

    torch.manual_seed(0)
    reference = torch.randint(20, 236, (3, 192, 192), dtype=torch.uint8)
    decoded = reference + 10  # MSE 100 exactly: PSNR = 10 log10(255^2 / 100)
    assert psnr(reference, decoded) == pytest.approx(10 * math.log10(255 ** 2 / 100))
    assert psnr(reference, reference) == 100.0  # capped: PSNR_MAX_DB
    metric = RateDistortionMetric(baselines=('JPEG',), qualities=(10, 50, 90))
    metric.process({}, [{'gt_img': reference, 'pred_img': decoded, 'bpp': 0.5, 'encode_ms': 2.0, 'decode_ms': 4.0},
                        {'gt_img': reference, 'pred_img': reference.clone(), 'bpp': 1.5, 'encode_ms': 4.0,
                         'decode_ms': 6.0}])
    results = metric.compute_metrics(metric.results)
    assert results['bpp'] == pytest.approx(1.0) and results['encode_ms'] == pytest.approx(3.0)
    assert results['psnr'] == pytest.approx((psnr(reference, decoded) + 100.0) / 2)  # the lossless one at the cap
    assert results['ms_ssim'] < 1.0
    jpeg = metric.baseline_points['jpeg']
    assert [p['quality'] for p in jpeg] == [10, 50, 90] and jpeg[0]['bpp'] < jpeg[1]['bpp'] < jpeg[2]['bpp']
    assert jpeg[0]['psnr'] < jpeg[2]['psnr']
    with pytest.raises(KeyError, match='pred_img'):
        metric.process({}, [{'bpp': 1.0}])


def test_ms_ssim_rejects_small_images():
    from visionattn.heads.compression.measures import ms_ssim_value

    image = torch.zeros(3, 128, 200, dtype=torch.uint8)
    with pytest.raises(ValueError, match='161'):
        ms_ssim_value(image, image)



def test_psnr_of_identical_images_is_capped_and_ms_ssim_takes_one_image():
    # a lossless image (or a flat one a codec reproduces exactly) had PSNR inf, so the mean PSNR of the whole test
    # set, the gain over JPEG and the RD point were inf; a batch given to MS-SSIM failed inside pytorch-msssim
    from visionattn.heads.compression.evaluation import RateDistortionMetric
    from visionattn.heads.compression.measures import ms_ssim_value, psnr

    reference = torch.full((3, 192, 192), 128, dtype=torch.uint8)
    assert psnr(reference, reference) == 100.0
    off = reference.clone()
    off[0, 0, 0] = 129  # one value one level off: 10 log10(255^2 * N), below the cap, exact
    assert psnr(reference, off) == pytest.approx(10 * math.log10(255 ** 2 * reference.numel()))
    big = torch.full((3, 512, 768), 128, dtype=torch.uint8)
    big_off = big.clone()
    big_off[0, 0, 0] = 129  # 108.9 dB uncapped: capped too, so no image scores above an identical one
    assert psnr(big, big_off) == 100.0
    metric = RateDistortionMetric()
    metric.process({}, [{'gt_img': reference, 'pred_img': reference.clone(), 'bpp': 0.1},
                        {'gt_img': reference, 'pred_img': reference + 10, 'bpp': 0.3}])
    want = (100.0 + 10 * math.log10(255 ** 2 / 100)) / 2  # the mean of the capped and an exact PSNR (MSE 100)
    assert metric.compute_metrics(metric.results)['psnr'] == pytest.approx(want)
    with pytest.raises(ValueError, match=r'MS-SSIM takes one image \(C, H, W\), got \(1, 3, 192, 192\)'):
        ms_ssim_value(reference[None], off[None])

def test_bjontegaard_deltas_on_synthetic_curves():
    from visionattn.heads.compression.rate_distortion import bd_psnr, bd_rate

    rates = [0.1, 0.2, 0.4, 0.8, 1.6]
    psnrs = [28 + 4 * math.log(r) / math.log(2) + 0.1 * math.log(r) ** 2 for r in rates]
    # The same curve needing 20% fewer bits at every PSNR: BD-rate exactly -20%.
    assert bd_rate(rates, psnrs, [0.8 * r for r in rates], psnrs) == pytest.approx(-20.0, abs=1e-6)
    assert bd_rate(rates, psnrs, rates, psnrs) == pytest.approx(0.0, abs=1e-9)
    # A curve linear in ln(rate) with slope s, shifted to 80% of the rate: BD-PSNR = -s ln(0.8).
    slope = 4 / math.log(2)
    linear = [30 + slope * math.log(r) for r in rates]
    shifted = [30 + slope * math.log(r / 0.8) for r in rates]
    assert bd_psnr(rates, linear, rates, shifted) == pytest.approx(-slope * math.log(0.8), abs=1e-6)
    with pytest.raises(ValueError, match='>= 4 points'):
        bd_rate(rates[:3], psnrs[:3], rates, psnrs)
    with pytest.raises(ValueError, match='do not overlap'):
        bd_rate(rates, psnrs, rates, [p + 50 for p in psnrs])


def test_dataset_split_and_determinism():
    from visionattn.heads.compression.data import (
        HELD_OUT_PHOTOS,
        TRAIN_PHOTOS,
        CompressionCropDataset,
        CompressionEvalDataset,
    )

    assert not set(TRAIN_PHOTOS) & set(HELD_OUT_PHOTOS)
    crops = CompressionCropDataset(crop_size=64, length=8, seed=3)
    assert {name for name, _ in crops.images} == set(TRAIN_PHOTOS)
    first = crops[5]
    assert first['img'].shape == (3, 64, 64) and first['img'].dtype == torch.uint8
    assert first['meta']['name'] in TRAIN_PHOTOS
    assert torch.equal(first['img'], CompressionCropDataset(crop_size=64, length=8, seed=3)[5]['img'])
    crops.set_epoch(1)
    assert not torch.equal(first['img'], crops[5]['img'])
    with pytest.raises(IndexError):
        crops[8]
    with pytest.raises(ValueError, match='smaller than the 1024x1024 crop'):
        CompressionCropDataset(crop_size=1024)
    held_out = CompressionEvalDataset(mode='crop')
    assert [held_out[i]['meta']['name'] for i in range(len(held_out))] == list(HELD_OUT_PHOTOS)
    for item in (held_out[i] for i in range(len(held_out))):
        assert item['img'].shape[1] % 64 == 0 and item['img'].shape[2] % 64 == 0
    chelsea = CompressionEvalDataset(mode='pad', photos=('chelsea',))[0]  # 300 x 451
    assert chelsea['img'].shape == (3, 320, 512) and chelsea['meta']['ori_size'] == (300, 451)
    with pytest.raises(ValueError, match="'crop' or 'pad'"):
        CompressionEvalDataset(mode='resize')


def test_image_folder_dataset(tmp_path):
    from PIL import Image
    from visionattn.heads.compression.data import CompressionCropDataset, CompressionEvalDataset

    Image.fromarray((torch.rand(80, 100, 3) * 255).byte().numpy()).save(tmp_path / 'a.png')
    assert CompressionCropDataset(data_root=str(tmp_path), crop_size=64, length=2)[0]['meta']['name'] == 'a.png'
    assert CompressionEvalDataset(data_root=str(tmp_path))[0]['img'].shape == (3, 64, 64)
    with pytest.raises(FileNotFoundError, match='does not exist'):
        CompressionEvalDataset(data_root=str(tmp_path / 'missing'))


def test_rd_compareload_tool(tmp_path):
    module = load_tool('rd_compare')
    jpeg = [{'bpp': r, 'psnr': 30 + 5 * math.log(r)} for r in (0.2, 0.4, 0.8, 1.6, 3.2)]
    paths = []
    for index, rate in enumerate((0.3, 0.6, 1.2, 2.4)):  # the JPEG curve at half the rate: BD-rate -50%
        path = tmp_path / f'q{index}.json'
        path.write_text(json.dumps({'model': {'bpp': rate / 2, 'psnr': 30 + 5 * math.log(rate)}, 'jpeg': jpeg}))
        paths.append(str(path))
    report = module.compare(paths, png=tmp_path / 'rd.png')
    assert report['points'] == 4 and report['bd_rate_vs_jpeg'] == pytest.approx(-50.0, abs=1e-6)
    assert report['bd_psnr_vs_jpeg'] == pytest.approx(5 * math.log(2), abs=1e-6)
    assert (tmp_path / 'rd.png').stat().st_size > 0
    # Issue 21: a file passed twice (or a copy of one level) counted as extra points and moved the BD-rate.
    with pytest.raises(ValueError, match='passed more than once'):
        module.compare(paths + [paths[0]])
    copy = tmp_path / 'copy.json'
    copy.write_text(Path(paths[1]).read_text())
    with pytest.raises(ValueError, match='repeats the point'):
        module.compare(paths + [str(copy)])


def test_s2lic_quick_joins_runs_into_one_curve(tmp_path):
    module = load_tool('s2lic_quick')
    jpeg = [{'bpp': rate, 'psnr': 20 + 10 * rate, 'ms_ssim': 0.8 + 0.1 * rate} for rate in (0.2, 0.4, 0.8)]
    paths = []
    for lmbda, rate in ((0.0067, 0.3), (0.0035, 0.1)):
        run = {'size': 'tiny', 'lmbda': lmbda, 'steps': 10, 'jpeg': jpeg,
               's2lic': {'bpp': rate, 'psnr': 25.0 + rate, 'ms_ssim': 0.9}}
        paths.append(tmp_path / f'{lmbda}.json')
        paths[-1].write_text(json.dumps(run))
    summary = module.combine_results(paths, tmp_path / 'rd')
    assert [row['lmbda'] for row in summary['points']] == [0.0035, 0.0067]  # ordered by rate
    assert summary['points'][1]['JPEG PSNR at this bpp'] == pytest.approx(23.0)  # interpolated at 0.3 bpp
    assert summary['points'][0]['JPEG PSNR at this bpp'] is None  # below JPEG's lowest rate: no comparison
    assert json.loads((tmp_path / 'rd' / 'combined.json').read_text()) == summary
    assert all((tmp_path / 'rd' / name).stat().st_size > 0 for name in ('rd_psnr.png', 'rd_msssim.png'))


def test_avif_baseline_points_rise_with_quality():
    from visionattn.heads.compression.baselines import baseline_rd_points

    image = torch.from_numpy(__import__('skimage.data', fromlist=['astronaut']).astronaut()[:192, :200].copy())
    points = baseline_rd_points([image.permute(2, 0, 1).contiguous()], 'avif', qualities=(20, 60, 90))
    assert [p['quality'] for p in points] == [20, 60, 90]
    assert points[0]['bpp'] < points[1]['bpp'] < points[2]['bpp'] and points[0]['psnr'] < points[2]['psnr']
    with pytest.raises(ValueError, match='unknown baseline'):
        baseline_rd_points([image.permute(2, 0, 1)], 'bpg', qualities=(20,))


def _served_zoo_checkpoint(server, root, architecture, quality):
    """A CompressAI zoo checkpoint (random weights) saved under torch hub's name rule: '<name>-<sha256 prefix>.'"""
    import hashlib

    from visionattn.heads.compression.baselines import compressai_zoo_codec

    torch.manual_seed(quality)
    source = compressai_zoo_codec(architecture, quality, pretrained=False)
    source.update(force=True)  # released files carry CDF tables sized by the trained distributions
    scratch = root / 'scratch.pth.tar'
    torch.save(source.state_dict(), scratch)
    name = f'{architecture}-{quality}-{hashlib.sha256(scratch.read_bytes()).hexdigest()[:8]}.pth.tar'
    scratch.rename(root / name)
    return source, server.url(name)


def test_compressai_zoo_baseline_loads_safely_and_codes_real_bitstreams(weight_server, tmp_path):
    from visionattn.heads.compression.baselines import compressai_zoo_codec, learned_rd_points

    from visionattn.hub import CheckpointError, CheckpointMismatchError

    root = tmp_path / 'served'  # the loopback server's folder
    source, url = _served_zoo_checkpoint(weight_server, root, 'bmshj2018-factorized', 1)
    codec = compressai_zoo_codec('bmshj2018-factorized', 1, url=url)
    for key, value in source.state_dict().items():
        assert torch.equal(codec.state_dict()[key], value), key
    image = torch.randint(0, 256, (3, 170, 200), dtype=torch.uint8)  # not a multiple of 64: padded, then cropped
    path = Path(torch.hub.get_dir()) / 'checkpoints' / url.split('/')[-1]
    points = learned_rd_points([image], 'bmshj2018-factorized', qualities=(1,), files={1: path})
    assert points[0]['bpp'] > 0 and math.isfinite(points[0]['psnr']) and 0 < points[0]['ms_ssim'] <= 1
    # A quality-6 file (other widths) does not load into the quality-1 model, and a file whose sha256 does not
    # match the prefix in its name is refused and removed.
    _, other = _served_zoo_checkpoint(weight_server, root, 'bmshj2018-factorized', 6)
    with pytest.raises(CheckpointMismatchError, match='shape mismatches'):
        compressai_zoo_codec('bmshj2018-factorized', 1, url=other)
    wrong = 'bmshj2018-factorized-2-00000000.pth.tar'
    (root / wrong).write_bytes((root / url.split('/')[-1]).read_bytes())
    with pytest.raises(CheckpointError, match='checksum mismatch'):
        compressai_zoo_codec('bmshj2018-factorized', 2, url=weight_server.url(wrong))
    with pytest.raises(ValueError, match='qualities'):
        compressai_zoo_codec('cheng2020-anchor', 8, pretrained=False)


def test_psnr_and_ms_ssim_refuse_float_images():
    # adversarial probe: [0, 1] floats were scored against a peak of 255 (about 48 dB too low), without a word
    from visionattn.heads.compression.measures import ms_ssim_value, psnr

    image = torch.rand(3, 8, 8)
    with pytest.raises(ValueError, match='PSNR takes uint8 images .* got torch.float32 and torch.float32'):
        psnr(image, image * 0.9)
    with pytest.raises(ValueError, match='MS-SSIM takes uint8 images'):
        ms_ssim_value(torch.rand(3, 170, 170), torch.rand(3, 170, 170))


def test_rd_compare_refuses_nan_rates_other_test_sets_and_unreadable_files(tmp_path):
    # adversarial probe: a NaN bpp gave BD-rate NaN silently; files measured on other images (their baseline curves
    # differ) were joined into one curve; a broken JSON file raised json's error, which names no file
    from visionattn.heads.compression.rate_distortion import bd_rate

    with pytest.raises(ValueError, match='test: rates must be finite and positive'):
        bd_rate([0.1, 0.2, 0.4, 0.8], [28, 30, 32, 34], [0.1, 0.2, float('nan'), 0.8], [28.5, 30.5, 32.5, 34.5])
    module = load_tool('rd_compare')
    jpeg = [{'quality': q, 'bpp': r, 'psnr': 30 + 5 * math.log(r)} for q, r in ((10, 0.2), (50, 0.8), (90, 3.2))]
    paths = []
    for index, rate in enumerate((0.3, 0.6, 1.2, 2.4)):
        curve = jpeg if index < 3 else [dict(point, psnr=point['psnr'] + 2) for point in jpeg]  # other images
        paths.append(tmp_path / f'q{index}.json')
        paths[-1].write_text(json.dumps({'model': {'bpp': rate / 2, 'psnr': 30 + 5 * math.log(rate)}, 'jpeg': curve}))
    with pytest.raises(ValueError, match=f'{paths[3]} and {paths[0]} record other jpeg baseline curves'):
        module.compare(paths)
    paths[3].write_text('{"model": {"bpp": 0.4, "psnr": Na')
    with pytest.raises(ValueError, match=f'{paths[3]}: cannot read the results JSON'):
        module.compare(paths)


def test_s2lic_quick_refuses_runs_of_several_sizes(tmp_path):
    module = load_tool('s2lic_quick')
    jpeg = [{'bpp': rate, 'psnr': 20 + 10 * rate, 'ms_ssim': 0.9} for rate in (0.2, 0.4, 0.8)]
    paths = []
    for size, rate in (('small', 0.3), ('tiny', 0.1)):  # a smoke run caught by the glob
        paths.append(tmp_path / f'{size}.json')
        paths[-1].write_text(json.dumps({'size': size, 'lmbda': 0.01, 'steps': 10, 'jpeg': jpeg,
                                         's2lic': {'bpp': rate, 'psnr': 25.0, 'ms_ssim': 0.9}}))
    with pytest.raises(ValueError, match=r'several --size presets .*small\.json \(small\), .*tiny\.json \(tiny\)'):
        module.combine_results(paths, tmp_path / 'rd')
    assert not (tmp_path / 'rd').exists()


# -- adversarial probe of the model API (s2lic, measures) -------------------------------------------------------------
def test_s2lic_checks_the_window_multiple_and_its_stage_lists():
    # window 12: sides had to be multiples of max(64, 96) = 96, so 96 passed and failed in the hyper synthesis (a
    # broadcast of 8 against 6); a short depths list raised IndexError, heads not dividing N a reshape in SwinV2
    model = build_s2lic('tiny', window_size=12)
    with pytest.raises(ValueError, match='multiples of 192'):
        model(torch.rand(1, 3, 96, 96))
    with pytest.raises(ValueError, match='at least 3 entries'):
        build_s2lic('tiny', depths=(1, 1))
    with pytest.raises(ValueError, match=r'each must divide N=32, got \[3, 3, 3\]'):
        build_s2lic('tiny', heads=(3, 3, 3, 3, 3))


def test_s2lic_coding_refuses_entropy_tables_that_were_not_built(image):
    # only the bottleneck updated: compressai's rANS coder took the Gaussian model's empty tables and the process
    # died (segmentation fault)
    torch.manual_seed(0)
    model = build_s2lic('tiny').eval()
    model.entropy_bottleneck.update(force=True)
    with pytest.raises(ValueError, match=r'gaussian_conditional has no CDF tables; call update\(force=True\)'):
        model.compress(image)
    with pytest.raises(ValueError, match='S2LIC.decompress: the gaussian_conditional has no CDF tables'):
        model.decompress([[b'\x00' * 8], [b'\x00' * 8]], (1, 1))


def test_to_uint8_keeps_uint8_images_and_psnr_refuses_empty_ones():
    # a uint8 image went through clamp(0, 1) * 255: every value from 1 up became 255, silently
    from visionattn.heads.compression.measures import psnr, to_uint8

    image = torch.tensor([[[0, 1, 128, 255]]], dtype=torch.uint8)
    assert torch.equal(to_uint8(image), image)
    assert torch.equal(to_uint8(image.float() / 255), image)
    with pytest.raises(ValueError, match='to_uint8 takes float images'):
        to_uint8(image.long())
    empty = torch.zeros(3, 0, 4, dtype=torch.uint8)
    with pytest.raises(ValueError, match='PSNR of empty images'):  # was NaN
        psnr(empty, empty)


def test_codec_round_trip_returns_the_input_size_and_refuses_an_empty_batch():
    # a stride-16 zoo codec decoded a 50x60 image to 64x64 and the round trip returned that; B = 0 divided by zero
    from compressai.zoo import bmshj2018_factorized
    from visionattn.heads.compression.measures import codec_round_trip

    torch.manual_seed(0)
    codec = bmshj2018_factorized(1, pretrained=False)
    result = codec_round_trip(codec, torch.rand(1, 3, 50, 60), estimate=False)
    assert result['x_hat'].shape == (1, 3, 50, 60)
    with pytest.raises(ValueError, match=r'empty batch \(B = 0\)'):
        codec_round_trip(codec, torch.rand(0, 3, 64, 64))
