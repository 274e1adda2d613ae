"""Publish what tools/train.py trained as timm weights (mmdetection's ``publish_model``, in timm's Hugging Face layout).

    python tools/publish.py configs/classification/resnet_attn_digits.py \\
        work_dirs/resnet_attn_digits/epoch_6.pth published/eca_resnet18_digits
    python tools/publish.py CONFIG CHECKPOINT OUT_DIR --ema              # the EMA of the weights (EMAHook)
    python tools/publish.py CONFIG CHECKPOINT OUT_DIR --backbone-only    # a detector's / segmentor's backbone
    python tools/publish.py CONFIG CHECKPOINT OUT_DIR --push-to-hub user/eca_resnet18_digits

then ``timm.create_model("local-dir:OUT_DIR", pretrained=True)`` (after ``import visionattn`` for the zoo's own
architectures), or ``timm.create_model("hf-hub:user/eca_resnet18_digits", pretrained=True)`` once pushed, gives the
trained model: its outputs are the engine model's.

The checkpoint is read with the hub's loader (integrity check first, ``weights_only``, numpy history skipped): only
the model's weights are taken, never the optimizer or the history, and the task model's prefixes (``classifier.``,
``network.backbone.model.``) are removed. OUT_DIR is what ``timm.models.push_to_hf_hub`` uploads, byte for byte:
``model.safetensors``, ``config.json`` (``timm.models.save_for_hf``: architecture, num_classes, the architecture
arguments, and the pretrained cfg with the input size, crop, interpolation and mean/std the config evaluated with)
and ``README.md``, the model card (timm's format) with the training config, the last validation metrics of the
checkpoint's history, the licence and the sha256 of ``model.safetensors``.

Weights: mmengine's EMAHook saves the *EMA* in the checkpoint's ``state_dict`` (what validation and tools/test.py
use) and the trained weights, prefixed ``module.``, in ``ema_state_dict``. The default publishes the trained
weights (as timm's ``clean_checkpoint.py`` without ``--use-ema``), and the card then says that its validation metrics
are the EMA's; ``--ema`` publishes the EMA (what mmdetection's ``publish_model`` keeps).

OUT_DIR must not exist or be empty; ``--force`` replaces it only where it holds an earlier publish (the three files
above and nothing else), never a work dir with its checkpoints, a file or the current folder.

``--backbone-only`` exports the timm backbone of any task model (a classifier's without its head, a detector's or
segmentor's ``features_only`` backbone) as a timm model without classifier (``num_classes=0``): its weights renamed
from the feature extractor's layout to the model's, the arguments the family builds it with for ``features_only``
recorded, and anything the extractor does not hold (a final norm, stages after the last level used) left at its
initialisation and listed in the card. ``timm.create_model("local-dir:OUT_DIR", pretrained=True, features_only=True)``
then gives the task's backbone.
"""
import argparse
import json
import os
import re
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import timm
import torch
from timm.models import FeatureDictNet, FeatureHookNet, FeatureListNet, push_to_hf_hub, save_for_hf
from torch import nn

import visionattn  # noqa: F401  (registers the zoo's backbones)
from visionattn._timm_compat import FeatureGetterNet, generate_readme
from visionattn.engine.config_checks import CFG_OPTIONS_HELP
from visionattn.hub import CheckpointError, load_checkpoint_file, summarise_keys
from visionattn.integrity import sha256_file

__all__ = ['Published', 'publish', 'push', 'select_weights', 'final_metrics', 'find_timm_modules', 'main']

WEIGHTS_FILE = 'model.safetensors'
# create_model arguments that make a feature extractor, not the architecture
_FEATURE_ARGS = ('features_only', 'out_indices', 'feature_cls', 'feature_cfg', 'output_stride_features')
_ENGINE_PREFIXES = ((r'^module\.', ''),)  # a model wrapper's (DDP) prefix, as the runner's load_checkpoint strips


@dataclass
class Published:
    """What :func:`publish` wrote, and what :func:`push` uploads the same way."""
    model: nn.Module
    out_dir: Path
    name: str
    task_name: str
    model_card: Dict[str, Any]
    model_config: Dict[str, Any]
    data_config: Dict[str, Any]
    sha256: str
    weights: str
    source_module: str
    left_at_init: List[str] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)


