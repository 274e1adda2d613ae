"""Learned image compression: S2LIC on CompressAI's entropy models and rANS coder, the whole task.

Modules: ``s2lic`` (the network); ``measures`` (the round trip through real bitstreams, PSNR, MS-SSIM), ``data``
(crops and whole photos), ``baselines`` (Pillow's codecs and CompressAI's zoo models) and ``rate_distortion``
(Bjontegaard deltas, the RD plot); ``task`` (collate, preprocessor, the mmengine task model and the two-optimizer
constructor) and ``evaluation`` (the rate-distortion metric) need the ``[train]`` extra as well. All of it is the
``[compression]`` extra. This file imports none of them.
"""
