"""The OpenMMLab success path, run once: a zoo backbone inside mmdetection's RetinaNet and mmsegmentation's UPerNet.

    python tools/mm_smoke.py                                  # both parts, nat_mini, 4 training iterations each
    python tools/mm_smoke.py --part det --model biformer_t --iters 8
    python tools/mm_smoke.py --part seg --seg-backbone timm   # mmseg's own TIMMBackbone instead of ZooBackbone

It needs the real toolboxes: mmcv with its compiled ops, mmdet 3.x and mmsegmentation 1.x (docs/mm_toolboxes.md
says how they were built and installed). Nothing is downloaded: the backbone starts from random weights.

Detection: a tiny COCO-format set (coloured rectangles on noise, one class per colour, a COCO json per split) is
written to a temporary folder; RetinaNet with an FPN neck, mmdet's RetinaNet settings and ``ZooBackbone`` (registered
by the config's ``custom_imports``, as a user's config would do) trains for --iters iterations through mmengine's
Runner on the CPU, then a test pass scores the validation images with mmdet's CocoMetric. The test score threshold
is 0 (mmdet's RetinaNet uses 0.05), so that the metric has boxes to score after so short a training.

Segmentation: the same kind of images with their label maps, as PNG files in ADE20K's folder layout, read by
mmseg's BaseSegDataset; an EncoderDecoder with UPerHead and an auxiliary FCNHead on the zoo backbone trains for
--iters iterations, then a test pass scores the validation images with mmseg's IoUMetric.

The losses of every iteration and the final metrics are printed (and written as JSON with --out). On random images
after a few iterations the metrics are close to zero: the run shows that the pieces fit, not that anything learned.
"""
import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

# class name -> BGR colour of its rectangles (the images are written with OpenCV, hence BGR)
CLASSES = {'red': (40, 40, 220), 'green': (40, 200, 40), 'blue': (220, 60, 40)}
MEAN = [123.675, 116.28, 103.53]
STD = [58.395, 57.12, 57.375]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--part', choices=['det', 'seg', 'all'], default='all', help='which toolbox to run')
    parser.add_argument('--model', default='nat_mini', help='zoo (or timm) backbone name, built with random weights')
    parser.add_argument('--seg-backbone', choices=['zoo', 'timm'], default='zoo',
                        help="segmentation backbone route: visionattn's ZooBackbone or mmseg's own TIMMBackbone")
    parser.add_argument('--iters', type=int, default=4, help='training iterations per part')
    parser.add_argument('--batch-size', type=int, default=2)
    parser.add_argument('--size', type=int, default=128, help='side of the square synthetic images')
    parser.add_argument('--train-images', type=int, default=8)
    parser.add_argument('--val-images', type=int, default=4)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--work-dir', help='where the data and the runners\' logs go (default: a temporary folder)')
    parser.add_argument('--log-level', default='WARNING', help="mmengine's log level (INFO shows its own log lines)")
    parser.add_argument('--out', help='write the losses, metrics and times as JSON to this file')
    return parser.parse_args(argv)


# --- synthetic data ---------------------------------------------------------------------------------------------

def draw_scene(rng: np.random.Generator, size: int, max_objects: int = 3):
    """A noisy grey image with 1..max_objects filled rectangles; returns (image BGR uint8, boxes, label map).

    ``boxes`` holds (x1, y1, x2, y2, class index) in pixels; the label map has 0 for the background and class index + 1
    inside each rectangle (a later rectangle covers an earlier one).
    """
    image = rng.integers(90, 160, size=(size, size, 3), dtype=np.uint8)
    labels = np.zeros((size, size), dtype=np.uint8)
    colours = list(CLASSES.values())
    boxes = []
    for _ in range(rng.integers(1, max_objects + 1)):
        w, h = rng.integers(size // 6, size // 2, size=2)
        x1, y1 = rng.integers(0, size - w), rng.integers(0, size - h)
        cls = int(rng.integers(len(colours)))
        image[y1:y1 + h, x1:x1 + w] = colours[cls]
        labels[y1:y1 + h, x1:x1 + w] = cls + 1
        boxes.append((int(x1), int(y1), int(x1 + w), int(y1 + h), cls))
    return image, boxes, labels


def write_coco_split(root: Path, split: str, count: int, size: int, rng: np.random.Generator) -> Path:
    """Write ``count`` images to root/split/ and their boxes to root/annotations/instances_split.json."""
    import mmcv
    images, annotations = [], []
    for index in range(count):
        image, boxes, _ = draw_scene(rng, size)
        name = f'{index:04d}.png'
        mmcv.imwrite(image, str(root / split / name))
        images.append(dict(id=index + 1, file_name=name, width=size, height=size))
        for x1, y1, x2, y2, cls in boxes:
            annotations.append(dict(id=len(annotations) + 1, image_id=index + 1, category_id=cls + 1,
                                    bbox=[x1, y1, x2 - x1, y2 - y1], area=(x2 - x1) * (y2 - y1), iscrowd=0))
    categories = [dict(id=i + 1, name=name) for i, name in enumerate(CLASSES)]
    path = root / 'annotations' / f'instances_{split}.json'
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(dict(images=images, annotations=annotations, categories=categories)))
    return path


