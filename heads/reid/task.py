"""Person re-identification with CORE-ReID as mmengine models: source pre-training, target-domain fine-tuning with a
mean teacher and per-epoch multi-level clustering, BMFN retrieval features, and the camera-style substitute.

The networks live in ``visionattn.heads.reid.core_reid`` and ``.losses``; the data and the retrieval metric in
``visionattn.heads.reid.data`` and ``visionattn.heads.reid.evaluation``.
"""
import copy
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.structures import BaseDataElement

from visionattn.engine.base import TaskModel
from visionattn.engine.classification import ClsDataPreprocessor
from visionattn.engine.registry import HOOKS, MODELS

from .core_reid import CoreReID, EnsembleFusion, SourceReIDNet, bmfn
from .losses import CoreReIDLoss, CrossEntropyLabelSmooth, SoftTripletLoss

__all__ = ['ReIDDataPreprocessor', 'ReIDSourceModel', 'CoreReIDTargetModel', 'ClusteringHook',
           'CameraStyleTransfer', 'camera_style_transfer', 'estimate_camera_statistics']



@MODELS.register_module()
class ReIDDataPreprocessor(ClsDataPreprocessor):
    """The classifier's preprocessing (uint8 to normalised float, ImageNet mean/std as the official code), with a
    check of the image layout and of the statistics: one mean and one std per RGB channel (their values are checked
    by ClsDataPreprocessor)."""

    def __init__(self, mean: Sequence[float] = (0.485, 0.456, 0.406), std: Sequence[float] = (0.229, 0.224, 0.225),
                 **kwargs):
        # ClsDataPreprocessor broadcasts a 1-value mean/std over the channels (a grey classifier's); ReID is RGB
        if len(mean) != 3 or len(std) != 3:
            raise ValueError(f'ReIDDataPreprocessor: mean and std need 3 values each (RGB), got mean {tuple(mean)} '
                             f'and std {tuple(std)}')
        super().__init__(mean=mean, std=std, **kwargs)

    def forward(self, data: Dict, training: bool = False) -> Dict:
        inputs = data['inputs']
        if inputs.dim() != 4 or inputs.shape[1] != self.mean.shape[0]:
            raise ValueError(f'expected images [B, {self.mean.shape[0]}, H, W], got {tuple(inputs.shape)}')
        return super().forward(data, training)


def _set_features(features: torch.Tensor, data_samples: Optional[List[BaseDataElement]]) -> List[BaseDataElement]:
    if data_samples is None:
        data_samples = [BaseDataElement() for _ in range(len(features))]
    if len(data_samples) != len(features):  # zip would drop features, or leave samples without one, silently
        raise ValueError(f'predict got {len(features)} images and {len(data_samples)} data samples: one sample per '
                         'image')
    for sample, feature in zip(data_samples, features):
        sample.set_data({'pred_feature': feature.float()})
    return data_samples


def _check_batch(model, inputs: torch.Tensor, data_samples: Optional[List[BaseDataElement]]) -> None:
    """One data sample per image, and (training) at least 2 images: the BN necks cannot normalise a batch of one
    ("Expected more than 1 value per channel") and a triplet needs a second image."""
    name = type(model).__name__
    if data_samples is None or len(data_samples) != len(inputs):
        raise ValueError(f'{name}.loss got {len(inputs)} images and {len(data_samples or ())} data samples: one '
                         'sample (with its label) per image')
    if not len(inputs):
        raise ValueError(f'{name}.loss got an empty batch: there is no loss to take (its mean would be NaN)')
    if model.training and len(inputs) < 2:
        raise ValueError(f'{name}.loss got a batch of {len(inputs)} image: training needs at least 2 per batch (the '
                         'BatchNorm neck and the triplet loss); use the PKSampler, or drop_last=True')