# -- the checkpoint -----------------------------------------------------------------------------------------------
def select_weights(checkpoint: Dict[str, Any], ema: bool) -> Tuple[Dict[str, torch.Tensor], str]:
    """The task model's state dict from an engine checkpoint: the trained weights, or (``ema``) their EMA.

    mmengine's EMAHook swaps the two before saving: ``state_dict`` holds the EMA, ``ema_state_dict`` the trained
    weights under ``module.`` (and the EMA's step count).
    """
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get('state_dict'), dict):
        is_dict = isinstance(checkpoint, dict)
        found = summarise_keys(sorted(map(str, checkpoint))) if is_dict else type(checkpoint).__name__
        hint = ' (a plain state dict? publish takes the checkpoint tools/train.py saved)' if is_dict and any(
            isinstance(v, torch.Tensor) for v in checkpoint.values()) else ''
        raise CheckpointError(f'not a tools/train.py checkpoint: it has no state_dict (top-level entries: {found})'
                              f'{hint}')
    state = dict(checkpoint['state_dict'])
    swapped = {k[len('module.'):]: v for k, v in (checkpoint.get('ema_state_dict') or {}).items()
               if k.startswith('module.')}
    if ema:
        if not swapped:
            raise CheckpointError('--ema: the checkpoint holds no EMA weights (its config has no EMAHook)')
        which = 'the exponential moving average of the weights (EMAHook), which validation used'
    else:
        state.update(swapped)
        which = ('the trained weights (not their EMA, which validation used: --ema publishes that)' if swapped
                 else 'the trained weights')
    for pattern, replacement in _ENGINE_PREFIXES:
        state = {re.sub(pattern, replacement, k): v for k, v in state.items()}
    return state, which


def _holds_ema(checkpoint: Dict[str, Any]) -> bool:
    """Whether the checkpoint is an EMAHook run's, whose ``state_dict`` (what validation ran) is the EMA."""
    return any(str(k).startswith('module.') for k in (checkpoint.get('ema_state_dict') or {}))


def _number(value) -> Optional[float]:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def final_metrics(checkpoint: Dict[str, Any]) -> Tuple[Dict[str, float], str, Optional[int]]:
    """The last validation metrics of the checkpoint's history, when they were measured (in words) and at which
    iteration (None where the history does not say).

    From the training curves (TrainingCurveHook: each validation with its epoch and iteration), else from mmengine's
    message hub (``val/<metric>``). An epoch's checkpoint is saved before that epoch's validation, so its history
    ends with the validation before.
    """
    curves = (checkpoint.get('training_curves') or {}).get('val') or []
    if curves and isinstance(curves[-1], dict):
        row = curves[-1]
        metrics = {k: v for k, v in row.items() if k not in ('iter', 'epoch') and _number(v) is not None}
        if metrics:
            return ({k: float(v) for k, v in metrics.items()},
                    f'after epoch {row.get("epoch")}, iteration {row.get("iter")}', row.get('iter'))
    from mmengine.logging.history_buffer import HistoryBuffer
    scalars = (checkpoint.get('message_hub') or {}).get('log_scalars') or {}
    metrics = {}
    for key, buffer in scalars.items():
        if key.startswith('val/') and key not in ('val/time', 'val/data_time') and isinstance(buffer, HistoryBuffer):
            metrics[key[len('val/'):]] = float(buffer.current())
    return metrics, 'its last validation', None


# -- the model ----------------------------------------------------------------------------------------------------
def _force_no_pretrained(cfg: Any) -> None:
    """Every ``pretrained`` flag of the model config off: the checkpoint provides every weight (and nothing is
    downloaded)."""
    if isinstance(cfg, dict):
        for key, value in cfg.items():
            if key == 'pretrained' and value is True:
                cfg[key] = False
            else:
                _force_no_pretrained(value)
    elif isinstance(cfg, (list, tuple)):
        for value in cfg:
            _force_no_pretrained(value)


_WRAPPERS = (FeatureListNet, FeatureDictNet, FeatureHookNet, FeatureGetterNet)


def _is_timm_model(module: nn.Module) -> bool:
    cfg = getattr(module, 'pretrained_cfg', None)
    if isinstance(module, _WRAPPERS):
        return isinstance(cfg, dict) and bool(cfg.get('architecture'))
    return (isinstance(cfg, dict) and timm.is_model(cfg.get('architecture') or '') and callable(
        getattr(module, 'forward_features', None)) and callable(getattr(module, 'forward_head', None)))