def write_seg_split(root: Path, split: str, count: int, size: int, rng: np.random.Generator) -> None:
    """Write ``count`` images to root/images/split/ and their label maps to root/annotations/split/ (ADE20K layout)."""
    import mmcv
    for index in range(count):
        image, _, labels = draw_scene(rng, size)
        mmcv.imwrite(image, str(root / 'images' / split / f'{index:04d}.png'))
        mmcv.imwrite(labels, str(root / 'annotations' / split / f'{index:04d}.png'))


# --- configs ----------------------------------------------------------------------------------------------------

def backbone_channels(model_name: str):
    """Channels of the four feature maps ZooBackbone hands to the neck (what the neck's in_channels must say)."""
    from visionattn.heads.mm_compat import ZooBackbone
    return list(ZooBackbone(model_name).channels)


def runner_common(work_dir: Path, iters: int, seed: int, log_level: str, name: str) -> dict:
    """The Runner settings both parts share: iteration-based training with no validation, a log line per iteration,
    no checkpoints, a test loop."""
    return dict(
        work_dir=str(work_dir),
        experiment_name=name,
        train_cfg=dict(type='IterBasedTrainLoop', max_iters=iters, val_interval=iters),
        test_cfg=dict(type='TestLoop'),
        default_hooks=dict(timer=dict(type='IterTimerHook'), logger=dict(type='LoggerHook', interval=1),
                           param_scheduler=dict(type='ParamSchedulerHook'), checkpoint=None,
                           sampler_seed=dict(type='DistSamplerSeedHook')),
        log_processor=dict(type='LogProcessor', by_epoch=False, window_size=1),
        env_cfg=dict(cudnn_benchmark=False, dist_cfg=dict(backend='gloo'),
                     mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0)),
        randomness=dict(seed=seed),
        log_level=log_level,
    )


def loader(dataset: dict, batch_size: int, train: bool) -> dict:
    sampler = dict(type='InfiniteSampler', shuffle=True) if train else dict(type='DefaultSampler', shuffle=False)
    return dict(batch_size=batch_size, num_workers=0, persistent_workers=False, sampler=sampler, dataset=dataset)


