"""Convert an official checkpoint to visionattn's layout, checked key for key against the model, and write it.

    python tools/convert.py focus_detr focus_detr_r50_4scale_12ep.zip focus_detr_r50_12ep.safetensors
    python tools/convert.py focus_detr model_final.pth out.pth --num-classes 80
    python tools/convert.py biformer_s biformer_small_best.pth biformer_s.safetensors
    python tools/convert.py --list

``FAMILY`` is a registered converter (``--list``) or any timm / visionattn model name: a backbone goes through the
``checkpoint_filter_fn`` of the module that registers it (the same conversion ``pretrained=True`` applies; timm's
own models without one are only unwrapped from ``model`` / ``state_dict`` / ``module.``). ``IN`` may be a local
``.pth`` / ``.safetensors``, a release ``.zip`` holding one (member names checked, see
:func:`visionattn.hub.extract_checkpoint`) or an http(s) URL (downloaded into the torch hub cache). It is read
without running pickled code, after an integrity check (its ``.sha256`` beside it, else its zip CRC-32s or
safetensors header): corrupted bytes fail, naming the damaged member, instead of being converted. The converted
weights are checked against the model, built on the ``meta`` device (nothing allocated), so a checkpoint that does
not fit fails with the missing, unexpected and mis-shaped keys and nothing is written. ``OUT`` ending in
``.safetensors`` is written with safetensors, anything else with ``torch.save`` as a plain state dict; either way
through a temporary file renamed into place, with its sha256 written beside it as ``OUT.sha256`` (``sha256sum -c``
format), which every later load checks. An existing ``OUT`` is replaced only with ``--force``, and never when it is the
input checkpoint itself. A checkpoint holding two weight sets (the trained weights and their EMA, as timm's and
DeiT-style training scripts save them) gives the trained ones and says so; ``--ema`` takes the EMA's.

New families register with :func:`register_converter`.
"""
import argparse
import importlib
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import timm
import torch
from torch import nn

import visionattn  # noqa: F401  (registers the zoo's backbones)
from visionattn.hub import (
    EMA_WEIGHT_KEYS,
    PUBLISH_HINT,
    TRAINED_WEIGHT_KEYS,
    CheckpointError,
    check_state_dict,
    download_weights,
    extract_checkpoint,
    is_engine_checkpoint,
    load_checkpoint_file,
    unwrap_state_dict,
)
from visionattn.integrity import replace_with_digest

__all__ = ['Converter', 'CONVERTERS', 'register_converter', 'read_checkpoint', 'choose_weight_set', 'convert',
           'save_state_dict', 'main']


@dataclass(frozen=True)
class Converter:
    """A checkpoint conversion.

    Args:
        name: The FAMILY argument.
        description: One line for ``--list``.
        build: ``(checkpoint, args) -> (model on the meta device, description of it)``; may read the checkpoint to
            pick the architecture.
        convert: ``(checkpoint, model) -> state dict`` in the model's layout.
    """
    name: str
    description: str
    build: Callable[[Dict[str, Any], argparse.Namespace], Tuple[nn.Module, str]]
    convert: Callable[[Dict[str, Any], nn.Module], Dict[str, torch.Tensor]]


CONVERTERS: Dict[str, Converter] = {}


def register_converter(name: str, description: str, build: Callable, convert: Callable) -> Converter:
    """Add a converter for ``python tools/convert.py NAME``."""
    if name in CONVERTERS:
        raise ValueError(f'a converter named {name!r} is already registered')
    CONVERTERS[name] = Converter(name, description, build, convert)
    return CONVERTERS[name]


# -- Focus-DETR ----------------------------------------------------------------------------------------------------
def _count(keys, pattern: str) -> int:
    found = {int(m.group(1)) for k in keys if (m := re.match(pattern, k))}
    return max(found) + 1 if found else 0


