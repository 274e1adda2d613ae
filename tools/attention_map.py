"""Attention maps of the zoo's attention backbones: where one query looks, layer by layer, drawn over the image.

    python tools/attention_map.py nat_tiny --pretrained --out nat_tiny_attention.png
    python tools/attention_map.py dinat_tiny --pretrained --query 0.35 0.6 --layers all --out dinat.png
    python tools/attention_map.py biformer_s --pretrained --image photo.jpg --out biformer_routing.png
    python tools/attention_map.py nat_mini --checkpoint work_dirs/nat_mini/epoch_300.pth --out nat_mini.png

One query (``--query Y X``, fractions of the image's height and width; default its centre) and, for each chosen
attention layer, the softmax weights of that query over the keys it attends to, averaged over the heads, on the
layer's own token grid (drawn cell by cell, not smoothed):

- NAT / DiNAT (``NeighborhoodAttention2d``): its k x k window, every ``dilation``-th token, shifted inward at the
  borders, relative positional bias included (Hassani et al., CVPR 2023 / arXiv:2209.15001).
- BiFormer (``BiLevelRoutingAttention``): the query's region (white) and the top-k regions the routing picked for it
  (numbered by rank), then the token weights over the routed regions' tokens, with the official logit scale
  (``qk_dim ** -0.5``); the local context enhancement (a depthwise conv) is not attention and is left out. Stage 4's
  global attention (``topk=-2``): weights over the whole map (Zhu et al., CVPR 2023).

The weights are computed from each layer's own input and parameters as the layer computes them (a test checks that
weights times values give the layer's attention output at the query). Where a layer pads its map (NA maps smaller
than the window, BiFormer maps not divisible into regions), the pad tokens are keys too; their share of the weight
is not drawn and the panel's title gives it. The image is the model's input: resized and
centre-cropped by its eval transform (timm's data config), or ``--img-size``. Without ``--image`` it is
scikit-learn's sample photo ``china.jpg`` (shipped with scikit-learn: nothing is downloaded). Without
``--pretrained`` or ``--checkpoint`` the weights are random: the maps then show the mechanism (window shapes,
dilation, routing), not what a trained model looks at, and the figure says so. ``--layers`` picks the layers:
``stage`` (default: per stage, the last layer of each kind, e.g. DiNAT's dilated and undilated ones), ``all``, or
layer names. The figure (PNG) and the weights (``.json`` beside it: each layer's head-averaged map) are written
through temporary files renamed into place.
"""
import argparse
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import timm
import torch
from visionattn.backbones.biformer import GlobalAttentionLePE

import visionattn  # noqa: F401  (registers the zoo)
from visionattn.layers.bra import BiLevelRoutingAttention, pad_to_regions
from visionattn.layers.neighborhood_attention import NeighborhoodAttention2d, pad_qkv_to_window
from visionattn.ops.reference.neighborhood import neighbor_table

ATTENTION_LAYERS = (NeighborhoodAttention2d, BiLevelRoutingAttention, GlobalAttentionLePE)
PADDING_SHOWN = 1e-4  # the share of the query's weight on pad tokens above which a panel names it


@dataclass
class LayerMap:
    """One layer's attention of the query: ``weights`` [heads, H, W] on the layer's token grid (each head's sum 1, less
    the share of the pad tokens of a map smaller than an NA window, which ``detail`` gives)."""
    name: str
    kind: str  # 'neighborhood', 'routing' or 'global'
    weights: torch.Tensor
    query: Tuple[int, int]  # the query's token on the layer's grid
    detail: str = ''
    # routing only: region size (rows, cols) on the grid, regions per side, the query's region, the routed ones
    regions: Optional[Tuple[int, int, int]] = None
    query_region: Optional[int] = None
    routed: List[int] = field(default_factory=list)