def _source_labels(data_samples: List[BaseDataElement], num_classes: int) -> torch.Tensor:
    """The identity labels, checked while they are on the host (no device sync): one whole number each, in
    0..num_classes-1."""
    labels = []
    for i, sample in enumerate(data_samples):
        label = sample.get('gt_label')
        label = torch.as_tensor(label) if isinstance(label, (int, np.integer)) and not isinstance(label, bool) \
            else label
        if not isinstance(label, torch.Tensor) or label.numel() != 1 or label.is_floating_point() \
                or label.is_complex() or label.dtype == torch.bool:
            what = (f'a {label.dtype} tensor of shape {tuple(label.shape)}' if isinstance(label, torch.Tensor)
                    else repr(label))
            raise ValueError(f'ReIDSourceModel: data sample {i} needs one integer identity as gt_label, got {what}')
        labels.append(label.reshape(()))
    labels = torch.stack(labels).long()
    if labels.device.type == 'cpu' and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        bad = int(labels.min()) if int(labels.min()) < 0 else int(labels.max())
        raise ValueError(f'ReIDSourceModel: identity label {bad} is outside 0..{num_classes - 1} '
                         f'(num_classes={num_classes}): set num_classes to the training set\'s num_pids')
    return labels


def _unwrap(model):
    return model.module if is_model_wrapper(model) else model


@MODELS.register_module()
class ReIDSourceModel(TaskModel):
    """Source-domain pre-training (official ``source_pretrain.py`` / ``PreTrainer``): label-smoothed CE on the BN-neck
    logits plus the soft-margin batch-hard triplet loss on the pooled (pre-BN) feature. Predict mode gives the BMFN
    retrieval feature ``pred_feature`` (the L2-normalised BN-neck features of the image and its flip, averaged, then
    L2-normalised).

    The official pre-trainer also forwards a target-domain batch each step only to update the BN statistics; this
    model trains on the source batches alone.

    Args:
        backbone: Backbone name ('resnet50', 'resnet101', 'eca_resnet50', ...).
        num_classes: Source training identities.
        pretrained: ImageNet weights for the backbone.
        last_stride: 1 (official) or 2.
        epsilon: Label smoothing.
        triplet_margin: SoftTripletLoss margin (0: soft margin).
        backbone_kwargs: Extra ``timm.create_model`` arguments.
        data_preprocessor: Config; a :class:`ReIDDataPreprocessor` with ImageNet statistics by default.
        init_cfg: mmengine init config (unused by default).
    """

    def __init__(self, backbone: str = 'resnet50', num_classes: int = 751, pretrained: bool = False,
                 last_stride: int = 1, epsilon: float = 0.1, triplet_margin: Optional[float] = 0.0,
                 backbone_kwargs: Optional[Dict] = None, data_preprocessor: Optional[Dict] = None,
                 init_cfg: Optional[Dict] = None):
        super().__init__(data_preprocessor=data_preprocessor or dict(type=ReIDDataPreprocessor), init_cfg=init_cfg)
        self.net = SourceReIDNet(backbone, num_classes, pretrained, last_stride, backbone_kwargs)
        self.num_classes = num_classes
        self.ce = CrossEntropyLabelSmooth(num_classes, epsilon)
        self.triplet = SoftTripletLoss(margin=triplet_margin)

    def _forward(self, inputs: torch.Tensor,
                 data_samples: Optional[List[BaseDataElement]] = None) -> Dict[str, torch.Tensor]:
        return self.net(inputs)

    def loss(self, inputs: torch.Tensor, data_samples: List[BaseDataElement]) -> Dict[str, torch.Tensor]:
        _check_batch(self, inputs, data_samples)
        labels = _source_labels(data_samples, self.num_classes).to(inputs.device)
        out = self.net(inputs)
        return {'loss_ce': self.ce(out['logits'], labels), 'loss_tri': self.triplet(out['global'], labels)}

    def predict(self, inputs: torch.Tensor,
                data_samples: Optional[List[BaseDataElement]] = None) -> List[BaseDataElement]:
        return _set_features(bmfn(self.net.extract, inputs), data_samples)


