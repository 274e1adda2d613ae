"""Image classification as an mmengine model: any timm or zoo model by name, with timm's Mixup/CutMix and
label smoothing, behind mmengine's ``forward(inputs, data_samples, mode)`` API."""
import numbers
from typing import Dict, List, Optional, Sequence

import timm
import torch
import torch.nn.functional as F
from mmengine.dist import all_reduce, get_world_size, is_distributed
from mmengine.structures import BaseDataElement
from timm.data import Mixup
from timm.loss import SoftTargetCrossEntropy

from visionattn.engine.base import TaskModel
from visionattn.engine.classification import ClsDataPreprocessor, check_model_name
from visionattn.engine.hooks import PredictionImagesHook
from visionattn.engine.registry import DATASETS, FUNCTIONS, MODELS

from .data import DigitsDataset, ImageFolderDataset

__all__ = ['ImageClassifier', 'cls_collate']

DATASETS.register_module(module=DigitsDataset)
DATASETS.register_module(module=ImageFolderDataset)


@FUNCTIONS.register_module()
def cls_collate(batch: Sequence[Dict]) -> Dict:
    """Stack the dataset's uint8 images; one data sample per image holding its label and index."""
    if not batch:
        raise ValueError('classification collate got an empty batch')  # as every task's collate says it
    shapes = {tuple(item['img'].shape) for item in batch}
    if len(shapes) != 1:
        raise ValueError(f'classification collate needs images of one size (resize or crop them in the pipeline), got '
                         f'{sorted(shapes)}')
    inputs = torch.stack([item['img'] for item in batch])
    samples = [BaseDataElement(gt_label=torch.tensor(item['gt_label']), metainfo={'index': item['index']})
               for item in batch]
    return {'inputs': inputs, 'data_samples': samples}


_MIXUP_KEYS = ('mixup_alpha', 'cutmix_alpha', 'cutmix_minmax', 'prob', 'switch_prob', 'mode', 'correct_lam')


def _check_mixup(mixup: Dict) -> None:
    """timm's ``Mixup`` checks nothing at construction: a typo of a key is a TypeError naming no option, both alphas at
    0 an assertion at the first step, a mode other than its three silently 'batch'."""
    if not isinstance(mixup, dict):
        raise ValueError(f'model.mixup must be a dict of timm Mixup arguments, or None, got {mixup!r}')
    unknown = sorted(set(mixup) - set(_MIXUP_KEYS))
    if unknown:
        extra = (' (label_smoothing and num_classes come from the model\'s own arguments)'
                 if set(unknown) & {'label_smoothing', 'num_classes'} else '')
        raise ValueError(f'model.mixup has unknown keys {unknown}; it takes {", ".join(_MIXUP_KEYS)}{extra}')
    alphas = {k: mixup.get(k, default) for k, default in (('mixup_alpha', 1.0), ('cutmix_alpha', 0.0))}
    for key, value in dict(alphas, prob=mixup.get('prob', 1.0), switch_prob=mixup.get('switch_prob', 0.5)).items():
        if not isinstance(value, numbers.Real) or isinstance(value, bool) or value < 0 or value != value \
                or (key.endswith('prob') and value > 1):
            bound = 'in [0, 1]' if key.endswith('prob') else 'at least 0'
            raise ValueError(f'model.mixup.{key} must be a number {bound}, got {value!r}')
    minmax = mixup.get('cutmix_minmax')
    if minmax is not None and (not isinstance(minmax, (list, tuple)) or len(minmax) != 2
                               or not 0 < minmax[0] <= minmax[1] <= 1):
        raise ValueError(f'model.mixup.cutmix_minmax must be None or (min, max) with 0 < min <= max <= 1, got '
                         f'{minmax!r}')
    if not any(alphas.values()) and minmax is None:
        raise ValueError(f'model.mixup mixes nothing: mixup_alpha={alphas["mixup_alpha"]}, cutmix_alpha='
                         f'{alphas["cutmix_alpha"]} and no cutmix_minmax; set one alpha above 0, or model.mixup=None')
    if mixup.get('mode', 'batch') not in ('batch', 'pair', 'elem'):
        raise ValueError(f"model.mixup.mode must be 'batch', 'pair' or 'elem', got {mixup['mode']!r}")