def find_timm_modules(model: nn.Module) -> List[Tuple[str, nn.Module]]:
    """The outermost timm models and timm feature extractors inside a task model, by module name."""
    found: List[Tuple[str, nn.Module]] = []
    for name, module in model.named_modules():
        if any(name.startswith(f'{outer}.') for outer, _ in found) or not _is_timm_model(module):
            continue
        found.append((name, module))
    return found


def _pick(candidates: List[Tuple[str, nn.Module]], wanted: Optional[str], what: str) -> Tuple[str, nn.Module]:
    listed = ', '.join(f'{n or "<the model>"} ({m.pretrained_cfg["architecture"]})' for n, m in candidates)
    if wanted is not None:
        match = [(n, m) for n, m in candidates if n == wanted]
        if not match:
            raise SystemExit(f'publish.py: --backbone-module {wanted!r} is not a timm model in {what}; it holds: '
                             f'{listed or "none"}')
        return match[0]
    if not candidates:
        raise SystemExit(f'publish.py: {what} holds no timm model or timm feature extractor to export')
    if len(candidates) > 1:
        raise SystemExit(f'publish.py: {what} holds several timm models: {listed}; pick one with --backbone-module')
    return candidates[0]


def _target_names(key: str, wrapper: nn.Module, targets: Dict[str, torch.Tensor]) -> List[str]:
    """Candidates for a feature extractor's parameter name in the plain model: timm's FeatureListNet/DictNet name a
    flattened ``nn.Sequential`` child ``<parent>_<child>``; FeatureGetterNet keeps the model as ``model``."""
    if isinstance(wrapper, FeatureGetterNet):
        candidates = [key[len('model.'):]] if key.startswith('model.') else []
    elif isinstance(wrapper, _WRAPPERS):
        head, _, rest = key.partition('.')
        candidates = [key] + [f'{head[:i]}.{head[i + 1:]}.{rest}' for i, c in enumerate(head) if c == '_']
    else:
        candidates = [key]
    return [c for c in candidates if c in targets]


def _strides(module: nn.Module, name: str) -> Optional[tuple]:
    try:
        sub = module.get_submodule(name)
    except AttributeError:
        return None
    return tuple(sub.stride) if isinstance(sub, nn.modules.conv._ConvNd) else None


def _differs(a, b) -> bool:
    """Whether two architecture arguments differ; only plain (JSON) values count, the ones an export can record."""
    try:
        json.dumps(a)
        json.dumps(b)
    except TypeError:
        return False
    return a != b


def _export_backbone(source: nn.Module, state: Dict[str, torch.Tensor]) -> Tuple[nn.Module, List[str], List[str]]:
    """A plain timm model without classifier that holds ``source``'s weights (``state``, in ``source``'s names);
    returns it, the keys left at initialisation and notes on what timm's model does differently."""
    arch = source.pretrained_cfg['architecture']
    user_args = {k: v for k, v in getattr(source, '_model_args', {}).items()
                 if k not in _FEATURE_ARGS and k != 'num_classes'}
    with torch.device('meta'):
        probe = timm.create_model(arch, pretrained=False, num_classes=0, **user_args)
    # What the family's factory adds for features_only (NAT's per-level feature norms): recorded as arguments.
    built = getattr(probe, '_build_args', {})
    extra = {k: v for k, v in getattr(source, '_build_args', {}).items()
             if k != 'num_classes' and k not in user_args and (k not in built or _differs(built[k], v))}
    target = timm.create_model(arch, pretrained=False, num_classes=0, **user_args, **extra).eval()
    own = target.state_dict()
    mapped, unplaced, mismatched, notes = {}, [], [], []
    for key, value in state.items():
        names = _target_names(key, source, own)
        if len(names) != 1:
            unplaced.append(key if not names else f'{key} (ambiguous: {", ".join(names)})')
            continue
        name = names[0]
        if tuple(own[name].shape) != tuple(value.shape):
            mismatched.append(f'{key} -> {name}: {tuple(value.shape)} vs {tuple(own[name].shape)}')
            continue
        mapped[name] = value
        module_of = key.rsplit('.', 1)[0]
        a, b = _strides(source, module_of), _strides(target, name.rsplit('.', 1)[0])
        if a is not None and b is not None and a != b:
            notes.append(f'{name.rsplit(".", 1)[0]} ran with stride {a} in the task model, timm builds it with {b}')
    if unplaced or mismatched:
        lines = [f'the backbone\'s weights do not fit timm\'s {arch}(num_classes=0, '
                 f'{", ".join(f"{k}={v!r}" for k, v in {**user_args, **extra}.items())}); nothing was written']
        if unplaced:
            lines.append(f'  no place in it for: {", ".join(unplaced[:12])}{" ..." if len(unplaced) > 12 else ""}')
        if mismatched:
            lines.append(f'  shape mismatches: {", ".join(mismatched[:12])}')
        raise SystemExit('publish.py: ' + '\n'.join(lines))
    left = [k for k in own if k not in mapped]
    target.load_state_dict({**own, **mapped}, strict=True)
    return target, left, notes


