"""Evaluate a checkpoint on a config's test set (mmdetection's command line, on mmengine's Runner).

    python tools/test.py configs/classification/resnet_attn_digits.py work_dirs/resnet_attn_digits/epoch_6.pth
    python tools/test.py CONFIG CKPT --out results.pkl --show-dir shown/

The work dir is --work-dir, else the config's work_dir, else ./work_dirs/<config name>.
"""
import argparse
import fnmatch
import os
import os.path as osp
from pathlib import Path

from visionattn.engine.config_checks import CFG_OPTIONS_HELP


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--work-dir', help='the dir to save the evaluation logs')
    parser.add_argument('--out', help='dump the predictions to this pickle file (mmengine DumpResults)')
    parser.add_argument('--show-dir', help='save images annotated with predictions in this folder')
    parser.add_argument('--cfg-options', nargs='+', action='extend', metavar='KEY=VALUE', help=CFG_OPTIONS_HELP)
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args(argv)
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def _check_show_dir(show_dir: str) -> list:
    """Refuse a --show-dir that cannot take the drawings, before the test runs (the folder is made at the first
    drawing: under a file, that ended the test in a traceback); returns the drawings of an earlier test in it."""
    if osp.exists(show_dir) and not osp.isdir(show_dir):
        raise SystemExit(f'--show-dir {show_dir} is a file, not a folder')
    existing = osp.abspath(show_dir)
    while not osp.exists(existing):
        existing = osp.dirname(existing)
    if not osp.isdir(existing):
        raise SystemExit(f'--show-dir {show_dir}: {existing} is a file, not a folder')
    if not os.access(existing, os.W_OK | os.X_OK):
        raise SystemExit(f'--show-dir {show_dir}: {existing} is not writable')
    if not osp.isdir(show_dir):
        return []
    from visionattn.engine.hooks import ShowDirHook  # the names it gives its drawings
    return sorted(p for p in Path(show_dir).iterdir()
                  if fnmatch.fnmatch(p.name, ShowDirHook.DRAWING_GLOB) or p.name == ShowDirHook.OVERVIEW)


def main(argv=None):
    args = parse_args(argv)
    if not osp.exists(args.checkpoint):
        raise SystemExit(f'checkpoint file {args.checkpoint} does not exist')
    # the output paths before the test runs: found unwritable after it, the metrics would be lost with a traceback
    if args.out:
        folder = osp.dirname(osp.abspath(args.out))
        if not args.out.endswith(('.pkl', '.pickle')) or osp.isdir(args.out):
            raise SystemExit(f'--out {args.out} must be a .pkl file')
        if not osp.isdir(folder) or not os.access(folder, os.W_OK):
            raise SystemExit(f'--out {args.out}: its folder {folder} does not exist or is not writable')
    stale = _check_show_dir(args.show_dir) if args.show_dir else []
    from visionattn.engine import VisionRunner, check_config, load_tool_config
    try:
        cfg = load_tool_config(args.config, args.cfg_options, args.work_dir, args.launcher)
        cfg.load_from = args.checkpoint
        cfg.resume = False
        check_config(cfg, mode='test')  # (a folder as the checkpoint: refused, naming the latest checkpoint in it)
    # check_config's own refusals (ConfigError, a missing data_root, an EMA that would never start) name the file and
    # line or the option: a traceback would only hide them
    except (FileNotFoundError, ValueError) as e:  # ConfigError is a ValueError
        raise SystemExit(str(e)) from None
    runner = VisionRunner.from_cfg(cfg)
    if args.show_dir:
        from mmengine.model import is_model_wrapper
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        if model.show_hook is None:  # the task model names the hook that draws its predictions
            raise SystemExit(f'--show-dir: {type(model).__name__} has no drawing of its predictions')
        runner.register_hook(model.show_hook(out_dir=args.show_dir), priority='LOWEST')
        # The drawings are named by their predictions: an earlier test's stayed beside this one's, two pictures of a
        # sample, the earlier checkpoint's among them. Only files of the drawings' own names go.
        for path in stale:
            path.unlink(missing_ok=True)
        if stale:
            runner.logger.info(f'--show-dir {args.show_dir}: removed {len(stale)} drawings of an earlier test')
    if args.out:
        from mmengine.evaluator import DumpResults
        runner.test_evaluator.metrics.append(DumpResults(out_file_path=args.out))
    from visionattn.engine import ConfigError
    from visionattn.hub import CheckpointError, CheckpointMismatchError
    try:
        metrics = runner.test()
    # CheckpointError: its message names the file and what is wrong with it; ConfigError: a test_dataloader or
    # test_evaluator that could not be built, named with the place: a traceback only hides either
    except (CheckpointError, ConfigError) as e:
        hint = (f'\n(is {args.checkpoint} a checkpoint of another config than {args.config}?)'
                if isinstance(e, CheckpointMismatchError) else '')
        raise SystemExit(f'{e}{hint}') from None
    runner.logger.info(f'test metrics: {metrics}')
    runner.close_distributed()
    return metrics


if __name__ == '__main__':
    main()
