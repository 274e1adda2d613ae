"""Rate-distortion comparison of a learned codec's quality levels against classical codecs.

Reads one JSON per quality level written by ``RateDistortionMetric(results_path=...)`` (tools/test.py with
``--cfg-options test_evaluator.results_path=DIR/qN.json``), joins the model points into a curve, and reports the
Bjontegaard BD-rate (%, negative = fewer bits) and BD-PSNR (dB) against each baseline curve stored in the files
(JPEG / WebP from the first file), then draws the RD curves as a PNG.

    python tools/rd_compare.py work_dirs/rd/q*.json --label s2lic --png work_dirs/rd/rd_curve.png
"""
import argparse
import json
import math
import sys
from pathlib import Path

from visionattn.heads.compression.rate_distortion import bd_psnr, bd_rate, plot_rd_curves


def _same_curve(a, b) -> bool:
    """Two baseline curves agree point for point (to 0.1%: learned baselines may run on other hardware)."""
    try:
        return len(a) == len(b) and all(
            p.get('quality') == q.get('quality') and math.isclose(p['bpp'], q['bpp'], rel_tol=1e-3)
            and math.isclose(p['psnr'], q['psnr'], rel_tol=1e-3) for p, q in zip(a, b))
    except (TypeError, KeyError, AttributeError):
        return a == b


def compare(paths, label: str = 'model', png=None) -> dict:
    """BD-rate / BD-PSNR of the model curve from ``paths`` against every baseline of the first file."""
    resolved = [Path(p).resolve() for p in paths]
    repeated = sorted({str(p) for p in resolved if resolved.count(p) > 1})
    if repeated:
        raise ValueError(f'passed more than once: {", ".join(repeated)} (each quality level counts once)')
    files = []
    for path in paths:
        try:
            files.append(json.loads(Path(path).read_text()))
        except (OSError, ValueError) as exc:  # json's own message names no file
            raise ValueError(f'{path}: cannot read the results JSON: {exc}') from None
        if not isinstance(files[-1], dict) or not {'bpp', 'psnr'} <= set(files[-1].get('model', ())):
            raise ValueError(f'{path} needs a "model" entry with "bpp" and "psnr" (RateDistortionMetric '
                             f'results_path output)')
    # Each file records the baselines measured on its test images: other curves mean other images (another test
    # set, or other baseline qualities), and points from both would make one meaningless curve.
    for path, f in zip(paths[1:], files[1:]):
        differing = sorted(k for k in f.keys() & files[0].keys() - {'model'} if not _same_curve(f[k], files[0][k]))
        if differing:
            raise ValueError(f'{path} and {paths[0]} record other {", ".join(differing)} baseline curves: they '
                             f'were evaluated on other images or settings, so their points do not form one curve')
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