def _focus_detr_build(checkpoint: Dict[str, Any], args: argparse.Namespace) -> Tuple[nn.Module, str]:
    """FocusDETR with the architecture the checkpoint's shapes give (backbone depth, width, levels, layers,
    queries, classes); heads and points split by ``--num-heads`` (8 as official). Settings without parameters
    (keep ratios, cascade) do not matter for the key check."""
    from visionattn.heads.detection import FocusDETR
    state = checkpoint.get('model', checkpoint)
    state = {k[len('module.'):] if k.startswith('module.') else k: v for k, v in state.items()}
    if any(k.startswith(('backbone.patch_embed.', 'backbone.layers.')) for k in state):
        raise CheckpointError('this is a Swin Focus-DETR checkpoint: detectron2\'s SwinTransformer has per-level '
                              'output LayerNorms (backbone.norm1..3) that timm\'s features_only Swin lacks, so it '
                              'cannot be converted to FocusDETR exactly; only R50 / R101 checkpoints convert')
    res4 = _count(state, r'^backbone\.res4\.(\d+)\.') or _count(state, r'^backbone\.model\.layer3\.(\d+)\.')
    depths = {6: 'resnet50', 23: 'resnet101'}
    if res4 not in depths:
        raise CheckpointError(f'the checkpoint\'s backbone has {res4} res4 blocks; a Focus-DETR ResNet-50 has 6 and '
                              'a ResNet-101 23 (is this a Focus-DETR checkpoint?)')

    def shape(key):
        if key not in state:
            raise CheckpointError(f'the checkpoint has no {key!r}: not a Focus-DETR checkpoint?')
        return tuple(state[key].shape)

    levels, embed = shape('transformer.level_embeds')
    enc = _count(state, r'^transformer\.encoder\.layers\.(\d+)\.')
    dec = _count(state, r'^transformer\.decoder\.layers\.(\d+)\.')
    num_classes = shape('class_embed.0.weight')[0]
    if args.num_classes is not None and args.num_classes != num_classes:
        raise CheckpointError(f'--num-classes {args.num_classes} but the checkpoint\'s class heads have '
                              f'{num_classes} classes (class_embed.0.weight {shape("class_embed.0.weight")}); '
                              'converting does not re-initialise heads: drop --num-classes or fine-tune from it')
    heads_points = shape('transformer.encoder.layers.0.attentions.1.attention_weights.weight')[0] // levels
    num_heads = args.num_heads or 8  # the official 8
    if heads_points % num_heads:
        raise CheckpointError(f'{heads_points} sampling points x heads per level do not split into '
                              f'--num-heads {num_heads}')
    official = (1.0, 0.8, 0.6, 0.6, 0.4, 0.2)
    layer = dict(num_heads=num_heads, num_points=heads_points // num_heads,
                 ffn_dims=shape('transformer.encoder.layers.0.ffns.0.layers.0.0.weight')[0])
    kwargs = dict(num_classes=num_classes, num_queries=shape('transformer.tgt_embed.weight')[0], embed_dims=embed,
                  num_feature_levels=levels, encoder=dict(num_layers=enc, **layer),
                  decoder=dict(num_layers=dec, **layer))
    with torch.device('meta'):
        model = FocusDETR(depths[res4], **dict(kwargs, encoder=dict(
            kwargs['encoder'], cascade_ratios=official if enc == len(official) else (1.0,) * enc)))
    shown = ', '.join(f'{k}={v}' for k, v in kwargs.items())
    return model, f'FocusDETR({depths[res4]!r}, {shown})'


def _focus_detr_convert(checkpoint: Dict[str, Any], model: nn.Module) -> Dict[str, torch.Tensor]:
    from visionattn.heads.detection import convert_focus_detr_official
    return convert_focus_detr_official(checkpoint)


register_converter('focus_detr', 'official Focus-DETR R50/R101 (detrex/detectron2 .pth or the release .zip) -> '
                   'visionattn.heads.detection.FocusDETR', _focus_detr_build, _focus_detr_convert)


# -- any timm / visionattn backbone ---------------------------------------------------------------------------------
def _filter_fn(name: str) -> Optional[Callable]:
    module = importlib.import_module(timm.models.model_entrypoint(name).__module__)
    return getattr(module, 'checkpoint_filter_fn', None)


def backbone_converter(name: str) -> Converter:
    """The conversion ``timm.create_model(name, pretrained=True)`` applies: the registering module's
    ``checkpoint_filter_fn`` (or an unwrap of ``model`` / ``state_dict`` / ``module.``)."""
    arch = timm.models.get_arch_name(name)
    if not timm.is_model(arch):
        known = ', '.join(CONVERTERS)
        raise SystemExit(f'convert.py: unknown family {name!r}: not a registered converter ({known}) nor a '
                         'timm / visionattn model name')
    filter_fn = _filter_fn(arch)

    def build(checkpoint, args):
        kwargs = {} if args.num_classes is None else dict(num_classes=args.num_classes)
        with torch.device('meta'):
            model = timm.create_model(name, pretrained=False, **kwargs)
        return model, f'timm.create_model({name!r}{"".join(f", {k}={v}" for k, v in kwargs.items())})'

    def convert_fn(checkpoint, model):
        return filter_fn(checkpoint, model) if filter_fn is not None else unwrap_state_dict(checkpoint)

    where = f'{filter_fn.__module__}.checkpoint_filter_fn' if filter_fn is not None else 'unwrap only'
    return Converter(name, f'{name} backbone ({where})', build, convert_fn)