def detection_config(args, data: Path) -> dict:
    """RetinaNet (mmdet's settings: FPN from stride 8 with extra convs on the input, 9 anchors per place, focal and
    L1 losses, SGD at 0.01) on ZooBackbone, with the synthetic COCO set."""
    size = (args.size, args.size)
    classes = tuple(CLASSES)
    model = dict(
        type='RetinaNet',
        data_preprocessor=dict(type='DetDataPreprocessor', mean=MEAN, std=STD, bgr_to_rgb=True, pad_size_divisor=32),
        backbone=dict(type='ZooBackbone', model_name=args.model, pretrained=False, out_indices=(0, 1, 2, 3),
                      frozen_stages=-1, norm_eval=False),
        neck=dict(type='FPN', in_channels=backbone_channels(args.model), out_channels=256, start_level=1,
                  add_extra_convs='on_input', num_outs=5),
        bbox_head=dict(
            type='RetinaHead', num_classes=len(classes), in_channels=256, stacked_convs=4, feat_channels=256,
            anchor_generator=dict(type='AnchorGenerator', octave_base_scale=4, scales_per_octave=3,
                                  ratios=[0.5, 1.0, 2.0], strides=[8, 16, 32, 64, 128]),
            bbox_coder=dict(type='DeltaXYWHBBoxCoder', target_means=[0.0] * 4, target_stds=[1.0] * 4),
            loss_cls=dict(type='FocalLoss', use_sigmoid=True, gamma=2.0, alpha=0.25, loss_weight=1.0),
            loss_bbox=dict(type='L1Loss', loss_weight=1.0)),
        train_cfg=dict(assigner=dict(type='MaxIoUAssigner', pos_iou_thr=0.5, neg_iou_thr=0.4, min_pos_iou=0,
                                     ignore_iof_thr=-1),
                       sampler=dict(type='PseudoSampler'), allowed_border=-1, pos_weight=-1, debug=False),
        test_cfg=dict(nms_pre=1000, min_bbox_size=0, score_thr=0.0, nms=dict(type='nms', iou_threshold=0.5),
                      max_per_img=100))
    train_pipeline = [dict(type='LoadImageFromFile'), dict(type='LoadAnnotations', with_bbox=True),
                      dict(type='Resize', scale=size, keep_ratio=True), dict(type='RandomFlip', prob=0.5),
                      dict(type='PackDetInputs')]
    test_pipeline = [dict(type='LoadImageFromFile'), dict(type='Resize', scale=size, keep_ratio=True),
                     dict(type='LoadAnnotations', with_bbox=True),
                     dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape',
                                                           'scale_factor'))]

    def dataset(split, pipeline, test_mode):
        return dict(type='CocoDataset', data_root=str(data), metainfo=dict(classes=classes),
                    ann_file=f'annotations/instances_{split}.json', data_prefix=dict(img=f'{split}/'),
                    filter_cfg=None if test_mode else dict(filter_empty_gt=True, min_size=4),
                    pipeline=pipeline, test_mode=test_mode)

    return dict(
        default_scope='mmdet',
        custom_imports=dict(imports=['visionattn.heads.detection.mmdet_compat'], allow_failed_imports=False),
        model=model,
        train_dataloader=loader(dataset('train', train_pipeline, False), args.batch_size, train=True),
        test_dataloader=loader(dataset('val', test_pipeline, True), 1, train=False),
        test_evaluator=dict(type='CocoMetric', ann_file=str(data / 'annotations' / 'instances_val.json'),
                            metric='bbox', format_only=False),
        optim_wrapper=dict(type='OptimWrapper',
                           optimizer=dict(type='SGD', lr=0.01, momentum=0.9, weight_decay=0.0001)),
        **runner_common(Path(args.work_dir) / 'det_runs', args.iters, args.seed, args.log_level, 'mm_smoke_det'),
    )


def segmentation_config(args, data: Path) -> dict:
    """UPerNet (mmseg's settings: EncoderDecoder, UPerHead on the four levels, auxiliary FCNHead on the third at
    loss weight 0.4, SGD at 0.01) on ZooBackbone or mmseg's TIMMBackbone, with the synthetic ADE-style set. BN
    replaces mmseg's SyncBN: one process on the CPU."""
    size = (args.size, args.size)
    classes = ('background', *CLASSES)
    channels = backbone_channels(args.model)
    norm_cfg = dict(type='BN', requires_grad=True)
    if args.seg_backbone == 'zoo':
        backbone = dict(type='ZooBackbone', model_name=args.model, pretrained=False, out_indices=(0, 1, 2, 3),
                        frozen_stages=-1, norm_eval=False)
        imports = ['visionattn.heads.segmentation.mmseg_compat']
    else:  # mmseg's own wrapper; importing visionattn registers the zoo with timm
        backbone = dict(type='TIMMBackbone', model_name=args.model, features_only=True, pretrained=False,
                        out_indices=(0, 1, 2, 3))
        imports = ['visionattn']
    model = dict(
        type='EncoderDecoder',
        data_preprocessor=dict(type='SegDataPreProcessor', mean=MEAN, std=STD, bgr_to_rgb=True, pad_val=0,
                               seg_pad_val=255, size=size),
        backbone=backbone,
        decode_head=dict(type='UPerHead', in_channels=channels, in_index=[0, 1, 2, 3], pool_scales=(1, 2, 3, 6),
                         channels=512, dropout_ratio=0.1, num_classes=len(classes), norm_cfg=norm_cfg,
                         align_corners=False,
                         loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0)),
        auxiliary_head=dict(type='FCNHead', in_channels=channels[2], in_index=2, channels=256, num_convs=1,
                            concat_input=False, dropout_ratio=0.1, num_classes=len(classes), norm_cfg=norm_cfg,
                            align_corners=False,
                            loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=0.4)),
        train_cfg=dict(),
        test_cfg=dict(mode='whole'))
    train_pipeline = [dict(type='LoadImageFromFile'), dict(type='LoadAnnotations'),
                      dict(type='RandomFlip', prob=0.5), dict(type='PackSegInputs')]
    test_pipeline = [dict(type='LoadImageFromFile'), dict(type='LoadAnnotations'), dict(type='PackSegInputs')]

    def dataset(split, pipeline):
        return dict(type='BaseSegDataset', data_root=str(data), metainfo=dict(classes=classes),
                    img_suffix='.png', seg_map_suffix='.png', reduce_zero_label=False,
                    data_prefix=dict(img_path=f'images/{split}', seg_map_path=f'annotations/{split}'),
                    pipeline=pipeline)

    return dict(
        default_scope='mmseg',
        custom_imports=dict(imports=imports, allow_failed_imports=False),
        model=model,
        train_dataloader=loader(dataset('training', train_pipeline), args.batch_size, train=True),
        test_dataloader=loader(dataset('validation', test_pipeline), 1, train=False),
        test_evaluator=dict(type='IoUMetric', iou_metrics=['mIoU']),
        optim_wrapper=dict(type='OptimWrapper',
                           optimizer=dict(type='SGD', lr=0.01, momentum=0.9, weight_decay=0.0005)),
        **runner_common(Path(args.work_dir) / 'seg_runs', args.iters, args.seed, args.log_level, 'mm_smoke_seg'),
    )