@MODELS.register_module()
class CoreReIDTargetModel(TaskModel):
    """CORE-ReID target-domain fine-tuning (official ``target_train.py`` / ``SingelmeanTrainer``).

    A student :class:`CoreReID` is trained on pseudo-labels; the teacher is its exponential moving average
    (parameters only, alpha_t = min(1 - 1/(t+1), alpha); t counts the steps of the whole run): :class:`ClusteringHook`
    calls :meth:`update_teacher` after every optimizer step (a hook, so that it also runs under a model wrapper).
    Both start from the source model's backbone (``source_checkpoint``; the multi-view head starts fresh, as the
    official ``copy_state_dict`` only matches the backbone). In training the teacher and the Ensemble
    Fusion also run (no gradient) in training mode, as the official Encoder does, so their BN statistics follow the
    target data. Retrieval uses the teacher's L2-normalised concat[global, upper, lower] through BMFN.

    Pseudo-labels: :class:`ClusteringHook` stores one label array per view (global, upper, lower) with
    :meth:`set_pseudo_labels`; the loss looks each sample's labels up by its dataset ``index``. The official code
    draws a separate PK batch for each view; here one batch (PK-sampled by the global labels) serves all three.

    Args:
        backbone: Backbone name.
        num_classes: Number of clusters K (classifier size).
        pretrained: ImageNet weights (only matters without a source checkpoint).
        last_stride: 1 (official) or 2.
        reduction: ECAB reduction.
        part_weight: Weight of the upper/lower triplet terms (0.5).
        epsilon: Label smoothing.
        ema_alpha: The teacher's momentum alpha (0.999).
        source_checkpoint: Checkpoint of a :class:`ReIDSourceModel` run (tools/train.py output), loaded in
            :meth:`init_weights` (the runner calls it when training starts; building the model never reads it).
        backbone_kwargs: Extra ``timm.create_model`` arguments.
        data_preprocessor: Config; ImageNet statistics by default.
        init_cfg: mmengine init config.
    """

    def __init__(self, backbone: str = 'resnet50', num_classes: int = 700, pretrained: bool = False,
                 last_stride: int = 1, reduction: int = 4, part_weight: float = 0.5, epsilon: float = 0.1,
                 ema_alpha: float = 0.999, source_checkpoint: Optional[str] = None,
                 backbone_kwargs: Optional[Dict] = None, data_preprocessor: Optional[Dict] = None,
                 init_cfg: Optional[Dict] = None):
        super().__init__(data_preprocessor=data_preprocessor or dict(type=ReIDDataPreprocessor), init_cfg=init_cfg)
        if not 0 <= ema_alpha <= 1:
            raise ValueError(f'ema_alpha must lie in [0, 1], got {ema_alpha}')
        self.student = CoreReID(backbone, num_classes, pretrained, last_stride, reduction, backbone_kwargs)
        self.teacher = copy.deepcopy(self.student)
        for param in self.teacher.parameters():
            param.requires_grad_(False)
        self.fusion = EnsembleFusion(self.student.num_features)
        self.criterion = CoreReIDLoss(num_classes, part_weight, epsilon)
        self.num_classes = num_classes
        self.ema_alpha = ema_alpha
        self.source_checkpoint = source_checkpoint
        self.register_buffer('ema_step', torch.zeros((), dtype=torch.long))
        self.pseudo_labels: Optional[Dict[str, torch.Tensor]] = None

    # -- weights ------------------------------------------------------------------------------------------------
    def init_weights(self) -> None:
        super().init_weights()
        if self.source_checkpoint:
            self.load_source_weights(self.source_checkpoint)

    def load_source_weights(self, path: str) -> None:
        """Copy the backbone of a source pre-training checkpoint into the student and the teacher (strict: every
        backbone tensor must be there with its shape)."""
        import os.path as osp

        from visionattn.engine.runner import load_training_checkpoint
        from visionattn.hub import CheckpointMismatchError
        if not osp.isfile(path):
            raise FileNotFoundError(f'source_checkpoint {path!r} does not exist: run the source pre-training first')
        state = load_training_checkpoint(path).get('state_dict')
        if state is None:
            raise CheckpointMismatchError(f'{path} holds no state_dict')
        prefix = 'net.backbone.'
        backbone = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        own = self.student.backbone.state_dict()
        missing = sorted(set(own) - set(backbone))
        wrong = [f'{k}: checkpoint {tuple(backbone[k].shape)}, model {tuple(v.shape)}' for k, v in own.items()
                 if k in backbone and backbone[k].shape != v.shape]
        if missing or wrong:
            raise CheckpointMismatchError(f'{path} does not fit the backbone {type(self.student.backbone).__name__}:'
                                          f' missing {missing[:8]}, mismatched {wrong[:8]}')
        self.student.backbone.load_state_dict({k: backbone[k] for k in own})
        self.teacher.load_state_dict(self.student.state_dict())

    @torch.no_grad()
    def update_teacher(self) -> float:
        """One EMA step of the teacher over the parameters (official ``_update_ema_variables``); returns alpha_t."""
        step = int(self.ema_step)
        alpha = min(1.0 - 1.0 / (step + 1), self.ema_alpha)
        for teacher_param, student_param in zip(self.teacher.parameters(), self.student.parameters()):
            teacher_param.mul_(alpha).add_(student_param.detach(), alpha=1.0 - alpha)
        self.ema_step += 1
        return alpha

    # -- pseudo-labels ------------------------------------------------------------------------------------------
    def set_pseudo_labels(self, labels: Mapping[str, np.ndarray]) -> None:
        """Store one label array per view ('global', 'upper', 'lower'), indexed by the training set's ``index``."""
        if set(labels) != {'global', 'upper', 'lower'}:
            raise ValueError(f"pseudo-labels need the views 'global', 'upper' and 'lower', got {sorted(labels)}")
        for key, value in labels.items():  # a float array was truncated to whole labels, a 2-D one failed later
            value = np.asarray(value)
            if value.ndim != 1 or (value.size and not np.issubdtype(value.dtype, np.integer)):
                raise ValueError(f'{key} pseudo-labels must be a 1-D array of integer cluster ids, got {value.dtype} '
                                 f'of shape {value.shape}')
        arrays = {k: torch.as_tensor(np.asarray(v), dtype=torch.long) for k, v in labels.items()}
        if len({len(v) for v in arrays.values()}) != 1:
            raise ValueError(f'pseudo-label arrays differ in length: { {k: len(v) for k, v in arrays.items()} }')
        for key, value in arrays.items():
            if value.numel() and (int(value.min()) < 0 or int(value.max()) >= self.num_classes):
                raise ValueError(f'{key} pseudo-labels must lie in [0, {self.num_classes}), got '
                                 f'{int(value.min())}..{int(value.max())}')
        self.pseudo_labels = arrays

    def _labels(self, data_samples: List[BaseDataElement], device) -> Dict[str, torch.Tensor]:
        if self.pseudo_labels is None:
            raise RuntimeError('CoreReIDTargetModel has no pseudo-labels: add ClusteringHook to custom_hooks (it '
                               'clusters the target set before every epoch), or call set_pseudo_labels')
        missing = [i for i, s in enumerate(data_samples) if 'index' not in s.metainfo]
        if missing:
            raise KeyError(f"data samples {missing[:8]} lack the metainfo 'index' (the training set's item index, "
                           'set by reid_collate) that looks their pseudo-labels up')
        index = torch.tensor([int(s.metainfo['index']) for s in data_samples])
        size = len(self.pseudo_labels['global'])
        if int(index.max()) >= size or int(index.min()) < 0:  # a negative index would wrap to another image's label
            bad = int(index.max()) if int(index.max()) >= size else int(index.min())
            raise IndexError(f'sample index {bad} is outside the {size} pseudo-labels')
        return {k: v[index].to(device) for k, v in self.pseudo_labels.items()}

    @torch.no_grad()
    def init_classifier(self, centroids: np.ndarray) -> None:
        """Student and teacher classifiers := the L2-normalised global-view centroids [K, C]."""
        centroids = torch.as_tensor(np.asarray(centroids), dtype=torch.float32)
        target = self.student.head.classifier.weight
        if centroids.shape != target.shape:
            raise ValueError(f'centroids {tuple(centroids.shape)} do not fit the classifier {tuple(target.shape)}')
        if not torch.isfinite(centroids).all():  # NaN weights would make every logit and the CE NaN
            raise ValueError('centroids hold non-finite values (non-finite clustering features?)')
        weight = F.normalize(centroids, dim=1)
        target.copy_(weight.to(target))
        self.teacher.head.classifier.weight.copy_(weight.to(target))

    # -- forward ------------------------------------------------------------------------------------------------
    def _forward(self, inputs: torch.Tensor,
                 data_samples: Optional[List[BaseDataElement]] = None) -> Dict[str, torch.Tensor]:
        return self.student(inputs)

    def predict(self, inputs: torch.Tensor,
                data_samples: Optional[List[BaseDataElement]] = None) -> List[BaseDataElement]:
        return _set_features(bmfn(self.teacher.extract, inputs), data_samples)

    def loss(self, inputs: torch.Tensor, data_samples: List[BaseDataElement]) -> Dict[str, torch.Tensor]:
        _check_batch(self, inputs, data_samples)
        labels = self._labels(data_samples, inputs.device)
        views = self.student(inputs)
        with torch.no_grad():  # no loss reaches them; run for their BN statistics, as the official Encoder
            teacher_map = self.teacher.backbone(inputs)
            self.teacher.head(teacher_map)
            self.fusion(teacher_map, views['upper_descriptor'], views['lower_descriptor'])
        return self.criterion(views, labels)

    @torch.no_grad()
    def clustering_features(self, inputs: torch.Tensor) -> List[torch.Tensor]:
        """The Ensemble Fusion features [global, upper, lower] (each [B, C]) through BMFN: the teacher's map times
        the student's ECAB-weighted half descriptors (official ``extract_features_new``; call in eval mode)."""
        def fused(images):
            teacher_map = self.teacher.backbone(images)
            views = self.student(images)
            return self.fusion(teacher_map, views['upper_descriptor'], views['lower_descriptor'])
        return bmfn(fused, inputs)


