"""Diffusion: DiT/PixArt base, RelaCtrl control, VMoBA video sparse attention, LaMamba-Diff, the whole task.

Modules: ``dit`` (the DiT and PixArt-alpha denoisers), ``relactrl`` (the RelaCtrl control net) and ``lamamba_diff``
(the LaMamba-Diff U-Net) need PyTorch and timm only; ``data`` (the synthetic and image-folder pairs with their Canny
control maps), ``task`` (collate, preprocessor, the mmengine task models with their samplers, the ``--show-dir``
drawing and the datasets' registrations) and ``evaluation`` (the control-fidelity and sample-quality metrics) need the
``[train]`` extra, with scikit-image for the Canny maps and diffusers for the noise schedules and samplers: all of it
is the ``[diffusion]`` extra. This file imports none of them.
"""
