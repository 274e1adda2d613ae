"""Drop-in APIs of other libraries on visionattn's ops, so that code written for them runs unchanged.

- :mod:`visionattn.compat.natten`: NATTEN's functional APIs (0.14-0.17 two-step ops, >= 0.20 fused ops) and its
  0.17 modules on :func:`visionattn.ops.neighborhood_attention`. ``visionattn.compat.natten.install()`` makes
  ``import natten`` give it, unless a real NATTEN is installed (then nothing is replaced).

Nothing here is imported by ``import visionattn``; the drop-ins import ops and layers only.
"""