@HOOKS.register_module()
class ClusteringHook(Hook):
    """Multi-level clustering before every training epoch (official ``target_train.py``).

    Extracts the Ensemble Fusion features of the whole target training set (teacher map x student ECAB descriptors,
    BMFN, no augmentation: a dedicated ``dataloader`` config over the training images in their stored order), runs
    MiniBatchKMeans separately on the global, upper and lower features, gives the global labels to the training
    dataset (``set_pseudo_labels``: the PK sampler draws identities from them) and all three to the model, and
    initialises the student's and teacher's classifiers from the L2-normalised global centroids. The official code
    builds a new Adam every epoch; ``reset_optimizer`` clears the optimizer state to match. After every training
    iteration it takes the mean teacher's EMA step (:meth:`CoreReIDTargetModel.update_teacher`).

    Single-process only: the extraction covers the whole training set in one process.

    Args:
        dataloader: Dataloader config of the extraction set (the training images with the test pipeline); its items'
            ``index`` must be the training set's indices.
        num_clusters: K (700 for Market/Duke/CUHK03, 3000-3500 for MSMT17 in the official scripts); the model's
            ``num_classes`` must equal it.
        seed: Base seed of the k-means (plus the epoch), so a run is reproducible.
        batch_size: MiniBatchKMeans batch size (300).
        max_iter: MiniBatchKMeans iterations (100).
        init_size: Initialisation sample sizes for the global and the part views ((1500, 900)), capped at the set size.
        reset_optimizer: Clear the optimizer state at each epoch.
    """
    priority = 'ABOVE_NORMAL'

    def __init__(self, dataloader: Dict, num_clusters: int, seed: int = 0, batch_size: int = 300,
                 max_iter: int = 100, init_size: Sequence[int] = (1500, 900), reset_optimizer: bool = True):
        def whole(value) -> bool:
            return not isinstance(value, bool) and isinstance(value, (int, np.integer)) and value >= 1
        # checked here: they reached MiniBatchKMeans (or init_size[1] an IndexError) only after the first extraction
        if not whole(num_clusters):
            raise ValueError(f'num_clusters must be a positive whole number, got {num_clusters!r}')
        for name, value in (('batch_size', batch_size), ('max_iter', max_iter)):
            if not whole(value):
                raise ValueError(f'ClusteringHook: {name} must be a positive whole number, got {value!r}')
        if isinstance(init_size, (str, bytes)) or len(tuple(init_size)) != 2 or not all(map(whole, init_size)):
            raise ValueError(f'ClusteringHook: init_size must be two positive whole numbers (global view, part views), '
                             f'got {init_size!r}')
        self.dataloader_cfg = dataloader
        self.num_clusters = num_clusters
        self.seed, self.batch_size, self.max_iter = seed, batch_size, max_iter
        self.init_size = tuple(init_size)
        self.reset_optimizer = reset_optimizer
        self._loader = None

    @torch.no_grad()
    def extract(self, model: CoreReIDTargetModel, loader) -> List[np.ndarray]:
        """The three fused features of every item, ordered by the items' ``index``."""
        was_training = model.training
        model.eval()
        chunks: List[List[torch.Tensor]] = [[], [], []]
        indices = []
        for batch in loader:
            data = model.data_preprocessor(batch, False)
            for chunk, feature in zip(chunks, model.clustering_features(data['inputs'])):
                chunk.append(feature.float().cpu())
            indices += [int(s.metainfo['index']) for s in data['data_samples']]
        model.train(was_training)
        order = np.argsort(np.asarray(indices), kind='stable')
        if not np.array_equal(np.asarray(indices)[order], np.arange(len(indices))):
            raise ValueError('the extraction dataloader must yield every training index exactly once (no shuffle, '
                             'no drop_last)')
        return [torch.cat(chunk).numpy()[order] for chunk in chunks]

    def cluster(self, features: Sequence[np.ndarray], seed: int):
        """MiniBatchKMeans on each view; returns the label arrays and the global centroids."""
        from sklearn.cluster import MiniBatchKMeans
        count = len(features[0])
        if count < self.num_clusters:
            raise ValueError(f'{count} training images cannot form {self.num_clusters} clusters: lower num_clusters')
        labels, centroids = {}, None
        for view, feature, init in zip(('global', 'upper', 'lower'), features,
                                       (self.init_size[0], self.init_size[1], self.init_size[1])):
            kmeans = MiniBatchKMeans(n_clusters=self.num_clusters, max_iter=self.max_iter, batch_size=self.batch_size,
                                     init_size=max(min(init, count), self.num_clusters), random_state=seed,
                                     n_init=3).fit(feature)
            labels[view] = kmeans.labels_.astype(np.int64)
            if view == 'global':
                centroids = kmeans.cluster_centers_
        return labels, centroids

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        _unwrap(runner.model).update_teacher()

    def before_train_epoch(self, runner) -> None:
        model = _unwrap(runner.model)
        if not isinstance(model, CoreReIDTargetModel):
            raise TypeError(f'ClusteringHook needs a CoreReIDTargetModel, got {type(model).__name__}')
        if model.num_classes != self.num_clusters:
            raise ValueError(f'model.num_classes={model.num_classes} differs from num_clusters={self.num_clusters}')
        if self._loader is None:
            self._loader = runner.build_dataloader(self.dataloader_cfg, seed=runner.seed)
        dataset = runner.train_dataloader.dataset
        features = self.extract(model, self._loader)
        if len(features[0]) != len(dataset):
            raise ValueError(f'the extraction set has {len(features[0])} images, the training set {len(dataset)}')
        labels, centroids = self.cluster(features, self.seed + runner.epoch)
        dataset.set_pseudo_labels(labels['global'])
        model.set_pseudo_labels(labels)
        model.init_classifier(centroids)
        if self.reset_optimizer:
            runner.optim_wrapper.optimizer.state.clear()
        runner.logger.info(f'epoch {runner.epoch + 1}: clustered {len(dataset)} target images into '
                           f'{self.num_clusters} clusters per view ('
                           + ', '.join(f'{k}: {len(np.unique(v))} used' for k, v in labels.items()) + ')')