def _data_config(cfg, task: nn.Module, model: nn.Module) -> Dict[str, Any]:
    """The preprocessing the config evaluated with, as timm's data config: mean/std of the task's data
    preprocessor, and size, crop and interpolation of a classification test pipeline."""
    data: Dict[str, Any] = {}
    preprocessor = getattr(task, 'data_preprocessor', None)
    for key in ('mean', 'std'):
        value = getattr(preprocessor, key, None)
        if isinstance(value, torch.Tensor) and value.numel() in (1, 3):
            data[key] = tuple(round(float(v) / 255, 6) for v in value.flatten())
    pipeline = (((cfg.get('test_dataloader') or {}).get('dataset') or {}).get('pipeline')) or {}
    if isinstance(pipeline, dict) and isinstance(pipeline.get('img_size'), int):
        in_chans = int(getattr(model, 'in_chans', None) or model.pretrained_cfg.get('input_size', (3,))[0])
        data['input_size'] = (in_chans, pipeline['img_size'], pipeline['img_size'])
        for key in ('crop_pct', 'interpolation'):
            if key in pipeline:
                data[key] = pipeline[key]
    return data


# -- the card -----------------------------------------------------------------------------------------------------
def _format(value: float) -> str:
    return f'{value:.4g}' if abs(value) < 1000 else f'{value:.1f}'


