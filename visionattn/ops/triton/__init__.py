"""Triton kernels, one file per op: kernels, launcher, custom-op registration and autograd.Function."""
