"""Rate-distortion comparison of a learned codec's quality levels against classical codecs.

Reads one JSON per quality level written by ``RateDistortionMetric(results_path=...)`` (tools/test.py with
``--cfg-options test_evaluator.results_path=DIR/qN.json``), joins the model points into a curve, and reports the
Bjontegaard BD-rate (%, negative = fewer bits) and BD-PSNR (dB) against each baseline curve stored in the files
(JPEG / WebP from the first file), then draws the RD curves as a PNG.

    python tools/rd_compare.py work_dirs/rd/q*.json --label s2lic --png work_dirs/rd/rd_curve.png
"""
import argparse
import json
import sys
from pathlib import Path

from visionattn.heads.compression.rate_distortion import bd_psnr, bd_rate, plot_rd_curves


def compare(paths, label: str = 'model', png=None) -> dict:
    """BD-rate / BD-PSNR of the model curve from ``paths`` against every baseline of the first file."""
    resolved = [Path(p).resolve() for p in paths]
    repeated = sorted({str(p) for p in resolved if resolved.count(p) > 1})
    if repeated:
        raise ValueError(f'passed more than once: {", ".join(repeated)} (each quality level counts once)')
    files = [json.loads(Path(p).read_text()) for p in paths]
    if any('model' not in f for f in files):
        raise ValueError('every file needs a "model" entry (RateDistortionMetric results_path output)')
    seen = {}
    for path, f in zip(paths, files):
        point = (f['model']['bpp'], f['model']['psnr'])
        if point in seen:
            raise ValueError(f'{path} repeats the point of {seen[point]} (bpp {point[0]}, PSNR {point[1]}): a copy '
                             'of one quality level would weigh it twice in the BD-rate fit')
        seen[point] = path
    model = sorted((f['model'] for f in files), key=lambda p: p['bpp'])
    baselines = {k: v for k, v in files[0].items() if k != 'model'}
    if not baselines:
        raise ValueError(f'{paths[0]} has no baseline curves: test with RateDistortionMetric(baselines=(...))')
    report = {'points': len(model)}
    for name, points in baselines.items():
        rates, psnrs = [p['bpp'] for p in points], [p['psnr'] for p in points]
        report[f'bd_rate_vs_{name}'] = bd_rate(rates, psnrs, [p['bpp'] for p in model], [p['psnr'] for p in model])
        report[f'bd_psnr_vs_{name}'] = bd_psnr(rates, psnrs, [p['bpp'] for p in model], [p['psnr'] for p in model])
    if png:
        plot_rd_curves({label: model, **baselines}, png)
    return report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('results', nargs='+', help='JSON files, one per quality level (>= 4 for BD-rate)')
    parser.add_argument('--label', default='model', help='legend label of the learned codec')
    parser.add_argument('--png', help='write the RD curves here')
    args = parser.parse_args(argv)
    print(json.dumps(compare(args.results, args.label, args.png), indent=2))
    return 0


if __name__ == '__main__':
    sys.exit(main())
