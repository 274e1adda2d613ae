"""Diffusion: DiT/PixArt base, RelaCtrl control, VMoBA video sparse attention, LaMamba-Diff."""