def _model_card(*, model: nn.Module, arch: str, task: str, backbone: bool, config: str, checkpoint_path: Path,
                checkpoint: Dict[str, Any], which: str, sha256: str, licence: str, licence_note: str,
                data_config: Dict[str, Any], left_at_init: List[str], notes: List[str], name: str,
                validated_ema: bool = False, stored_dtypes: Sequence[str] = ()) -> Dict[str, Any]:
    meta = checkpoint.get('meta') or {}
    metrics, measured, measured_iter = final_metrics(checkpoint)
    best = (checkpoint.get('message_hub') or {}).get('runtime_info', {}).get('best_score')
    params = sum(p.numel() for p in model.parameters())
    size = data_config.get('input_size') or model.pretrained_cfg.get('input_size')
    details: Dict[str, Any] = {
        'Model Type': 'Image feature backbone (no classifier)' if backbone else 'Image classification',
        'Architecture': f'{arch} (timm; visionattn\'s zoo registers it with `import visionattn`)',
        'Model Stats': {'Params (M)': f'{params / 1e6:.2f}', 'Image size': 'x'.join(str(s) for s in size[1:])},
        'Weights': which,
        'Checkpoint': f'{checkpoint_path.name}, epoch {meta.get("epoch", "?")}, iteration {meta.get("iter", "?")}',
        'Training config': f'`{config}` (the full config the run used is below)',
    }
    if metrics:
        shown = {k: _format(v) for k, v in metrics.items()}
        if _number(best) is not None:
            shown['best score'] = _format(float(best))
        if validated_ema:
            # validation (and tools/test.py on the checkpoint) ran the EMA, not the trained weights published here
            measured += (', of the EMA of the weights, not of these trained weights: publish with --ema for the '
                         'weights these metrics were measured on')
        elif measured_iter is not None and measured_iter != meta.get('iter'):
            # mmengine saves an epoch's checkpoint before that epoch's validation
            measured += (f', before this checkpoint\'s weights: run tools/test.py on {checkpoint_path.name} for their '
                         'own numbers')
        details[f'Validation metrics (the last in the checkpoint\'s history: {measured})'] = shown
    else:
        details['Validation metrics'] = 'none recorded in the checkpoint'
    if stored_dtypes:
        details['Precision'] = (f'the checkpoint stored these weights in {" and ".join(stored_dtypes)}; published in '
                                f'the model\'s float32 (the same values: no precision is gained)')
    details['sha256 of model.safetensors'] = f'`{sha256}`'
    details['Licence'] = f'{licence} ({licence_note})'
    if left_at_init:
        details['Not part of the trained backbone (left at initialisation)'] = [f'`{k}`' for k in left_at_init]
    if notes:
        details['Differences from timm\'s model'] = notes
    features = ', features_only=True' if backbone else ''
    cfg_text = meta.get('cfg') if isinstance(meta.get('cfg'), str) else Path(config).read_text()
    usage = (
        '```python\nimport timm\nimport visionattn  # registers the zoo\'s architectures with timm\n\n'
        f'model = timm.create_model("hf-hub:<user>/{name}", pretrained=True{features})  # or "local-dir:<folder>"\n'
        'model.eval()\ndata_config = timm.data.resolve_model_data_config(model)\n'
        'transform = timm.data.create_transform(**data_config, is_training=False)\n```\n\n'
        'Exported by visionattn\'s `tools/publish.py` from a `tools/train.py` checkpoint.\n\n'
        f'### Training config\n\n```python\n{cfg_text.rstrip()}\n```\n')
    return {
        'license': licence,
        'tags': ['image-feature-extraction' if backbone else 'image-classification', 'timm', 'visionattn'],
        'description': (f'The backbone (`{arch}`) of a `{task}`' if backbone else f'`{arch}`, the classifier of an '
                        f'`{task}`') + f' trained with visionattn\'s `tools/train.py` on `{config}`.',
        'details': details,
        'usage': usage,
    }


# -- publishing ---------------------------------------------------------------------------------------------------
_WRITTEN = frozenset({WEIGHTS_FILE, 'config.json', 'README.md'})  # what publish puts in OUT_DIR


def _check_out_dir(out: Path, force: bool) -> None:
    """Refuse an OUT_DIR that publish must not replace: without ``force`` any non-empty one; with it, anything but
    an earlier publish's folder (replacing a work dir deleted its checkpoints, a file in its place was deleted too)."""
    where = out.resolve()
    if where == Path.cwd().resolve() or where in Path.cwd().resolve().parents:
        raise SystemExit(f'publish.py: OUT_DIR {out} is the current folder or holds it; publish writes OUT_DIR as a '
                         'new folder beside it: name a subfolder')
    if not out.exists() and not out.is_symlink():
        return
    if out.is_symlink() or not out.is_dir():
        raise SystemExit(f'publish.py: {out} exists and is not a folder; publish writes OUT_DIR as a folder: pass '
                         'another OUT_DIR' + ('' if force else ' (--force replaces only an earlier publish\'s folder)'))
    entries = sorted(p.name for p in out.iterdir())
    if not entries:
        return
    if not force:
        raise SystemExit(f'publish.py: {out} exists and is not empty; pass another OUT_DIR or --force to replace it')
    foreign = [name for name in entries if name not in _WRITTEN]
    if foreign:
        written = ', '.join(sorted(_WRITTEN))
        raise SystemExit(f'publish.py: --force replaces only an earlier publish\'s folder ({written}), and {out} also '
                         f'holds {summarise_keys(foreign, 6)}, which replacing it would delete: pass another OUT_DIR '
                         'or move them away')


