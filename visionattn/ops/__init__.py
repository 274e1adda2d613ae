"""visionattn's functional ops: each has a pure-PyTorch reference (``reference/<op>.py``: the oracle and the CPU
path; for ``layer_norm``, PyTorch's own op) and Triton kernels (``triton/<op>.py``), chosen by ``backend=`` (see
``checks.py``)."""
from .block_sparse import bi_level_routing_attention, bi_level_routing_attention_2d, block_sparse_attention, bra_routing
from .checks import BACKENDS, BackendUnavailableError, choose_backend, explain_backend
from .deformable import ms_deform_attn
from .layer_norm import layer_norm
from .moba import moba_attention, vmoba_attention
from .neighborhood import neighborhood_attention
from .selective_scan import cross_merge, cross_scan, cross_selective_scan, scan_orders, selective_scan
from .strip_gate import strip_gate

__all__ = [
    'BACKENDS', 'BackendUnavailableError', 'choose_backend', 'explain_backend', 'neighborhood_attention',
    'block_sparse_attention', 'bi_level_routing_attention', 'bi_level_routing_attention_2d', 'bra_routing',
    'selective_scan', 'cross_selective_scan', 'scan_orders', 'cross_scan', 'cross_merge', 'vmoba_attention',
    'moba_attention', 'ms_deform_attn',
    'layer_norm', 'strip_gate',
]