# --- running ----------------------------------------------------------------------------------------------------

def make_loss_recorder():
    """A Runner hook that prints the losses of every training iteration and keeps them."""
    from mmengine.hooks import Hook

    class LossRecorder(Hook):
        priority = 'LOW'

        def __init__(self):
            self.losses = []

        def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
            values = {name: round(float(getattr(value, 'detach', lambda: value)()), 4)
                      for name, value in (outputs or {}).items()}
            self.losses.append(values)
            line = '  '.join(f'{name}={value:.4f}' for name, value in values.items())
            print(f'  iter {runner.iter + 1}/{runner.max_iters}: {line}', flush=True)

    return LossRecorder()


def run_part(name: str, cfg: dict) -> dict:
    """Import the config's custom_imports (as Config.fromfile does), train, test; return losses, metrics, times."""
    from mmengine.config import Config
    from mmengine.runner import Runner
    from mmengine.utils import import_modules_from_strings

    print(f'== {name}: {cfg["model"]["type"]} with backbone {cfg["model"]["backbone"]["type"]}'
          f'({cfg["model"]["backbone"]["model_name"]}), {cfg["train_cfg"]["max_iters"]} iterations', flush=True)
    import_modules_from_strings(**cfg['custom_imports'])
    start = time.perf_counter()
    runner = Runner.from_cfg(Config(cfg))
    recorder = make_loss_recorder()
    runner.register_hook(recorder)
    runner.train()
    trained = time.perf_counter()
    metrics = {key: float(value) for key, value in runner.test().items()}
    tested = time.perf_counter()
    for key, value in metrics.items():
        print(f'  {key}: {value:.4f}')
    print(f'  time: build + train {trained - start:.1f} s, test {tested - trained:.1f} s', flush=True)
    return dict(losses=recorder.losses, metrics=metrics, train_seconds=round(trained - start, 1),
                test_seconds=round(tested - trained, 1))


def versions() -> dict:
    import mmcv
    import mmengine
    import timm
    import torch
    found = dict(torch=torch.__version__, mmcv=mmcv.__version__, mmengine=mmengine.__version__,
                 timm=timm.__version__)
    for package in ('mmdet', 'mmseg'):
        try:
            found[package] = __import__(package).__version__
        except ImportError:
            found[package] = None
    return found


def main(argv=None):
    args = parse_args(argv)
    temporary = None
    if args.work_dir is None:
        temporary = tempfile.TemporaryDirectory(prefix='mm_smoke_')
        args.work_dir = temporary.name
    work = Path(args.work_dir)
    os.makedirs(work, exist_ok=True)
    summary = dict(args=vars(args), versions=versions(), parts={})
    print('versions:', ', '.join(f'{k} {v}' for k, v in summary['versions'].items()), flush=True)
    rng = np.random.default_rng(args.seed)
    try:
        if args.part in ('det', 'all'):
            data = work / 'coco'
            write_coco_split(data, 'train', args.train_images, args.size, rng)
            write_coco_split(data, 'val', args.val_images, args.size, rng)
            summary['parts']['det'] = run_part('mmdet', detection_config(args, data))
        if args.part in ('seg', 'all'):
            data = work / 'ade'
            write_seg_split(data, 'training', args.train_images, args.size, rng)
            write_seg_split(data, 'validation', args.val_images, args.size, rng)
            summary['parts']['seg'] = run_part('mmseg', segmentation_config(args, data))
    finally:
        if temporary is not None:
            temporary.cleanup()
    if args.out:
        Path(args.out).write_text(json.dumps(summary, indent=2))
    return summary


if __name__ == '__main__':
    main()