def publish(config: str, checkpoint_path: str, out_dir: str, ema: bool = False, backbone_only: bool = False,
            backbone_module: Optional[str] = None, cfg_options: Optional[Dict] = None, name: Optional[str] = None,
            licence: Optional[str] = None, force: bool = False) -> Published:
    """Write ``out_dir`` (timm's ``save_for_hf`` layout plus the model card) from a tools/train.py checkpoint.

    Raises:
        SystemExit: The checkpoint does not fit the config's model, there is nothing to export, or ``out_dir`` is
            not empty (without ``force``; with it, holds other files than an earlier publish wrote, e.g. the
            checkpoint), is not a folder or is the current folder.
    """
    from visionattn.engine import MODELS, load_tool_config
    from visionattn.engine.runner import _check_shapes, restore_checkpoint
    out = Path(out_dir)
    _check_out_dir(out, force)
    cfg = load_tool_config(config, cfg_options)
    try:
        checkpoint = restore_checkpoint(load_checkpoint_file(checkpoint_path))
        state, which = select_weights(checkpoint, ema)
    except CheckpointError as e:
        raise SystemExit(f'publish.py: {e}') from None
    # A half-precision checkpoint (a run saved under fp16/bf16) loads into the float32 model and was published as
    # float32 without a word; the card says so.
    stored_dtypes = sorted({str(v.dtype).replace('torch.', '') for v in state.values()
                            if isinstance(v, torch.Tensor) and v.is_floating_point() and v.dtype != torch.float32})
    _force_no_pretrained(cfg.model)
    task = MODELS.build(cfg.model).eval()
    try:
        _check_shapes(task, state, checkpoint_path)
    except CheckpointError as e:
        raise SystemExit(f'publish.py: {e}\n(is {config} the config it was trained with? --cfg-options as in training '
                         'apply here too)') from None
    task.load_state_dict(state, strict=True)
    candidates = find_timm_modules(task)
    notes: List[str] = []
    left: List[str] = []
    if backbone_only:
        module_name, source = _pick(candidates, backbone_module, f'{type(task).__name__} of {config}')
        prefix = f'{module_name}.' if module_name else ''
        sub = {k[len(prefix):]: v for k, v in task.state_dict().items() if k.startswith(prefix)}
        if not isinstance(source, _WRAPPERS):  # a classifier: drop its head
            head = source.pretrained_cfg.get('classifier') or ()
            heads = tuple(f'{h}.' for h in ([head] if isinstance(head, str) else head))
            sub = {k: v for k, v in sub.items() if not k.startswith(heads)}
        model, left, notes = _export_backbone(source, sub)
        task_name = 'image-feature-extraction'
    else:
        classifiers = [(n, m) for n, m in candidates if not isinstance(m, _WRAPPERS) and getattr(m, 'num_classes', 0)]
        if not classifiers:
            raise SystemExit(f'publish.py: {type(task).__name__} of {config} is not a classifier; export its backbone '
                             'with --backbone-only')
        module_name, model = _pick(classifiers, backbone_module, f'{type(task).__name__} of {config}')
        task_name = 'image-classification'
    arch = model.pretrained_cfg['architecture']
    data_config = _data_config(cfg, task, model)
    # The weights are these, not the architecture's pretrained ones: the tag names the config, the licence is theirs.
    model_config: Dict[str, Any] = {'pretrained_cfg': {'tag': Path(config).stem}}
    classes = ((checkpoint.get('meta') or {}).get('dataset_meta') or {}).get('classes')
    if not backbone_only and classes and len(classes) == model.num_classes:
        model_config['label_names'] = [str(c) for c in classes]
    source_licence = model.pretrained_cfg.get('license')
    if licence is not None:
        licence_note = 'as given to publish.py'
    elif source_licence:
        licence, licence_note = source_licence, (f'recorded for {arch}\'s weights in its pretrained cfg; '
                                                 'pass --license to publish under another')
    else:
        licence, licence_note = 'apache-2.0', 'visionattn\'s licence; pass --license to publish under another'
    model_config['pretrained_cfg']['license'] = licence
    name = name or out.name
    # Write beside OUT_DIR and rename into place: an interrupted publish leaves no half-written folder.
    tmp = out.with_name(f'.{out.name}.{os.getpid()}.tmp')
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        save_for_hf(model, str(tmp), model_config=dict(model_config), safe_serialization=True,
                    data_config=dict(data_config))
        sha256 = sha256_file(tmp / WEIGHTS_FILE)
        card = _model_card(model=model, arch=arch, task=type(task).__name__, backbone=backbone_only, config=config,
                           checkpoint_path=Path(checkpoint_path), checkpoint=checkpoint, which=which, sha256=sha256,
                           licence=licence, licence_note=licence_note, data_config=data_config, left_at_init=left,
                           notes=notes, name=name, validated_ema=not ema and _holds_ema(checkpoint),
                           stored_dtypes=stored_dtypes)
        (tmp / 'README.md').write_text(generate_readme(card, name, task_name=task_name), encoding='utf-8')
        if out.exists():
            shutil.rmtree(out) if out.is_dir() else out.unlink()
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return Published(model=model, out_dir=out, name=name, task_name=task_name, model_card=card,
                     model_config=model_config, data_config=data_config, sha256=sha256, weights=which,
                     source_module=module_name, left_at_init=left, notes=notes)