# -- reading, converting, writing -----------------------------------------------------------------------------------
def weight_sets(checkpoint: Any) -> Tuple[Optional[str], Optional[str]]:
    """(the top-level key of the trained weights, that of their EMA); None where the checkpoint has no such dict."""
    if not isinstance(checkpoint, dict):
        return None, None
    def first(keys):
        return next((k for k in keys if isinstance(checkpoint.get(k), dict)), None)
    return first(TRAINED_WEIGHT_KEYS), first(EMA_WEIGHT_KEYS)


def choose_weight_set(checkpoint: Any, ema: bool) -> Tuple[Any, Optional[str]]:
    """The checkpoint to convert and a note for the user: with ``ema`` the EMA's weights (refused, naming the
    entries, where there are none); otherwise the checkpoint as it is, noting that an EMA set was left (it had been
    left without a word, and either set may be the one a paper reports)."""
    trained, averaged = weight_sets(checkpoint)
    if ema:
        if averaged is None:
            found = sorted(checkpoint) if isinstance(checkpoint, dict) else type(checkpoint).__name__
            raise SystemExit(f'convert.py: --ema: the checkpoint holds no EMA weights (looked for '
                             f'{" / ".join(EMA_WEIGHT_KEYS)}; top-level entries: {found})')
        return checkpoint[averaged], f'converted the EMA weights {averaged!r}'
    if trained is not None and averaged is not None:
        return checkpoint, (f'the checkpoint holds two weight sets: converted the trained weights {trained!r}, not '
                            f'their EMA {averaged!r} (pass --ema for those)')
    return checkpoint, None
def read_checkpoint(source: str, member: Optional[str] = None) -> Tuple[Dict[str, Any], Path]:
    """Read a local file, a release ``.zip`` or a URL without running pickled code, after an integrity check."""
    downloaded = source.startswith(('http://', 'https://'))
    archive = download_weights(source) if downloaded else Path(source)
    path = extract_checkpoint(archive, member)
    return load_checkpoint_file(path, verify=not (downloaded and path == archive)), path  # downloads are verified


def convert(family: str, checkpoint: Dict[str, Any], args: argparse.Namespace
            ) -> Tuple[Dict[str, torch.Tensor], nn.Module, str]:
    """Convert and check: returns the state dict, the (meta) model it fits and the model's description."""
    converter = CONVERTERS.get(family) or backbone_converter(family)
    model, described = converter.build(checkpoint, args)
    state = converter.convert(checkpoint, model)
    check_state_dict(state, model, source=f'the converted {family} checkpoint')
    return state, model, described


