"""Short S2LIC training on crops of scikit-image's shipped photos, then evaluation against JPEG/WebP.

Train/held-out split (fixed): train on rocket, hubble_deep_field, immunohistochemistry, retina, stereo_motorcycle
(left view) and colorwheel; hold out astronaut, chelsea and coffee. Rate is measured from the real bitstreams
(``compress`` output length, header excluded), PSNR on [0, 255], MS-SSIM with pytorch-msssim. Baselines: JPEG,
WebP and AVIF via Pillow at several qualities, measured the same way (encoded file length). Writes results JSON
and an RD PNG to --out. ``--combine`` joins the results of several runs (one per lambda) into one curve: a table of
each point against the baselines at the same rate, and PSNR and MS-SSIM plots.

Usage:
    python tools/s2lic_quick.py --size small --lmbda 0.0067 --lr 2e-4 --minutes 14.5 --out work_dirs/s2lic_0.0067
    python tools/s2lic_quick.py --combine work_dirs/s2lic_*/results.json --out work_dirs/s2lic_rd
    python tools/s2lic_quick.py --size tiny --minutes 0.3 --batch 2 --crop 64 --out /tmp/s2lic_smoke   # CPU smoke
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from compressai.losses import RateDistortionLoss
from visionattn.heads.compression.baselines import pillow_rd_points
from visionattn.heads.compression.data import HELD_OUT_PHOTOS, CompressionCropDataset, CompressionEvalDataset
from visionattn.heads.compression.measures import codec_round_trip, ms_ssim_value, psnr, to_uint8
from visionattn.heads.compression.rate_distortion import plot_rd_curves, psnr_at_rate
from visionattn.heads.compression.s2lic import build_s2lic

# Pillow qualities; 1-3 reach JPEG's lowest rates (about 0.19 bpp on the held-out photos), for low-rate points.
QUALITIES = (1, 2, 3, 5, 10, 20, 30, 50, 75, 90)


def stack_images(items: list[dict]) -> torch.Tensor:
    return torch.stack([item['img'] for item in items])


def evaluate_model(model, photos: list[torch.Tensor], device) -> dict:
    """Mean measured bpp, likelihood bpp, PSNR, MS-SSIM and per-image encode/decode seconds over uint8 photos."""
    rows = []
    for photo in photos:
        result = codec_round_trip(model, photo[None].to(device).float() / 255.0)
        decoded = to_uint8(result['x_hat'][0]).cpu()
        pixels = photo.shape[-2] * photo.shape[-1]
        rows.append({'bpp': 8 * result['num_bytes'][0] / pixels, 'bpp_estimated': result['estimated_bits'][0] / pixels,
                     'psnr': psnr(photo, decoded), 'ms_ssim': ms_ssim_value(photo, decoded),
                     'encode_s': result['encode_s'], 'decode_s': result['decode_s']})
    return {key: float(np.mean([row[key] for row in rows])) for key in rows[0]}


def combine_results(paths, out_dir: Path) -> dict:
    """One RD curve from several runs' results.json (baselines from the first), with a table and two plots."""
    runs = [json.loads(Path(path).read_text()) for path in paths]
    sizes = {str(path): run.get('size') for path, run in zip(paths, runs)}
    if len(set(sizes.values())) > 1:  # a glob that caught a smoke run mixed two models under one label
        raise ValueError(f'runs of several --size presets cannot form one curve: '
                         f'{", ".join(f"{path} ({size})" for path, size in sizes.items())}')
    resolved = [Path(path).resolve() for path in paths]
    if len(set(resolved)) < len(resolved):
        raise ValueError('a results file was passed more than once (each run counts once)')
    baselines = {name: runs[0][key] for key, name in (('jpeg', 'JPEG'), ('webp', 'WebP'), ('avif', 'AVIF'))
                 if key in runs[0]}
    points = sorted(({**run['s2lic'], 'lmbda': run['lmbda'], 'steps': run['steps']} for run in runs),
                    key=lambda point: point['bpp'])
    rows = []
    for point in points:
        row = {key: point[key] for key in ('lmbda', 'steps', 'bpp', 'psnr', 'ms_ssim')}
        for name, curve in baselines.items():  # None where the rate is outside the baseline's range
            value = psnr_at_rate(curve, point['bpp'])
            row[f'{name} PSNR at this bpp'] = None if np.isnan(value) else value
        rows.append(row)
    label = f"s2lic-{runs[0]['size']}"
    title = 'Held-out skimage photos: ' + ', '.join(HELD_OUT_PHOTOS)
    out_dir.mkdir(parents=True, exist_ok=True)
    plot_rd_curves({label: points, **baselines}, out_dir / 'rd_psnr.png', title=title)
    plot_rd_curves({label: points, **baselines}, out_dir / 'rd_msssim.png', title=title, quality='ms_ssim')
    summary = {'points': rows, 'baselines': baselines}
    (out_dir / 'combined.json').write_text(json.dumps(summary, indent=2))
    for row in rows:
        print(' '.join(f'{key}={"n/a" if value is None else f"{value:.4g}"}' for key, value in row.items()))
    return summary


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--size', default='small', choices=['paper', 'small', 'tiny'])
    parser.add_argument('--lmbda', type=float, default=0.013)
    parser.add_argument('--minutes', type=float, default=6.5, help='training wall-clock budget')
    parser.add_argument('--batch', type=int, default=16)
    parser.add_argument('--crop', type=int, default=256)
    parser.add_argument('--lr', type=float, default=1e-4)
    parser.add_argument('--warmup-steps', type=int, default=100, help='linear warm-up of the learning rate')
    parser.add_argument('--decay-at', type=float, default=0.85,
                        help='share of the time budget after which the learning rate drops 10x (1 = never)')
    parser.add_argument('--out', default='work_dirs/s2lic_quick')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--combine', nargs='+', metavar='RESULTS_JSON',
                        help='join these runs into one RD curve in --out instead of training')
    args = parser.parse_args(argv)
    out_dir = Path(args.out)
    if args.combine:
        combine_results(args.combine, out_dir)
        return 0
    out_dir.mkdir(parents=True, exist_ok=True)
    device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(args.seed)
    model = build_s2lic(args.size).to(device)
    print(f's2lic-{args.size}: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M params on {device}')
    crops = CompressionCropDataset(crop_size=args.crop, length=2 ** 62, seed=args.seed)
    loader = iter(torch.utils.data.DataLoader(crops, batch_size=args.batch, num_workers=2, pin_memory=True,
                                              collate_fn=stack_images))
    main_params = [p for n, p in model.named_parameters() if not n.endswith('.quantiles')]
    aux_params = [p for n, p in model.named_parameters() if n.endswith('.quantiles')]
    optimizer = torch.optim.Adam(main_params, lr=args.lr)
    aux_optimizer = torch.optim.Adam(aux_params, lr=1e-3)
    criterion = RateDistortionLoss(lmbda=args.lmbda)
    deadline, step, start = time.time() + 60 * args.minutes, 0, time.time()
    model.train()
    while time.time() < deadline:
        decayed = time.time() - start > args.decay_at * 60 * args.minutes
        for group in optimizer.param_groups:
            group['lr'] = args.lr * min(1.0, (step + 1) / args.warmup_steps) * (0.1 if decayed else 1.0)
        x = next(loader).to(device, non_blocking=True).float() / 255.0
        out = model(x)  # fp32 (TF32 matmuls): bf16 likelihoods would distort the rate term
        loss = criterion(out, x)
        optimizer.zero_grad(set_to_none=True)
        loss['loss'].backward()
        torch.nn.utils.clip_grad_norm_(main_params, 1.0)
        optimizer.step()
        aux_optimizer.zero_grad(set_to_none=True)
        model.aux_loss().backward()
        aux_optimizer.step()
        if step % 50 == 0:
            print(f'step {step} {time.time() - start:.0f}s lr {optimizer.param_groups[0]["lr"]:.2e} '
                  f'loss {loss["loss"].item():.4f} bpp {loss["bpp_loss"].item():.4f} '
                  f'mse {loss["mse_loss"].item():.6f}', flush=True)
        step += 1
    train_seconds = time.time() - start
    torch.save({'state_dict': model.state_dict(), 'size': args.size, 'lmbda': args.lmbda, 'steps': step},
               out_dir / 'model.pth')
    held_out = [item['img'] for item in CompressionEvalDataset(mode='crop')]
    results = {'size': args.size, 'lmbda': args.lmbda, 'lr': args.lr, 'batch': args.batch, 'crop': args.crop,
               'steps': step, 'train_seconds': train_seconds,
               's2lic': evaluate_model(model.float(), held_out, device)}
    for fmt in ('JPEG', 'WEBP', 'AVIF'):
        try:
            results[fmt.lower()] = pillow_rd_points(held_out, fmt, QUALITIES)
        except ValueError as error:  # a Pillow build without AVIF: say so and go on
            print(f'{fmt} skipped: {error}')
    results['jpeg_psnr_at_s2lic_bpp'] = psnr_at_rate(results['jpeg'], results['s2lic']['bpp'])
    (out_dir / 'results.json').write_text(json.dumps(results, indent=2))
    curves = {f's2lic-{args.size}': [results['s2lic']], 'JPEG': results['jpeg'], 'WebP': results['webp']}
    if 'avif' in results:
        curves['AVIF'] = results['avif']
    plot_rd_curves(curves, out_dir / 'rd_curve.png', title='Held-out skimage photos: ' + ', '.join(HELD_OUT_PHOTOS))
    print(json.dumps(results['s2lic']), f'JPEG PSNR at same bpp: {results["jpeg_psnr_at_s2lic_bpp"]:.2f} dB')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