# ----------------------------------------------------------------------------------------------------------------
# Camera-style augmentation (substitute)

def estimate_camera_statistics(dataset, max_per_camera: int = 200) -> Dict[int, np.ndarray]:
    """Per-camera channel mean and std of a dataset's raw images: {camid: array [2, 3] (mean row, std row)}.

    Args:
        dataset: A ReID dataset with ``camids`` and ``_load_image`` (the raw HWC uint8 image), e.g. the source set.
        max_per_camera: Images per camera to read (evenly spaced).
    """
    camids = np.asarray(dataset.camids)
    stats = {}
    for cam in np.unique(camids):
        members = np.flatnonzero(camids == cam)
        members = members[np.linspace(0, len(members) - 1, min(len(members), max_per_camera)).astype(int)]
        pixels = np.concatenate([dataset._load_image(int(i)).reshape(-1, 3).astype(np.float64) for i in members])
        stats[int(cam)] = np.stack([pixels.mean(0), pixels.std(0) + 1e-6])
    return stats


def camera_style_transfer(image: np.ndarray, from_stats: np.ndarray, to_stats: np.ndarray) -> np.ndarray:
    """Re-colour an HWC uint8 image taken by one camera as if another took it: per channel,
    (x - mean_from) / std_from * std_to + mean_to, clipped to 0..255.

    Args:
        image: HWC uint8 RGB image.
        from_stats: [2, 3] mean/std of the image's camera.
        to_stats: [2, 3] mean/std of the other camera.
    """
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f'expected an HWC RGB image, got shape {image.shape}')
    from_stats, to_stats = np.asarray(from_stats, np.float64), np.asarray(to_stats, np.float64)
    if from_stats.shape != (2, 3) or to_stats.shape != (2, 3):
        raise ValueError(f'camera statistics must be [2, 3] (mean, std rows), got {from_stats.shape}, '
                         f'{to_stats.shape}')
    for name, stats in (('from_stats', from_stats), ('to_stats', to_stats)):
        # a zero std divided by zero and a NaN one gave a black channel (NaN cast to uint8), silently
        if not np.isfinite(stats).all() or (stats[1] <= 0).any():
            raise ValueError(f'{name} needs finite means and positive stds, got {stats.tolist()}')
    out = (image.astype(np.float64) - from_stats[0]) / from_stats[1] * to_stats[1] + to_stats[0]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


