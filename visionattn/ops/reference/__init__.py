"""Exact PyTorch references of visionattn's ops, one module per op as in ``ops/triton/``: they run on any device,
define the semantics the Triton kernels are tested against, and are the CPU path of the ops."""
from .block_sparse import (
    bi_level_routing_attention_2d_ref,
    bi_level_routing_attention_ref,
    block_sparse_attention_ref,
    bra_routing,
)
from .deformable import level_sizes, ms_deform_attn_ref
from .neighborhood import NeighborTable, axis_windows, neighbor_table, neighborhood_attention_ref
from .selective_scan import cross_merge_ref, cross_scan_ref, cross_selective_scan_ref, scan_orders, selective_scan_ref
from .strip_gate import strip_gate_ref

__all__ = [
    'neighborhood_attention_ref', 'axis_windows', 'neighbor_table', 'NeighborTable',
    'block_sparse_attention_ref', 'bra_routing', 'bi_level_routing_attention_ref', 'bi_level_routing_attention_2d_ref',
    'ms_deform_attn_ref', 'level_sizes', 'selective_scan_ref', 'cross_scan_ref', 'cross_merge_ref',
    'cross_selective_scan_ref', 'scan_orders',
    'strip_gate_ref',
]