def query_token(query: Sequence[float], height: int, width: int) -> Tuple[int, int]:
    """The token of a ``height`` x ``width`` grid under the image point at fractions ``query`` (y, x)."""
    return min(int(query[0] * height), height - 1), min(int(query[1] * width), width - 1)


def _padding_share(weights: torch.Tensor, height: int, width: int) -> str:
    """', N % on padding' when the query's weights [heads, Hp, Wp] on a padded map put some on the pad tokens (the
    layers pad maps smaller than an NA window or not divisible into BRA regions); those are not drawn."""
    share = 1 - float(weights[:, :height, :width].sum()) / weights.shape[0]
    return f', {100 * share:.0f} % on padding' if share > PADDING_SHOWN else ''


def neighborhood_map(module: NeighborhoodAttention2d, x: torch.Tensor, query: Sequence[float],
                     name: str = '') -> LayerMap:
    """The NA layer's weights of the query over its window, from the layer's input ``x`` [1, H, W, C]."""
    height, width = x.shape[1:3]
    heads, head_dim = module.num_heads, module.head_dim
    # a map smaller than the window is padded as the layer pads it (its pad tokens are keys too)
    qkv = pad_qkv_to_window(module.qkv(x[:1]), module.qkv.bias, module.kernel_size * module.dilation)[0]
    q, k, _ = qkv.unflatten(-1, (3, heads, head_dim)).unbind(2)  # [Hp, Wp, heads, d]
    padded_w = qkv.shape[1]
    kernel, dilation = (module.kernel_size,) * 2, (module.dilation,) * 2
    table = neighbor_table(tuple(qkv.shape[:2]), kernel, dilation, (1, 1), (False, False))
    qy, qx = query_token(query, height, width)
    flat = qy * padded_w + qx
    keys = table.index[flat]  # [k*k] flat key tokens
    logits = torch.einsum('hd,khd->hk', q.reshape(-1, heads, head_dim)[flat].float() * module.scale,
                          k.reshape(-1, heads, head_dim)[keys].float())
    if module.rpb is not None:
        logits = logits + module.rpb.reshape(heads, -1)[:, table.bias_index[flat]].float()
    weights = torch.zeros(heads, qkv.shape[0] * padded_w).index_add_(1, keys, logits.softmax(-1))
    weights = weights.view(heads, *qkv.shape[:2])
    detail = f'{module.kernel_size}x{module.kernel_size} window, dilation {module.dilation}'
    detail += _padding_share(weights, height, width)
    return LayerMap(name, 'neighborhood', weights[:, :height, :width], (qy, qx), detail)