class CameraStyleTransfer:
    """A substitute for CamStyle (the official stage 0): re-colours a source image with the colour statistics of a
    randomly drawn other camera (:func:`camera_style_transfer`), instead of passing it through a CycleGAN trained for
    that camera pair.

    Why a substitute: CamStyle trains one CycleGAN per camera pair (15 for Market-1501's 6 cameras), GPU-days of
    training, which cannot be trained or tested on the CPUs this project tests on. Per-camera colour statistics
    capture the colour/brightness part of the camera gap only (not viewpoint, blur or resolution).

    Called albumentations-style with the image's camera: ``transform(image=img, camid=c)['image']``.

    Args:
        camera_stats: {camid: [2, 3] mean/std}, from :func:`estimate_camera_statistics` on the source training set.
        p: Probability of re-colouring an image.
        seed: Seed of the draws.
    """

    def __init__(self, camera_stats: Mapping[int, np.ndarray], p: float = 0.5, seed: Optional[int] = None):
        if len(camera_stats) < 2:
            raise ValueError(f'camera-style transfer needs at least 2 cameras, got {len(camera_stats)}')
        if not 0 <= p <= 1:
            raise ValueError(f'p is a probability, got {p}')
        self.camera_stats = {int(k): np.asarray(v, np.float64) for k, v in camera_stats.items()}
        self.p = p
        self.rng = np.random.default_rng(seed)

    def __call__(self, *, image: np.ndarray, camid: int, **data) -> Dict:
        if int(camid) not in self.camera_stats:
            raise KeyError(f'camera {camid} has no statistics (known: {sorted(self.camera_stats)})')
        if self.rng.random() < self.p:
            others = [c for c in self.camera_stats if c != int(camid)]
            target = others[int(self.rng.integers(len(others)))]
            image = camera_style_transfer(image, self.camera_stats[int(camid)], self.camera_stats[target])
        return {**data, 'image': image, 'camid': camid}
