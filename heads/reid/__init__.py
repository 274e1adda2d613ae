"""Person re-identification: CORE-ReID (unsupervised domain adaptation) on any zoo backbone, the whole task.

Modules: ``core_reid`` (the networks) and ``losses`` need PyTorch and timm only; ``data`` (the datasets and the ReID
augmentation pipeline), ``task`` (the mmengine task models, the clustering hook and the camera-style substitute)
and ``evaluation`` (collate, P x K sampler, CMC/mAP, re-ranking and the metric) need the ``[train]`` extra. This
file imports none of them.
"""