@MODELS.register_module()
class ImageClassifier(TaskModel):
    """A timm classifier (any zoo or timm model name) trained with cross-entropy.

    Args:
        backbone: timm model name, e.g. 'biformer_s' or 'eca_resnet50.in1k'.
        num_classes: Classes of the classifier head.
        pretrained: Load the model's pretrained weights (the head is re-initialised when num_classes differs).
        backbone_kwargs: Extra keyword arguments of ``timm.create_model`` (drop_path_rate, img_size, ...).
        label_smoothing: Label smoothing of the cross-entropy (also Mixup's, when Mixup is on).
        mixup: timm ``Mixup`` arguments (mixup_alpha, cutmix_alpha, prob, switch_prob, ...), or None.
        random_erasing: timm ``RandomErasing`` arguments for the training batches (see :class:`ClsDataPreprocessor`),
            or None.
        data_preprocessor: Config of the data preprocessor; by default a :class:`ClsDataPreprocessor` with the
            model's own pretrained mean/std.
        init_cfg: mmengine initialisation config (unused by default: timm models initialise themselves).
    """

    show_hook = PredictionImagesHook

    def __init__(self, backbone: str, num_classes: int = 1000, pretrained: bool = False,
                 backbone_kwargs: Optional[Dict] = None, label_smoothing: float = 0.0, mixup: Optional[Dict] = None,
                 random_erasing: Optional[Dict] = None, data_preprocessor: Optional[Dict] = None,
                 init_cfg: Optional[Dict] = None):
        check_model_name(backbone)
        if not isinstance(num_classes, numbers.Integral) or isinstance(num_classes, bool) or num_classes < 1:
            raise ValueError(f'model.num_classes must be a positive whole number, got {num_classes!r}')
        num_classes = int(num_classes)
        if num_classes == 1:  # softmax over one class: the loss is 0 and every prediction 1.0, whatever the image
            raise ValueError('model.num_classes=1: a softmax cross-entropy classifier over one class learns nothing '
                             '(its loss is always 0); a two-class task needs num_classes=2')
        taken = sorted(set(backbone_kwargs or ()) & {'num_classes', 'pretrained', 'features_only'})
        if taken:
            raise ValueError(f'model.backbone_kwargs sets {taken}: num_classes and pretrained are the model\'s own '
                             'arguments, and the classifier needs the logits (not features_only)')
        if (not isinstance(label_smoothing, numbers.Real) or isinstance(label_smoothing, bool)
                or not 0.0 <= label_smoothing < 1.0):
            raise ValueError(f'model.label_smoothing must be in [0, 1) (0: none; 1 would make every target uniform), '
                             f'got {label_smoothing!r}')
        if mixup:
            _check_mixup(mixup)
        classifier = timm.create_model(backbone, pretrained=pretrained, num_classes=num_classes,
                                       **(backbone_kwargs or {}))
        if data_preprocessor is None:
            cfg = classifier.pretrained_cfg
            data_preprocessor = dict(type=ClsDataPreprocessor, mean=cfg.get('mean', (0.485, 0.456, 0.406)),
                                     std=cfg.get('std', (0.229, 0.224, 0.225)))
        if random_erasing:
            data_preprocessor = dict(data_preprocessor, random_erasing=random_erasing)
        super().__init__(data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        self.classifier = classifier
        self.num_classes = num_classes
        self.label_smoothing = label_smoothing
        self.mixup = Mixup(**mixup, label_smoothing=label_smoothing, num_classes=num_classes) if mixup else None

    def _forward(self, inputs: torch.Tensor, data_samples: Optional[List[BaseDataElement]] = None) -> torch.Tensor:
        if not len(inputs):  # the same empty logits whatever the backbone does with no image
            return inputs.new_zeros((0, self.num_classes), dtype=torch.float32)
        return self.classifier(inputs)

    def train_step(self, data, optim_wrapper):
        # The labels are still on the CPU here (the data preprocessor moves them): checked without a device sync.
        self._check_labels(data.get('data_samples') if isinstance(data, dict) else None)
        return super().train_step(data, optim_wrapper)

    def _check_labels(self, data_samples: Optional[Sequence[BaseDataElement]]) -> None:
        """Each image has one whole class index in 0..num_classes-1. A one-hot or soft target, or a float label, fails
        in the loss with a shape or dtype message naming no option, and a label out of range as "Target 7 is out of
        bounds" (a device-side assert on GPUs): name the problem instead. Shapes and dtypes are checked wherever the
        labels are; values only on the CPU (no device sync)."""
        labels = [s.gt_label for s in data_samples or () if 'gt_label' in s]
        for label in labels:
            if not isinstance(label, torch.Tensor) or label.numel() != 1 or label.is_floating_point() \
                    or label.is_complex() or label.dtype == torch.bool:
                what = (f'a {label.dtype} tensor of shape {tuple(label.shape)}' if isinstance(label, torch.Tensor)
                        else repr(label))
                raise ValueError(f'ImageClassifier takes one integer class index per image as gt_label, got {what}; '
                                 'one-hot or soft targets are not taken (Mixup/CutMix targets are made by '
                                 'model.mixup from the class indices)')
        labels = [label for label in labels if label.device.type == 'cpu']
        if not labels:
            return
        labels = torch.stack([label.reshape(()) for label in labels])
        low, high = int(labels.min()), int(labels.max())
        if low < 0:
            raise ValueError(f'a label of this batch is {low}: labels are class indices 0..{self.num_classes - 1} and '
                             'there is no ignore label; leave such images out of the dataset')
        if high >= self.num_classes:
            raise ValueError(f'a label of this batch is {high}, but the classifier has model.num_classes='
                             f'{self.num_classes} (labels 0..{self.num_classes - 1}): set model.num_classes to the '
                             "dataset's number of classes")

    @staticmethod
    def _labels(inputs: torch.Tensor, data_samples: List[BaseDataElement]) -> torch.Tensor:
        # int64: cross_entropy refuses int8/16/32 targets ("expected target dtype to be Long or Byte")
        return torch.stack([s.gt_label.reshape(()) for s in data_samples]).long().to(inputs.device)

    def loss(self, inputs: torch.Tensor, data_samples: List[BaseDataElement]) -> Dict[str, torch.Tensor]:
        if not len(inputs) or not data_samples:
            raise ValueError(f'ImageClassifier.loss got an empty batch ({len(inputs)} images, '
                             f'{len(data_samples or ())} data samples): there is no loss to take (its mean would be '
                             'NaN); drop empty batches before the model')
        if len(data_samples) != len(inputs):
            raise ValueError(f'ImageClassifier.loss got {len(inputs)} images and {len(data_samples)} data samples')
        unlabelled = [i for i, s in enumerate(data_samples) if 'gt_label' not in s]
        if unlabelled:
            raise ValueError(f'ImageClassifier.loss: data samples {unlabelled[:8]} have no gt_label')
        self._check_labels(data_samples)
        labels = self._labels(inputs, data_samples)
        if self.mixup is not None:
            if len(labels) % 2:
                raise ValueError(f'Mixup/CutMix mixes the images in pairs and needs an even batch, got {len(labels)}: '
                                 'use an even train_dataloader.batch_size, with drop_last=True')
            inputs, soft_targets = self.mixup(inputs, labels)
            return {'loss': SoftTargetCrossEntropy()(self.classifier(inputs), soft_targets)}
        return {'loss': F.cross_entropy(self.classifier(inputs), labels, label_smoothing=self.label_smoothing)}

    def predict(self, inputs: torch.Tensor, data_samples: Optional[List[BaseDataElement]] = None):
        if data_samples is not None and len(data_samples) != len(inputs):  # zip would drop predictions silently
            raise ValueError(f'ImageClassifier.predict got {len(inputs)} images and {len(data_samples)} data samples: '
                             'one sample per image')
        scores = self.forward(inputs).float().softmax(dim=-1)
        if data_samples is None:
            data_samples = [BaseDataElement() for _ in range(len(scores))]
        for sample, score in zip(data_samples, scores):
            sample.set_data({'pred_score': score, 'pred_label': score.argmax()})
        return data_samples

    def parse_losses(self, losses: Dict[str, torch.Tensor]):
        """As mmengine's, but the logged values are averaged over processes, so a log line reports the loss of
        the global batch (mmengine logs rank 0's share); the loss that is back-propagated is untouched."""
        loss, log_vars = super().parse_losses(losses)
        if is_distributed():
            for key, value in log_vars.items():
                value = value.detach().clone()
                all_reduce(value)
                log_vars[key] = value / get_world_size()
        return loss, log_vars