def push(published: Published, repo_id: str, token: Optional[str] = None, private: bool = False,
         revision: Optional[str] = None, create_pr: bool = False):
    """Upload with ``timm.models.push_to_hf_hub``, with the arguments :func:`publish` wrote OUT_DIR with: the same
    files, the same bytes (the README only where the repository has none yet, as timm does)."""
    if repo_id.split('/')[-1] != published.name:
        raise ValueError(f'the model card was written for {published.name!r}; publish with --name '
                         f'{repo_id.split("/")[-1]} to push to {repo_id}')
    return push_to_hf_hub(published.model, repo_id, commit_message=f'Add {published.name} (visionattn publish.py)',
                          token=token, revision=revision, private=private, create_pr=create_pr,
                          model_config=dict(published.model_config), model_card=published.model_card,
                          task_name=published.task_name, safe_serialization=True,
                          data_config=dict(published.data_config))


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config', help='the config the checkpoint was trained with')
    parser.add_argument('checkpoint', help='a tools/train.py checkpoint (epoch_N.pth, iter_N.pth, best_*.pth)')
    parser.add_argument('out_dir', help='folder to write (read by timm.create_model("local-dir:OUT_DIR", ...))')
    parser.add_argument('--ema', action='store_true', help='publish the EMA of the weights (EMAHook)')
    parser.add_argument('--backbone-only', action='store_true',
                        help='publish the task model\'s timm backbone as a timm model without classifier')
    parser.add_argument('--backbone-module', default=None,
                        help='the module to export where the task model holds several timm models')
    parser.add_argument('--name', default=None,
                        help='model name in the card (default: the repository\'s with --push-to-hub, else OUT_DIR\'s)')
    parser.add_argument('--license', default=None,
                        help='licence of the published weights (default: the one recorded for the architecture)')
    parser.add_argument('--force', action='store_true',
                        help='replace OUT_DIR when it holds an earlier publish (only the files publish writes)')
    parser.add_argument('--push-to-hub', metavar='REPO_ID', default=None,
                        help='also upload OUT_DIR\'s files to this Hugging Face repository (timm\'s push_to_hf_hub)')
    parser.add_argument('--private', action='store_true', help='create the repository private (with --push-to-hub)')
    parser.add_argument('--cfg-options', nargs='+', action='extend', metavar='KEY=VALUE',
                        help='as in training: ' + CFG_OPTIONS_HELP)
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> Published:
    args = parse_args(argv)
    name = args.name or (args.push_to_hub.split('/')[-1] if args.push_to_hub else None)
    published = publish(args.config, args.checkpoint, args.out_dir, ema=args.ema, backbone_only=args.backbone_only,
                        backbone_module=args.backbone_module, cfg_options=args.cfg_options, name=name,
                        licence=args.license, force=args.force)
    arch = published.model.pretrained_cfg['architecture']
    config = json.loads((published.out_dir / 'config.json').read_text())
    print(f'{args.checkpoint} -> {published.out_dir}\n'
          f'  model:   {arch}, num_classes={config["num_classes"]}, from {published.source_module or "the model"} '
          f'of the task model; {published.weights}\n'
          f'  wrote:   {WEIGHTS_FILE} (sha256 {published.sha256}), config.json, README.md\n'
          f'  load:    timm.create_model("local-dir:{published.out_dir}", pretrained=True) after import visionattn')
    for key in published.left_at_init:
        print(f'  note:    {key} is not part of the trained backbone: left at its initialisation')
    for note in published.notes:
        print(f'  note:    {note}')
    if args.push_to_hub:
        info = push(published, args.push_to_hub, private=args.private)
        print(f'  pushed:  {info}')
    return published


if __name__ == '__main__':
    try:
        main()
    except BrokenPipeError:
        sys.exit(1)
