"""``natten.flops`` of the drop-in: ``add_natten_handle``, which the official NAT/DiNAT code calls with fvcore.

NATTEN registered fvcore handles for its own autograd functions. visionattn's op needs none: its reference path is
made of gathers and einsums, which PyTorch's ``torch.utils.flop_counter`` counts as the papers do
(``B * heads * N * prod(kernel) * head_dim`` multiply-adds for QK and again for AV), and
``visionattn.profile.measure`` counts any zoo model. So no handle is added and the counter is returned as given.
"""
import logging

__all__ = ['add_natten_handle']

_logger = logging.getLogger('visionattn.compat.natten')


def add_natten_handle(flop_ctr):
    """Returns ``flop_ctr`` (an fvcore ``FlopCountAnalysis``) unchanged: no NATTEN op exists to register.

    fvcore traces the model with TorchScript: on the CPU it sees the reference path's einsums and counts them; a
    call that runs visionattn's Triton kernel is reported by fvcore as an unsupported op. For counts that match the
    papers, use ``torch.utils.flop_counter.FlopCounterMode`` on the CPU (or ``visionattn.profile.measure``).
    """
    _logger.info('natten.flops.add_natten_handle (visionattn drop-in): no handle added; fvcore counts the '
                 "reference path's einsums on the CPU")
    return flop_ctr