def save_state_dict(state: Dict[str, torch.Tensor], out: Path) -> Tuple[str, str]:
    """Write ``state`` to ``out`` (safetensors for ``.safetensors``, else ``torch.save``) through a temporary file
    in the same folder renamed into place, with ``out.sha256`` beside it; returns the format and the sha256."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f'.{out.name}.{os.getpid()}.tmp')
    try:
        if out.suffix == '.safetensors':
            from safetensors.torch import save_file
            seen, tensors = set(), {}
            for k, v in state.items():  # safetensors refuses shared storage: copy any tensor whose data is taken
                v = v.detach().contiguous()
                key = (v.untyped_storage().data_ptr(), v.storage_offset())
                tensors[k] = v.clone() if key in seen else v
                seen.add(key)
            save_file(tensors, str(tmp), metadata={'format': 'pt'})
            fmt = 'safetensors'
        else:
            torch.save({k: v.detach() for k, v in state.items()}, tmp)
            fmt = 'torch.save state dict'
        digest = replace_with_digest(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return fmt, digest


def _same_file(out: Path, source: Any) -> bool:
    """Whether ``out`` is the local file ``source`` (through links and relative paths too)."""
    if source is None or str(source).startswith(('http://', 'https://')):
        return False
    try:
        return out.exists() and Path(source).exists() and os.path.samefile(out, source)
    except OSError:
        return False


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('family', nargs='?', help='a converter (--list) or a timm / visionattn model name')
    parser.add_argument('input', nargs='?', help='official checkpoint: .pth, .safetensors, .zip or URL')
    parser.add_argument('output', nargs='?', type=Path, help='converted file (.safetensors or .pth)')
    parser.add_argument('--num-classes', type=int, default=None,
                        help='classes of the model (default: the checkpoint\'s / the model\'s own)')
    parser.add_argument('--num-heads', type=int, default=None, help='Focus-DETR attention heads (default: the '
                        'official 8)')
    parser.add_argument('--member', default=None, help='the checkpoint inside a .zip holding several')
    parser.add_argument('--ema', action='store_true', help="convert the checkpoint's EMA weights (state_dict_ema / "
                        'model_ema) instead of the trained ones')
    parser.add_argument('--force', action='store_true', help='replace OUT when it exists (never the input itself)')
    parser.add_argument('--list', action='store_true', help='list the registered converters and exit')
    args = parser.parse_args(argv)
    if args.list:
        return args
    if args.family is None or args.input is None or args.output is None:
        parser.error('FAMILY, IN and OUT are required (or --list)')
    # options that would be taken and do nothing are refused (adversarial probe)
    if args.output.suffix not in ('.safetensors', '.pth', '.pt'):
        parser.error(f'OUT {args.output} must end in .safetensors or .pth (.pt)')
    if args.output.is_dir():
        parser.error(f'OUT {args.output} is a folder: give the converted file\'s name')
    if _same_file(args.output, args.input):
        parser.error(f'OUT {args.output} is the input checkpoint: converting in place would replace the original')
    if args.output.exists() and not args.force:
        parser.error(f'OUT {args.output} exists; pass another OUT or --force to replace it')
    if args.num_heads is not None and (args.family != 'focus_detr' or args.num_heads < 1):
        parser.error(f'--num-heads {args.num_heads}: only for focus_detr, and at least 1')
    if args.num_classes is not None and args.num_classes < 0:
        parser.error(f'--num-classes {args.num_classes} must be at least 0')
    if args.member is not None and not str(args.input).endswith('.zip'):
        parser.error(f'--member {args.member!r} names a file inside a .zip, and {args.input} is not one')
    return args


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    args = parse_args(argv)
    if args.list:
        for c in CONVERTERS.values():
            print(f'{c.name:12s} {c.description}')
        print(f'{"<model>":12s} any timm / visionattn model name, through its checkpoint_filter_fn')
        return {}
    checkpoint = None
    try:
        checkpoint, path = read_checkpoint(args.input, args.member)
        if _same_file(args.output, path):  # a .zip's member, unpacked beside it
            raise SystemExit(f'convert.py: OUT {args.output} is the checkpoint read from {args.input}: converting in '
                             'place would replace the original')
        checkpoint, weights_note = choose_weight_set(checkpoint, args.ema)
        state, model, described = convert(args.family, checkpoint, args)
    except CheckpointError as e:
        hint = f'\n  {PUBLISH_HINT}' if is_engine_checkpoint(checkpoint) else ''
        raise SystemExit(f'convert.py: {e}{hint}') from None
    try:
        fmt, digest = save_state_dict(state, args.output)
    except OSError as e:  # a folder that cannot be made or written: nothing is left at OUT
        raise SystemExit(f'convert.py: cannot write {args.output}: {e}') from None
    raw = unwrap_state_dict(checkpoint) if isinstance(checkpoint, dict) else {}
    tensors = [v for v in state.values() if isinstance(v, torch.Tensor)]
    summary = {
        'family': args.family, 'input': str(path), 'output': str(args.output), 'format': fmt, 'model': described,
        'tensors': len(state), 'elements': sum(v.numel() for v in tensors),
        'dropped': max(len(raw) - len(state), 0), 'renamed': len(set(state) - set(raw)),
        'bytes': args.output.stat().st_size, 'sha256': digest, 'weights_note': weights_note,
    }
    print(f'{args.family}: {path} -> {args.output}\n'
          f'  model:   {described}: every key and shape of the converted weights matches\n'
          f'  tensors: {summary["tensors"]} written ({summary["elements"] / 1e6:.2f} M values), '
          f'{summary["renamed"]} renamed, {summary["dropped"]} input keys dropped (aliases, recomputed buffers)\n'
          f'  wrote:   {fmt}, {summary["bytes"] / 2 ** 20:.1f} MiB, sha256 {summary["sha256"]} '
          f'(also in {args.output.name}.sha256)' + (f'\n  note:    {weights_note}' if weights_note else ''))
    return summary


if __name__ == '__main__':
    try:
        main()
    except BrokenPipeError:
        sys.exit(1)
