"""Train a model from a config (mmdetection's command line, on mmengine's Runner).

    python tools/train.py configs/classification/resnet_attn_digits.py
    torchrun --nproc_per_node 8 tools/train.py CONFIG --launcher pytorch --amp
    python tools/train.py CONFIG --resume            # continue the latest checkpoint in the work dir

The work dir is --work-dir, else the config's work_dir, else ./work_dirs/<config name>. One run at a time per work
dir: a second one refuses, naming the first one's pid (the lock goes with the process, so a killed run leaves none).
"""
import argparse
import os

from mmengine.config import Config

from visionattn.engine.config_checks import CFG_OPTIONS_HELP


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--work-dir', help='the dir to save logs and models')
    parser.add_argument('--amp', action='store_true', help='enable automatic mixed precision (bf16 on GPUs)')
    parser.add_argument('--auto-scale-lr', action='store_true', help='scale the lr by the actual total batch size')
    parser.add_argument('--resume', nargs='?', type=str, const='auto',
                        help='resume from this checkpoint, or without a path from the latest in the work dir')
    parser.add_argument('--cfg-options', nargs='+', action='extend', metavar='KEY=VALUE', help=CFG_OPTIONS_HELP)
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none',
                        help='job launcher (pytorch: torchrun)')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args(argv)
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def build_config(args) -> Config:
    from visionattn.engine import load_tool_config
    cfg = load_tool_config(args.config, args.cfg_options, args.work_dir, args.launcher)
    if args.amp:
        import torch
        if not torch.cuda.is_available():
            raise SystemExit('--amp needs a CUDA device (mmengine\'s AmpOptimWrapper); train in fp32 on the CPU')
        cfg.optim_wrapper.type = 'AmpOptimWrapper'
        cfg.optim_wrapper.setdefault('dtype', 'bfloat16' if torch.cuda.is_bf16_supported() else 'float16')
    if args.auto_scale_lr:
        if 'auto_scale_lr' not in cfg or 'base_batch_size' not in cfg.auto_scale_lr:
            raise SystemExit('--auto-scale-lr needs auto_scale_lr=dict(base_batch_size=...) in the config')
        cfg.auto_scale_lr.enable = True
    if args.resume == 'auto':
        cfg.resume, cfg.load_from = True, None
    elif args.resume is not None:
        cfg.resume, cfg.load_from = True, args.resume
    return cfg


def launcher_rank(launcher: str) -> int:
    """This process's global rank as its launcher set it, before torch.distributed starts (0 without one)."""
    variable = {'pytorch': 'RANK', 'slurm': 'SLURM_PROCID', 'mpi': 'OMPI_COMM_WORLD_RANK'}.get(launcher)
    return int(os.environ.get(variable, 0)) if variable else 0


def main(argv=None):
    args = parse_args(argv)
    from visionattn.engine import ConfigError, VisionRunner, WorkDirInUseError, check_config, lock_work_dir
    from visionattn.hub import CheckpointError
    try:
        cfg = build_config(args)
        check_config(cfg, mode='train')
    # check_config's own refusals (ConfigError, a missing data_root, an EMA that would never start) name the file and
    # line or the option: a traceback would only hide them
    except (FileNotFoundError, ValueError) as e:  # ConfigError is a ValueError
        raise SystemExit(str(e)) from None
    # Rank 0 holds the work dir for the whole run; the other processes of the same run write there too and must not
    # refuse each other. A second run's rank 0 refuses, and its launcher stops the rest.
    try:
        with lock_work_dir(cfg.work_dir, enabled=launcher_rank(args.launcher) == 0):
            runner = VisionRunner.from_cfg(cfg)
            runner.train()
            runner.close_distributed()
    # ConfigError: the loops' own checks (an empty dataset); CheckpointError: a --resume or load_from checkpoint that
    # is missing, damaged, unsafe or does not fit this config, each named with the way out
    except (WorkDirInUseError, ConfigError, CheckpointError) as e:
        raise SystemExit(str(e)) from None


if __name__ == '__main__':
    main()
