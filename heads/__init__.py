"""Task heads (classification, detection, segmentation, re-identification, compression, diffusion).

Each head takes any zoo backbone by timm name or as a module. ``import visionattn`` never imports this package.
"""