def routing_map(module: BiLevelRoutingAttention, x: torch.Tensor, query: Sequence[float], name: str = '') -> LayerMap:
    """The BRA layer's routing of the query's region and the query's weights over the routed regions' tokens; needs
    ``module.last_routing`` of the forward that saw ``x`` [1, H, W, C] (``keep_routing``)."""
    if module.last_routing is None:
        raise ValueError(f'{name}: no routing was kept; set keep_routing = True before the forward pass')
    height, width = x.shape[1:3]
    n_win, heads = module.n_win, module.num_heads
    padded = pad_to_regions(x[:1], n_win)  # as the layer pads (official auto_pad)
    qkv = module.qkv(padded)[0]  # [Hp, Wp, 2 * qk_dim + dim]
    rows, cols = padded.shape[1] // n_win, padded.shape[2] // n_win
    q, k = qkv[..., :module.qk_dim], qkv[..., module.qk_dim:2 * module.qk_dim]
    qy, qx = query_token(query, height, width)
    region = (qy // rows) * n_win + qx // cols
    routed = [int(r) for r in module.last_routing[0, region]]
    tokens = torch.cat([((r // n_win) * rows + torch.arange(rows))[:, None] * padded.shape[2]
                        + ((r % n_win) * cols + torch.arange(cols))[None, :] for r in routed]).flatten()
    head_dim = module.qk_dim // heads
    logits = torch.einsum('hd,khd->hk', q[qy, qx].view(heads, head_dim).float() * module.scale,
                          k.reshape(-1, heads, head_dim)[tokens].float())
    weights = torch.zeros(heads, padded.shape[1] * padded.shape[2]).index_add_(1, tokens, logits.softmax(-1))
    weights = weights.view(heads, *padded.shape[1:3])
    detail = f'top-{module.topk} of {n_win}x{n_win} regions' + _padding_share(weights, height, width)
    return LayerMap(name, 'routing', weights[:, :height, :width], (qy, qx), detail,
                    regions=(rows, cols, n_win), query_region=region, routed=routed)


def global_map(module: GlobalAttentionLePE, x: torch.Tensor, query: Sequence[float], name: str = '') -> LayerMap:
    """The global attention's weights of the query over every token (scale head_dim ** -0.5, as the layer)."""
    height, width = x.shape[1:3]
    q, k, _ = module.qkv(x[:1].flatten(1, 2))[0].unflatten(-1, (3, module.num_heads, -1)).unbind(1)  # [N, heads, d]
    qy, qx = query_token(query, height, width)
    logits = torch.einsum('hd,nhd->hn', q[qy * width + qx].float() * q.shape[-1] ** -0.5, k.float())
    return LayerMap(name, 'global', logits.softmax(-1).view(-1, height, width), (qy, qx), 'global attention')


def attention_maps(model: torch.nn.Module, image: torch.Tensor, query: Sequence[float],
                   layers: Optional[Sequence[str]] = None) -> List[LayerMap]:
    """Run ``model`` on ``image`` [1, 3, H, W] and return the query's map for each attention layer (all, or the
    named ones, in network order)."""
    found = [(n, m) for n, m in model.named_modules() if isinstance(m, ATTENTION_LAYERS)]
    if not found:
        raise ValueError(f'{type(model).__name__} has no attention layer this tool draws (NAT/DiNAT neighborhood '
                         'attention, BiFormer routing or global attention)')
    if layers is not None:
        unknown = sorted(set(layers) - {n for n, _ in found})
        if unknown:
            raise ValueError(f'no attention layer named {", ".join(unknown)}; the model has '
                             f'{", ".join(n for n, _ in found)}')
        found = [(n, m) for n, m in found if n in set(layers)]
    inputs: Dict[str, torch.Tensor] = {}
    hooks = [m.register_forward_pre_hook(lambda mod, args, name=n: inputs.__setitem__(name, args[0].detach()))
             for n, m in found]
    kept = {m: m.keep_routing for _, m in found if isinstance(m, BiLevelRoutingAttention)}
    try:
        for m in kept:
            m.keep_routing = True
        with torch.no_grad():
            model.eval()(image)
        maps = []
        with torch.no_grad():
            for name, module in found:
                draw = {NeighborhoodAttention2d: neighborhood_map, BiLevelRoutingAttention: routing_map,
                        GlobalAttentionLePE: global_map}[type(module)]
                maps.append(draw(module, inputs[name], query, name))
    finally:
        for hook in hooks:
            hook.remove()
        for m, keep in kept.items():
            m.keep_routing = keep
            if not keep:
                m.last_routing = None
    return maps


def stage_layers(names_and_kinds: Sequence[Tuple[str, str]]) -> List[str]:
    """Per stage (the name before '.blocks.'), the last layer of each kind (kind: type and dilation), in order."""
    last: Dict[Tuple[str, str], str] = {}
    for name, kind in names_and_kinds:
        last[(name.split('.blocks.')[0], kind)] = name
    chosen = set(last.values())
    return [name for name, _ in names_and_kinds if name in chosen]


def _layer_kind(module: torch.nn.Module) -> str:
    return f'{type(module).__name__}:{getattr(module, "dilation", "")}'


def load_image(path: Optional[str]) -> np.ndarray:
    """An RGB uint8 image: the file at ``path`` (EXIF orientation applied), or scikit-learn's sample photo."""
    if path is None:
        from sklearn.datasets import load_sample_image
        return load_sample_image('china.jpg')
    from visionattn.data.base import load_image as load
    return load(path)


def model_input(model: torch.nn.Module, image: np.ndarray, img_size: Optional[int]) -> Tuple[torch.Tensor, np.ndarray]:
    """The normalised [1, 3, S, S] input of the model's eval transform, and the same crop as uint8 for drawing."""
    from PIL import Image
    config = timm.data.resolve_data_config({}, model=model)
    if img_size is not None:
        config['input_size'] = (3, img_size, img_size)
    transform = timm.data.create_transform(**config, is_training=False)
    pil = Image.fromarray(image)
    tensor = transform(pil)[None]
    mean, std = torch.tensor(config['mean'])[:, None, None], torch.tensor(config['std'])[:, None, None]
    shown = ((tensor[0] * std + mean).clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    return tensor, shown


def draw(maps: Sequence[LayerMap], shown: np.ndarray, query: Sequence[float], title: str, out: Path) -> None:
    """A grid of panels, one per layer: the image, the head-averaged weights over it (token cells), the query."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.patches as patches
    import matplotlib.pyplot as plt
    columns = min(4, len(maps))
    rows = math.ceil(len(maps) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 3.5 * rows + 0.4), squeeze=False)
    size_y, size_x = shown.shape[:2]
    for axis in axes.flat:
        axis.axis('off')
    for axis, layer in zip(axes.flat, maps):
        mean = layer.weights.mean(0).numpy()
        grid_y, grid_x = mean.shape
        axis.imshow(shown)
        axis.imshow(np.ma.masked_equal(mean, 0), cmap='inferno', alpha=0.65, interpolation='nearest',
                    extent=(0, size_x, size_y, 0), vmin=0)
        cell_y, cell_x = size_y / grid_y, size_x / grid_x
        if layer.regions is not None:
            region_rows, region_cols, n_win = layer.regions
            for rank, region in enumerate([layer.query_region, *layer.routed]):
                y0, x0 = (region // n_win) * region_rows * cell_y, (region % n_win) * region_cols * cell_x
                box = patches.Rectangle((x0, y0), region_cols * cell_x, region_rows * cell_y, fill=False, lw=1.5,
                                        edgecolor='white' if rank == 0 else 'cyan', linestyle='-' if rank == 0 else
                                        '--')
                axis.add_patch(box)
                if rank:
                    axis.text(x0 + 2, y0 + 2, str(rank), color='cyan', fontsize=7, va='top')
        axis.plot(query[1] * size_x, query[0] * size_y, marker='+', color='lime', markersize=10, mew=2)
        axis.set_title(f'{layer.name}\n{layer.detail}, {grid_y}x{grid_x} tokens', fontsize=7)
    figure.suptitle(title, fontsize=9)
    figure.tight_layout(rect=(0, 0, 1, 1 - 0.45 / figure.get_figheight()))  # the title's band stays free
    tmp = out.with_name(f'.{out.name}.{os.getpid()}.tmp.png')
    try:
        figure.savefig(tmp, dpi=110)
        os.replace(tmp, out)
    finally:
        plt.close(figure)
        tmp.unlink(missing_ok=True)


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f'{text} is not a fraction of the image in [0, 1]')
    return value


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f'{text} must be at least 1')
    return value


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('model', help='a zoo model name (NAT, DiNAT or BiFormer), with or without a weight tag')
    parser.add_argument('--image', help="an image file (default: scikit-learn's sample photo, no download)")
    parser.add_argument('--query', nargs=2, type=_fraction, default=(0.5, 0.5), metavar=('Y', 'X'),
                        help='the query point as fractions of the image height and width (default 0.5 0.5)')
    parser.add_argument('--pretrained', action='store_true', help='the official weights (downloaded once)')
    parser.add_argument('--checkpoint', help='weights to load (a timm/visionattn state dict or training checkpoint)')
    parser.add_argument('--layers', default='stage', help="'stage' (default), 'all', or comma-separated layer names")
    parser.add_argument('--img-size', type=_positive, help="input size (default: the model's eval size)")
    parser.add_argument('--out', type=Path, default=Path('attention_map.png'), help='the figure (.png)')
    args = parser.parse_args(argv)
    if args.pretrained and args.checkpoint:
        parser.error('--pretrained and --checkpoint both give weights: pass one')
    if args.out.suffix.lower() != '.png':
        parser.error(f'--out {args.out} must end in .png')
    if args.out.is_dir():
        parser.error(f'--out {args.out} is a folder: give the figure\'s file name')
    if args.image is not None and not Path(args.image).is_file():
        parser.error(f'--image {args.image} is not a file')
    return args


def main(argv=None) -> List[LayerMap]:
    args = parse_args(argv)
    try:
        model = timm.create_model(args.model, pretrained=args.pretrained)
    except RuntimeError as error:  # timm's 'Unknown model'
        raise SystemExit(f'attention_map.py: {error}') from None
    if args.checkpoint:
        from visionattn.hub import (
            PUBLISH_HINT,
            CheckpointError,
            is_engine_checkpoint,
            load_checkpoint_file,
            unwrap_state_dict,
        )
        checkpoint = None
        try:
            checkpoint = load_checkpoint_file(args.checkpoint, skip_numpy=True)
            model.load_state_dict(unwrap_state_dict(checkpoint), strict=True)
        except (CheckpointError, RuntimeError) as error:
            # a tools/train.py checkpoint holds the task model's weights under its prefixes: say how to export them
            hint = f'\n  {PUBLISH_HINT}' if is_engine_checkpoint(checkpoint) else ''
            raise SystemExit(f'attention_map.py: {args.checkpoint}: {error}{hint}') from None
    found = [(n, _layer_kind(m)) for n, m in model.named_modules() if isinstance(m, ATTENTION_LAYERS)]
    if not found:
        raise SystemExit(f'attention_map.py: {args.model} has no attention layer this tool draws (NAT/DiNAT '
                         'neighborhood attention, BiFormer routing or global attention)')
    layers = {'all': [n for n, _ in found], 'stage': stage_layers(found)}.get(args.layers)
    if layers is None:
        layers = [n.strip() for n in args.layers.split(',') if n.strip()]
    tensor, shown = model_input(model, load_image(args.image), args.img_size)
    try:
        maps = attention_maps(model, tensor, args.query, layers)
    except ValueError as error:
        raise SystemExit(f'attention_map.py: {error}') from None
    trained = 'official weights' if args.pretrained else (args.checkpoint if args.checkpoint else
                                                         'RANDOM weights: the mechanism only, not what a model learnt')
    args.out.parent.mkdir(parents=True, exist_ok=True)
    draw(maps, shown, args.query, f'{args.model} ({trained}); query at ({args.query[0]:.2f}, {args.query[1]:.2f})',
         args.out)
    record = {'model': args.model, 'weights': trained, 'query': list(args.query), 'input_size': list(tensor.shape[1:]),
              'layers': [{'name': m.name, 'kind': m.kind, 'detail': m.detail, 'query_token': list(m.query),
                          'routed_regions': m.routed, 'weights': m.weights.mean(0).round(decimals=5).tolist()}
                         for m in maps]}
    data = args.out.with_suffix('.json')
    tmp = data.with_name(f'.{data.name}.{os.getpid()}.tmp')
    tmp.write_text(json.dumps(record))
    os.replace(tmp, data)
    print(f'{args.model}: {len(maps)} layers drawn to {args.out} (weights in {data.name}); {trained}')
    return maps


if __name__ == '__main__':
    main()
