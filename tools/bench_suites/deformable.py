"""Multi-scale deformable attention at Focus-DETR's shapes: the Triton kernels against the ``grid_sample`` reference
and, where it is installed, mmcv's CUDA ``MultiScaleDeformableAttnFunction``; forward and forward+backward.

Shapes: a ResNet-50 4-scale neck on an 800x1333 image (strides 8/16/32/64 -> 100x167, 50x84, 25x42, 13x21, 22223
tokens), 8 heads of 32 channels, 4 levels, 4 points. Encoder queries are every token (Deformable DETR/DINO) or
Focus-DETR's kept foreground tokens: rho = 0.5 of them, times the cascade ratio of the layer (1.0, 0.8, 0.6, 0.6,
0.4, 0.2), in score order (so their memory accesses are scattered, as after Focus-DETR's top-k gather). Encoder
reference points are the tokens' own centres with offsets of a few pixels; the decoder's 900 (+200 denoising)
queries sit at random anchors. Batch 2 is one GPU's share of batch 16 over 8 GPUs; batch 8 a larger one.

Modes, as a training step pays them: 'fwd' is the forward with autograd on (value, locations and weights require
grad, so the op saves what its backward needs), 'fwd+bwd' adds the backward through ``torch.autograd.grad``; our
kernel also gets 'fwd no-grad' (inference). Every row has the host time of one call and its device launches
(``common.measure``): what the host path costs beside the kernels.

FLOPs: 10 per channel and sample forward (4 bilinear corners and the attention weight, multiply-add = 2) and 3x that
forward+backward. bw floor: the bytes of value, locations, weights and output read or written once (forward), plus
the gradient of each and the output's gradient (forward+backward), at 4.3 TB/s, as a share of the measured time.
"""
import sys
from pathlib import Path
from typing import Dict, List, Tuple

import torch

from .common import Row, measure

SUITE = 'deformable'
DEVICE = 'cuda'
HEADS, HEAD_DIM, LEVELS, POINTS = 8, 32, 4, 4
# R50 at 800x1333, strides 8, 16, 32, 64
LEVEL_SIZES = ((100, 167), (50, 84), (25, 42), (13, 21))
TOKENS = sum(h * w for h, w in LEVEL_SIZES)
RHO = 0.5
CASCADE = (1.0, 0.8, 0.6, 0.6, 0.4, 0.2)


def cases(quick: bool = False) -> List[Tuple[str, str, int]]:
    """(name, kind, queries): kind 'encoder' (queries at tokens) or 'decoder' (queries at random anchors)."""
    out = [('encoder, all tokens', 'encoder', TOKENS)]
    for ratio in sorted(set(CASCADE), reverse=True):
        if quick and ratio not in (1.0, 0.2):
            continue
        out.append((f'Focus-DETR encoder, rho {RHO} x {ratio}', 'encoder', max(1, round(TOKENS * RHO * ratio))))
    out.append(('decoder, 900 queries', 'decoder', 900))
    out.append(('decoder, 900 + 200 dn queries', 'decoder', 1100))
    return out


def add_arguments(parser):
    parser.add_argument('--msda-batches', type=int, nargs='+', default=[2, 8],
                        help='deformable suite: batch sizes (2 = batch 16 over 8 GPUs)')
    parser.add_argument('--msda-dtypes', nargs='+', default=['float32', 'bfloat16'],
                        choices=['float32', 'bfloat16', 'float16'], help='deformable suite: dtypes')


def _import_op():
    root = Path(__file__).resolve().parents[2]
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    from visionattn.ops import ms_deform_attn
    return ms_deform_attn


def _mmcv_function():
    """mmcv's CUDA function, or the reason it cannot be used."""
    try:
        from mmcv.ops.multi_scale_deform_attn import MultiScaleDeformableAttnFunction
    except Exception as error:  # noqa: BLE001 (mmcv without its CUDA ops raises several kinds)
        return None, f'mmcv not importable ({type(error).__name__})'
    return MultiScaleDeformableAttnFunction, ''


def make_inputs(kind: str, batch: int, queries: int, dtype: torch.dtype, device: str = DEVICE, seed: int = 0
                ) -> Dict[str, torch.Tensor]:
    """value, spatial_shapes, level_start_index, sampling_locations, attention_weights (leaves that require grad,
    locations and weights in fp32 as the layer makes them under autocast when dtype is bf16)."""
    gen = torch.Generator(device=device).manual_seed(seed)
    shapes = torch.tensor(LEVEL_SIZES, dtype=torch.long, device=device)
    areas = shapes[:, 0] * shapes[:, 1]
    starts = torch.cat([areas.new_zeros(1), areas.cumsum(0)[:-1]])
    value = torch.randn(batch, TOKENS, HEADS, HEAD_DIM, device=device, generator=gen).to(dtype)
    if kind == 'encoder':
        centres = []
        for h, w in LEVEL_SIZES:
            ys, xs = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing='ij')
            centres.append(torch.stack([(xs.flatten() + 0.5) / w, (ys.flatten() + 0.5) / h], -1))
        centres = torch.cat(centres)  # [TOKENS, 2]
        # kept tokens in score order: a random subset, randomly ordered
        order = torch.randperm(TOKENS, device=device, generator=gen)[:queries] if queries < TOKENS else \
            torch.arange(TOKENS, device=device)
        ref = centres[order][None, :, None, None, None, :].expand(batch, queries, HEADS, LEVELS, POINTS, 2)
    else:
        ref = torch.rand(batch, queries, 1, 1, 1, 2, device=device, generator=gen).expand(
            batch, queries, HEADS, LEVELS, POINTS, 2)
    wh = torch.tensor([[w, h] for h, w in LEVEL_SIZES], device=device, dtype=torch.float32)
    pixels = torch.randn(batch, queries, HEADS, LEVELS, POINTS, 2, device=device, generator=gen) * 2.0
    loc = ref + pixels / wh[None, None, None, :, None, :]
    logits = torch.randn(batch, queries, HEADS, LEVELS * POINTS, device=device, generator=gen)
    attn = logits.softmax(-1).view(batch, queries, HEADS, LEVELS, POINTS)
    loc_dtype = torch.float32 if dtype == torch.bfloat16 else dtype
    return dict(value=value.requires_grad_(), spatial_shapes=shapes, level_start_index=starts,
                sampling_locations=loc.to(loc_dtype).requires_grad_(), attention_weights=attn.to(loc_dtype)
                .requires_grad_())


