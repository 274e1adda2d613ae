"""A cache for the constant tensors an op or a layer builds from sizes alone (scan orders, position indices, masks)."""
import functools
from typing import Callable

import torch

__all__ = ['size_cached']


def size_cached(maxsize: int) -> Callable[[Callable], Callable]:
    """``functools.lru_cache`` for a function of sizes (and a device) that builds constant tensors: eager calls
    build them once. They are built outside inference mode and autograd, so what an inference call built serves a
    training step too. Call the wrapped function positionally, and the plain one under ``torch.compile`` (where the
    tensors are traced into the graph and fold to constants)."""
    def wrap(build: Callable) -> Callable:
        @functools.lru_cache(maxsize=maxsize)
        @functools.wraps(build)
        def cached(*sizes):
            with torch.inference_mode(False), torch.no_grad():
                return build(*sizes)
        return cached
    return wrap
