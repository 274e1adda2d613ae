"""ControlNet Relevance Score (RelaCtrl, arXiv 2502.14377 Sec. 3): switch off one control block at a time and
measure how much generation quality and control fidelity drop; rank the blocks by that drop.

    python tools/relevance_score.py configs/diffusion/relactrl_pixart_tiny_synthetic_pairs.py \\
        work_dirs/relactrl_pixart_tiny_synthetic_pairs/iter_3000.pth --num-samples 128 --out relevance.json

Every variant samples the same items from the same noise (seeded), so the differences come from the skipped block
alone. Control fidelity = edge-map F1 between the control and the Canny edges of the sample; quality = PSNR against
the paired real image (the paper uses FID and its own fidelity score instead). Relevance of block k =
(F1_full - F1_skip_k) / F1_full + (PSNR_full - PSNR_skip_k) / PSNR_full; a higher score = a more relevant block.
PSNR is capped at 100 dB (SampleQualityMetric's PSNR_MAX_DB): samples identical to their real images score 100 dB,
not inf, so a block whose removal changes nothing scores 0, not NaN.
"""
import argparse
import json
import os.path as osp


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config', help='config of a controlled diffusion model (RelaCtrl)')
    parser.add_argument('checkpoint', help='trained checkpoint of that model')
    parser.add_argument('--num-samples', type=int, default=64, help='validation items to sample per variant')
    parser.add_argument('--batch-size', type=int, default=32)
    parser.add_argument('--steps', type=int, default=None, help='sampling steps (default: the config\'s)')
    parser.add_argument('--device', default=None, help='cuda or cpu (default: cuda when available)')
    parser.add_argument('--out', default=None, help='save the scores and ranking to this JSON file')
    parser.add_argument('--cfg-options', nargs='+', action='extend', metavar='KEY=VALUE',
                        help='override config settings, checked as tools/train.py checks them')
    return parser.parse_args(argv)


def evaluate(model, batches, metrics_factory) -> dict:
    """Run predict over the batches and return the averaged metrics."""
    import torch
    metrics = metrics_factory()
    with torch.no_grad():
        for batch in batches:
            data = model.data_preprocessor(batch)
            samples = model(**data, mode='predict')
            for metric in metrics:
                metric.process(None, [s.to_dict() for s in samples])
    scores = {}
    for metric in metrics:
        scores.update(metric.compute_metrics(metric.results))
    return scores


def relevance_scores(model, batches, progress=True) -> dict:
    """{'full': metrics, 'blocks': [{'block', 'f1', 'psnr', 'relevance'}...], 'ranking': [block indices]}."""
    from tqdm import tqdm
    from visionattn.heads.diffusion.evaluation import ControlFidelityMetric, SampleQualityMetric

    denoiser = model.denoiser
    if not hasattr(denoiser, 'skip_blocks') or not hasattr(denoiser, 'controlnet'):
        raise TypeError(f'{type(denoiser).__name__} is not a control net with switchable blocks (RelaCtrlPixArt)')

    def factory():
        return [ControlFidelityMetric(), SampleQualityMetric()]
    variants = [None, *range(len(denoiser.controlnet))]
    results = {}
    saved = denoiser.skip_blocks, getattr(model, 'compare_base', False)
    model.compare_base = False
    try:  # an error (or Ctrl-C) mid-way must not leave the model with a block switched off
        for block in tqdm(variants, desc='relevance', disable=not progress):
            denoiser.skip_blocks = set() if block is None else {block}
            results[block] = evaluate(model, batches, factory)
    finally:
        denoiser.skip_blocks, model.compare_base = saved
    full = results[None]
    rows = []
    for block in variants[1:]:
        f1, psnr = results[block]['control_f1'], results[block]['psnr']
        relevance = (full['control_f1'] - f1) / max(full['control_f1'], 1e-8) + \
            (full['psnr'] - psnr) / max(abs(full['psnr']), 1e-8)
        rows.append({'block': block, 'after_base_block': denoiser.control_indices[block], 'control_f1': f1,
                     'psnr': psnr, 'relevance': relevance})
    ranking = [row['block'] for row in sorted(rows, key=lambda r: -r['relevance'])]
    return {'full': full, 'blocks': rows, 'ranking': ranking}


def load_eval_model(config: str, checkpoint: str, cfg_options=None, device=None):
    """The config's model (with ``cfg_options``) holding every weight of ``checkpoint``, in eval mode on ``device``
    (default cuda when available); returns (model, cfg). Exits with a message naming a missing file, a bad option or
    a checkpoint that does not fit."""
    if not osp.isfile(checkpoint):
        raise SystemExit(f'checkpoint file {checkpoint} does not exist')
    import torch

    from visionattn.engine import MODELS, ConfigError, apply_cfg_options, load_training_checkpoint, read_config

    try:
        cfg = read_config(config)
        apply_cfg_options(cfg, cfg_options)
    except ConfigError as e:  # names the file and line, or the option
        raise SystemExit(str(e)) from None
    if cfg.model.get('pretrained'):
        cfg.model.pretrained = False  # every weight, the VAE's too, comes from the checkpoint
    model = MODELS.build(cfg.model)
    state = load_training_checkpoint(checkpoint)
    state = state.get('state_dict', state)
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise SystemExit(f'{checkpoint} does not fit the model: missing {result.missing_keys}, '
                         f'unexpected {result.unexpected_keys}')
    device = device or ('cuda' if torch.cuda.is_available() else 'cpu')
    return model.to(device).eval(), cfg


def main(argv=None):
    args = parse_args(argv)
    from visionattn.heads.diffusion.task import diffusion_collate
    model, cfg = load_eval_model(args.config, args.checkpoint, args.cfg_options, args.device)
    if args.steps:
        model.num_inference_steps = args.steps
    dataset_cfg = dict(cfg.val_dataloader.dataset)
    dataset = dataset_cfg.pop('type')(**dataset_cfg)
    count = min(args.num_samples, len(dataset))
    batches = [diffusion_collate([dataset[i] for i in range(start, min(start + args.batch_size, count))])
               for start in range(0, count, args.batch_size)]
    report = relevance_scores(model, batches)
    full = report['full']
    print(f"all control blocks: control F1 {full['control_f1']:.4f}, PSNR {full['psnr']:.2f} dB")
    print(f"{'rank':>4} {'block':>5} {'after base block':>16} {'control F1':>10} {'PSNR':>7} {'relevance':>9}")
    by_block = {row['block']: row for row in report['blocks']}
    for rank, block in enumerate(report['ranking'], 1):
        row = by_block[block]
        print(f"{rank:>4} {block:>5} {row['after_base_block']:>16} {row['control_f1']:>10.4f} {row['psnr']:>7.2f} "
              f"{row['relevance']:>9.4f}")
    if args.out:
        with open(args.out, 'w') as f:
            json.dump(report, f, indent=2)
        print(f'saved to {args.out}')
    return report


if __name__ == '__main__':
    main()