def work(inputs: Dict[str, torch.Tensor]) -> Tuple[float, float, float]:
    """Forward FLOPs and the forward / forward+backward memory floors in bytes."""
    value, loc, attn = inputs['value'], inputs['sampling_locations'], inputs['attention_weights']
    batch, _, heads, head_dim = value.shape
    queries = loc.shape[1]
    samples = batch * queries * heads * LEVELS * POINTS
    flops = 10.0 * samples * head_dim
    nbytes = lambda t: t.numel() * t.element_size()  # noqa: E731
    out_bytes = batch * queries * heads * head_dim * value.element_size()
    fwd_bytes = nbytes(value) + nbytes(loc) + nbytes(attn) + out_bytes
    return flops, fwd_bytes, 2 * fwd_bytes + out_bytes


def _impl_fn(impl: str, ms_deform_attn, dtype: torch.dtype):
    """The implementation's function of the op's keyword inputs and a note for its rows (or None and why not)."""
    if impl in ('triton', 'reference'):
        def fn(value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
            return ms_deform_attn(value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
                                  backend=impl)
        return fn, ''
    function, why = _mmcv_function()
    if function is None:
        return None, why
    # mmcv's kernel takes one dtype, fp32 or fp16, for all inputs: bf16 runs in fp32
    run_dtype = torch.float32 if dtype == torch.bfloat16 else dtype

    def fn(value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
        return function.apply(value.to(run_dtype), spatial_shapes, level_start_index,
                              sampling_locations.to(run_dtype), attention_weights.to(run_dtype), 64)
    return fn, 'bf16 inputs cast to fp32' if run_dtype != dtype else ''


def case_rows(name: str, kind: str, queries: int, batch: int, dtype: torch.dtype, impls, ms_deform_attn,
              measure_fn=measure, device: str = DEVICE) -> List[Row]:
    inputs = make_inputs(kind, batch, queries, dtype, device)
    flops, fwd_bytes, train_bytes = work(inputs)
    leaves = [inputs['value'], inputs['sampling_locations'], inputs['attention_weights']]
    case = f'{name}, B={batch}, {str(dtype).replace("torch.", "")}'
    rows = []
    for impl in impls:
        fn, note = _impl_fn(impl, ms_deform_attn, dtype)
        if fn is None:
            rows.append(Row(SUITE, case, impl, 'fwd', note=note))
            continue
        grad_out = torch.randn(batch, queries, HEADS * HEAD_DIM, device=device, dtype=dtype)

        def forward(fn=fn):
            return fn(**inputs)

        def infer(fn=fn):
            with torch.no_grad():
                return fn(**inputs)

        def train_step(fn=fn):
            out = forward(fn)
            torch.autograd.grad(out, leaves, grad_out.to(out.dtype))
        modes = [('fwd', forward, flops, fwd_bytes), ('fwd+bwd', train_step, 3 * flops, train_bytes)]
        if impl == 'triton':
            modes.insert(0, ('fwd no-grad', infer, flops, fwd_bytes))
        for mode, step, mode_flops, mode_bytes in modes:
            try:
                row = measure_fn(SUITE, case, impl, mode, step, mode_flops, mode_bytes)
            except RuntimeError as error:  # e.g. a peer that rejects the dtype or the shape
                rows.append(Row(SUITE, case, impl, mode, note=f'failed: {str(error).splitlines()[0][:80]}'))
                break
            row.note = (row.note + ' ' + note).strip()
            rows.append(row)
    return rows


def run(args) -> List[Row]:
    ms_deform_attn = _import_op()
    quick = getattr(args, 'quick', False)
    batches = args.msda_batches[:1] if quick else args.msda_batches
    dtypes = [getattr(torch, d) for d in (args.msda_dtypes[-1:] if quick else args.msda_dtypes)]
    impls = ('triton', 'reference', 'mmcv')
    rows = []
    for batch in batches:
        for dtype in dtypes:
            for name, kind, queries in cases(quick):
                new = case_rows(name, kind, queries, batch, dtype, impls, ms_deform_attn)
                rows.extend(new)
                for row in new:
                    print(row, flush=True)
    return rows
