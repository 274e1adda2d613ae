"""Where a diffusion model's training stands, noise level by noise level: a diagnosis for samples that draw nothing.

    python tools/denoise_probe.py configs/diffusion/pixart_tiny_synthetic_pairs.py work_dirs/base/iter_3000.pth \\
        --out probe.png

Held-out images are noised at each ``--timesteps`` t (the training noise), the denoiser predicts once, and the
noise and one-step x0 estimates its prediction implies (for a noise prediction eps, x0 = (x_t - sqrt(1 - a_t) eps) /
sqrt(a_t); see ``DiffusionModel.estimates`` for v and x0) are compared with the truth: the MSE of the noise (the
epsilon model's training loss at that t) and of x0. A model that denoises well at small t but not at large t has learnt
textures and colours, not yet the layout that the first sampling steps decide: its samples are blotches however
good its loss looks (the loss averages over t, and at large t the noise is easy to predict while x0 is not). The
figure has one row of real images, one of x0 estimates per t (clipped to [-1, 1]), and one of samples per
``--samplers`` entry (sampler:steps), all from the same items and seeded noise.
"""
import argparse
import os.path as osp
import sys


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config', help='config of a diffusion model (DiffusionModel)')
    parser.add_argument('checkpoint', help='trained checkpoint of that model')
    parser.add_argument('--num-samples', type=int, default=8, help='validation items to probe')
    parser.add_argument('--timesteps', type=int, nargs='+', default=[100, 300, 600, 900],
                        help='training timesteps to noise the images at')
    parser.add_argument('--samplers', nargs='*', default=['dpm_solver:20', 'ddim:50'],
                        help='sampler:steps rows of the figure (dpm_solver, ddim, ddpm)')
    parser.add_argument('--device', default=None, help='cuda or cpu (default: cuda when available)')
    parser.add_argument('--out', default=None, help='save the figure (PNG) here and the numbers beside it (JSON)')
    parser.add_argument('--cfg-options', nargs='+', action='extend', metavar='KEY=VALUE',
                        help='override config settings, checked as tools/train.py checks them')
    return parser.parse_args(argv)


def denoise_probe(model, batch: dict, timesteps, samplers=(), seed: int = 0) -> dict:
    """One-step noise and x0 errors of ``model`` (a DiffusionModel) on ``batch`` (a diffusion_collate batch) at each
    training timestep, and samples from each ``(sampler, steps)``. Returns ``{'rows': [{'t', 'eps_mse', 'x0_mse'}],
    'images': [(label, tensor [B, C, H, W] in [-1, 1])]}``."""
    import torch
    data = model.data_preprocessor(batch)
    inputs, data_samples = data['inputs'], data['data_samples']
    x0 = model.encode(inputs)
    labels = model._labels(data_samples, x0.shape[0], x0.device)
    conditions = model.conditions(inputs, data_samples)
    scheduler = model.train_scheduler
    num_train = model.noise_config['num_train_timesteps']
    generator = torch.Generator().manual_seed(seed)
    rows, images = [], [('real', model.decode(x0))]
    with torch.no_grad():
        for t in timesteps:
            if not 0 <= t < num_train:
                raise ValueError(f'timestep {t} is outside the training range 0..{num_train - 1}')
            noise = torch.randn(x0.shape, generator=generator).to(x0)
            t_batch = torch.full((x0.shape[0],), t, device=x0.device, dtype=torch.long)
            x_t = scheduler.add_noise(x0, noise, t_batch)
            prediction = model.denoiser(x_t, t_batch, labels, **conditions)[:, :model.denoiser.in_channels]
            eps, estimate = model.estimates(x_t, prediction, t_batch)
            rows.append({'t': t, 'eps_mse': float(((eps - noise.float()) ** 2).mean()),
                         'x0_mse': float(((estimate - x0.float()) ** 2).mean())})
            images.append((f'x0 at t={t}', model.decode(estimate.to(x0.dtype)).clamp(-1, 1)))
        kept = model.sampler, model.num_inference_steps
        try:
            for sampler, steps in samplers:
                model.sampler = sampler
                sample = model.sample(x0.shape, labels, conditions, data_samples, num_inference_steps=steps)
                images.append((f'{sampler}, {steps} steps', model.decode(sample).clamp(-1, 1)))
        finally:
            model.sampler, model.num_inference_steps = kept
    return {'rows': rows, 'images': images}


def _parse_samplers(entries) -> list:
    samplers = []
    for entry in entries:
        name, _, steps = entry.partition(':')
        if name not in ('dpm_solver', 'ddim', 'ddpm') or not steps.isdigit() or int(steps) < 1:
            raise SystemExit(f'--samplers entry {entry!r} must be sampler:steps with sampler dpm_solver, ddim or ddpm '
                             'and steps >= 1')
        samplers.append((name, int(steps)))
    return samplers


def save_figure(images, path: str, scale: int = 3) -> None:
    """Rows of images (label, [B, C, H, W] in [-1, 1]) as one PNG, each row's label printed on its left."""
    import numpy as np
    import torch
    from PIL import Image, ImageDraw
    label_width = 130
    rows = [torch.cat(list(batch.float().cpu()), dim=2) for _, batch in images]  # [C, H, W * B]
    height, width = rows[0].shape[1] * scale, rows[0].shape[2] * scale
    sheet = Image.new('RGB', (label_width + width, height * len(rows)), 'white')
    draw = ImageDraw.Draw(sheet)
    for i, ((label, _), row) in enumerate(zip(images, rows)):
        pixels = ((row.clamp(-1, 1) + 1) * 127.5).round().byte()
        pixels = pixels.expand(3, -1, -1) if pixels.shape[0] == 1 else pixels[:3]
        image = Image.fromarray(np.ascontiguousarray(pixels.permute(1, 2, 0).numpy()))
        sheet.paste(image.resize((width, height), Image.NEAREST), (label_width, i * height))
        draw.text((4, i * height + height // 2 - 6), label, fill='black')
    sheet.save(path)


def main(argv=None):
    args = parse_args(argv)
    samplers = _parse_samplers(args.samplers)
    sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
    from relevance_score import load_eval_model
    from visionattn.heads.diffusion.task import diffusion_collate
    model, cfg = load_eval_model(args.config, args.checkpoint, args.cfg_options, args.device)
    dataset_cfg = dict(cfg.val_dataloader.dataset)
    dataset = dataset_cfg.pop('type')(**dataset_cfg)
    batch = diffusion_collate([dataset[i] for i in range(min(args.num_samples, len(dataset)))])
    report = denoise_probe(model, batch, args.timesteps, samplers)
    print(f"{'t':>5} {'noise MSE':>10} {'x0 MSE':>10}")
    for row in report['rows']:
        print(f"{row['t']:>5} {row['eps_mse']:>10.4f} {row['x0_mse']:>10.4f}")
    if args.out:
        import json
        save_figure(report['images'], args.out)
        with open(osp.splitext(args.out)[0] + '.json', 'w') as f:
            json.dump({'checkpoint': args.checkpoint, 'rows': report['rows']}, f, indent=2)
        print(f'saved {args.out}')
    return report


if __name__ == '__main__':
    main()
