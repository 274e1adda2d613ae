"""Image classification as an mmengine model: any timm or zoo model by name, with timm's Mixup/CutMix and
label smoothing, behind mmengine's ``forward(inputs, data_samples, mode)`` API."""
import difflib
from typing import Dict, List, Optional, Sequence

import timm
import torch
import torch.nn.functional as F
from mmengine.dist import all_reduce, get_world_size, is_distributed
from mmengine.model import BaseDataPreprocessor
from mmengine.structures import BaseDataElement
from timm.data import Mixup
from timm.data.random_erasing import RandomErasing
from timm.loss import SoftTargetCrossEntropy

from .base import TaskModel
from .hooks import PredictionImagesHook
from .registry import FUNCTIONS, MODELS

__all__ = ['ClsDataPreprocessor', 'ImageClassifier', 'cls_collate', 'check_model_name']


@FUNCTIONS.register_module()
def cls_collate(batch: Sequence[Dict]) -> Dict:
    """Stack the dataset's uint8 images; one data sample per image holding its label and index."""
    if not batch:
        raise ValueError('classification collate got an empty batch')  # as every task's collate says it
    inputs = torch.stack([item['img'] for item in batch])
    samples = [BaseDataElement(gt_label=torch.tensor(item['gt_label']), metainfo={'index': item['index']})
               for item in batch]
    return {'inputs': inputs, 'data_samples': samples}


@MODELS.register_module()
class ClsDataPreprocessor(BaseDataPreprocessor):
    """Moves a batch to the device and normalises uint8 images with the model's mean/std (0..1 scale); in training,
    optionally applies timm's random erasing to the normalised images, as timm's ``PrefetchLoader`` does.

    Args:
        mean: Per-channel mean on the 0..1 scale (timm's ``pretrained_cfg['mean']``).
        std: Per-channel std on the 0..1 scale.
        random_erasing: Arguments of ``timm.data.RandomErasing`` (``probability``, ``mode``, ``max_count``, ...), e.g.
            ``dict(probability=0.25, mode='pixel', max_count=1)`` for timm's ``--reprob 0.25 --remode pixel
            --recount 1``; None for none. Applied only to training batches, before Mixup/CutMix.
    """

    def __init__(self, mean: Sequence[float] = (0.485, 0.456, 0.406), std: Sequence[float] = (0.229, 0.224, 0.225),
                 random_erasing: Optional[Dict] = None):
        super().__init__()
        self.register_buffer('mean', torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1) * 255, persistent=False)
        self.register_buffer('std', torch.tensor(std, dtype=torch.float32).view(-1, 1, 1) * 255, persistent=False)
        self.random_erasing = RandomErasing(**random_erasing, device='cpu') if random_erasing else None

    def forward(self, data: Dict, training: bool = False) -> Dict:
        data = self.cast_data(data)
        inputs = (data['inputs'].float() - self.mean) / self.std
        if training and self.random_erasing is not None:
            self.random_erasing.device = inputs.device  # where its noise is drawn
            inputs = self.random_erasing(inputs)
        return {'inputs': inputs.contiguous(memory_format=torch.channels_last), 'data_samples': data['data_samples']}


def check_model_name(name: str) -> None:
    """Fail with the nearest names when ``name`` is not a registered timm or zoo model."""
    if not timm.is_model(name.split('.')[0]):
        import visionattn  # noqa: F401  (registers the zoo, in case the config was built before importing it)
        if timm.is_model(name.split('.')[0]):
            return
        close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
        hint = f'; did you mean {", ".join(close)}?' if close else ''
        raise ValueError(f'model.backbone={name!r} is not a registered timm or visionattn model{hint}')


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
        if num_classes < 1:
            raise ValueError(f'num_classes must be positive, got {num_classes}')
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

    def forward(self, inputs: torch.Tensor, data_samples: Optional[List[BaseDataElement]] = None,
                mode: str = 'tensor'):
        if mode == 'tensor':
            if not len(inputs):  # the same empty logits whatever the backbone does with no image
                return inputs.new_zeros((0, self.num_classes), dtype=torch.float32)
            return self.classifier(inputs)
        if mode == 'loss':
            return self.loss(inputs, data_samples)
        if mode == 'predict':
            return self.predict(inputs, data_samples)
        raise ValueError(f"mode must be 'loss', 'predict' or 'tensor', got {mode!r}")

    def train_step(self, data, optim_wrapper):
        # The labels are still on the CPU here (the data preprocessor moves them): checked without a device sync.
        self._check_labels(data.get('data_samples') if isinstance(data, dict) else None)
        return super().train_step(data, optim_wrapper)

    def _check_labels(self, data_samples: Optional[Sequence[BaseDataElement]]) -> None:
        """A label outside 0..num_classes-1 fails in the loss as "Target 7 is out of bounds" (a device-side assert on
        GPUs): name the option instead. Only labels on the CPU are read (no device sync)."""
        labels = [s.gt_label for s in data_samples or () if 'gt_label' in s and s.gt_label.device.type == 'cpu']
        if not labels:
            return
        labels = torch.stack([label.reshape(-1)[0] for label in labels])
        low, high = int(labels.min()), int(labels.max())
        if low < 0 or high >= self.num_classes:
            bad = high if high >= self.num_classes else low
            raise ValueError(f'a label of this batch is {bad}, but the classifier has model.num_classes='
                             f'{self.num_classes} (labels 0..{self.num_classes - 1}): set model.num_classes to the '
                             "dataset's number of classes")

    @staticmethod
    def _labels(inputs: torch.Tensor, data_samples: List[BaseDataElement]) -> torch.Tensor:
        return torch.stack([s.gt_label for s in data_samples]).to(inputs.device).view(-1)

    def loss(self, inputs: torch.Tensor, data_samples: List[BaseDataElement]) -> Dict[str, torch.Tensor]:
        if not len(inputs) or not data_samples:
            raise ValueError(f'ImageClassifier.loss got an empty batch ({len(inputs)} images, '
                             f'{len(data_samples or ())} data samples): there is no loss to take (its mean would be '
                             'NaN); drop empty batches before the model')
        if len(data_samples) != len(inputs):
            raise ValueError(f'ImageClassifier.loss got {len(inputs)} images and {len(data_samples)} data samples')
        self._check_labels(data_samples)
        labels = self._labels(inputs, data_samples)
        if self.mixup is not None:
            if len(labels) % 2:
                raise ValueError(f'Mixup/CutMix needs an even batch, got {len(labels)}: set drop_last=True')
            inputs, soft_targets = self.mixup(inputs, labels)
            return {'loss': SoftTargetCrossEntropy()(self.classifier(inputs), soft_targets)}
        return {'loss': F.cross_entropy(self.classifier(inputs), labels, label_smoothing=self.label_smoothing)}

    def predict(self, inputs: torch.Tensor, data_samples: Optional[List[BaseDataElement]] = None):
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
