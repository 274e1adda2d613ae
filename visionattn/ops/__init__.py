"""visionattn's functional ops: each has a pure-PyTorch reference (``reference.py``, the oracle and the CPU path)
and Triton kernels (``triton/<op>.py``), chosen by ``backend=`` (see ``checks.py``)."""
from .checks import BACKENDS, BackendUnavailableError, choose_backend, explain_backend

__all__ = ['BACKENDS', 'BackendUnavailableError', 'choose_backend', 'explain_backend']
