"""Reading a config and its ``--cfg-options`` for the tools, with errors that name the file and line or the key.

mmengine reports a syntax error in a config, or in a base config it reads through ``with read_base():`` or
``_base_``, as ``File "<unknown>", line 2``; a ``--cfg-options`` token without ``=`` fails in an unpacking deep
inside argparse; a misspelt key (``train_cfg.max_epoch=1``) is silently added beside the real one, and a value of the
wrong kind (``train_cfg.max_epochs=abc``) fails much later, far from the option. :func:`read_config` and
:func:`apply_cfg_options` check these first and raise :class:`ConfigError` naming the culprit.
"""
import ast
import difflib
import inspect
import os
import os.path as osp
import re
import traceback
import warnings
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

__all__ = ['CFG_OPTIONS_HELP', 'ConfigError', 'read_config', 'config_files', 'parse_cfg_options', 'apply_cfg_options',
           'dataset_classes', 'check_num_classes', 'check_train_cfg', 'check_loaders_and_hooks', 'check_paths',
           'check_batches',
           'check_sections', 'check_types']


class ConfigError(ValueError):
    """A config file, or a ``--cfg-options`` override, that cannot be used; the message names the file and line, or
    the key."""


# ------------------------------------------------------------------------------------------------------------------
# the config files: syntax and bases


# The --cfg-options help of tools/train.py, tools/test.py and tools/publish.py.
CFG_OPTIONS_HELP = (
    'override config settings: a dotted key (list entries by index) = a value, e.g. train_cfg.max_epochs=3 '
    'model.backbone=biformer_s custom_hooks.0.priority=49. The value is read as an int, float, True/False, None, a '
    'list a,b or [a,b], a tuple (a,b) or else a string, and must be of the kind the config has there. A key the '
    'config lacks is refused, naming the close matches, unless the class its section builds takes it (e.g. '
    'train_dataloader.dataset.max_samples=64); +KEY=VALUE adds a new key without that check')

def _read_base_imports(tree: ast.Module) -> List[ast.ImportFrom]:
    """The ``from x import ...`` statements inside ``with read_base():`` blocks (mmengine's lazy bases)."""
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.With):
            continue
        expr = node.items[0].context_expr if node.items else None
        func = expr.func if isinstance(expr, ast.Call) else None
        name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None
        if name == 'read_base':
            found += [n for n in ast.walk(node) if isinstance(n, ast.ImportFrom)]
    return found


def _lazy_base_path(filename: str, node: ast.ImportFrom) -> Optional[str]:
    """The file mmengine reads for a ``read_base`` import (None where it lies in an installed package not found)."""
    module = node.module or ''
    if node.level:
        return osp.join(osp.dirname(filename), *(['..'] * (node.level - 1)), module.replace('.', '/') + '.py')
    package, _, rest = module.partition('.')
    if not rest:
        return None
    try:
        from mmengine.utils import get_installed_path
        return osp.join(get_installed_path(package), *rest.split('.')) + '.py'
    except Exception:  # noqa: BLE001  (not installed: mmengine says so itself)
        return None


def _old_base_paths(filename: str, tree: ast.Module) -> List[Tuple[str, int]]:
    """The files a ``_base_ = ...`` assignment names (local ones; ``package::path`` ones are left to mmengine)."""
    for node in tree.body:
        if (isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)
                and node.targets[0].id == '_base_'):
            try:
                value = ast.literal_eval(node.value)
            except ValueError:
                return []
            names = value if isinstance(value, (list, tuple)) else [value]
            return [(osp.normpath(osp.join(osp.dirname(filename), n)), node.lineno) for n in names
                    if isinstance(n, str) and '::' not in n and '{{' not in n]
    return []


def _syntax_message(error: SyntaxError, filename: str, top: str) -> str:
    where = f'config {filename}, line {error.lineno}' + ('' if filename == top else
                                                         f' (a base config of {top})')
    text = f'{where}: SyntaxError: {error.msg}'
    if error.text:
        line = error.text.rstrip('\n')
        text += f'\n    {line.strip()}'
        if error.offset:
            indent = len(line) - len(line.lstrip())
            text += '\n    ' + ' ' * max(error.offset - 1 - indent, 0) + '^'
    return text


def config_files(filename: str) -> List[str]:
    """``filename`` and every base config it reads, recursively, each checked for syntax and existence.

    Raises:
        ConfigError: A file has a syntax error, or names a base config that does not exist (with file and line).
    """
    top, seen, order = osp.abspath(filename), set(), []
    stack = [top]
    while stack:
        path = osp.abspath(stack.pop())
        if path in seen:
            continue
        seen.add(path)
        order.append(path)
        if not path.endswith('.py'):
            continue
        with open(path, encoding='utf-8') as f:
            source = f.read()
        try:
            tree = ast.parse(source, filename=path)
        except SyntaxError as e:
            raise ConfigError(_syntax_message(e, path, top)) from None
        bases = [(_lazy_base_path(path, n), n.lineno, '.' * n.level + (n.module or ''))
                 for n in _read_base_imports(tree)]
        bases += [(p, line, osp.relpath(p, osp.dirname(path))) for p, line in _old_base_paths(path, tree)]
        for base, line, named in bases:
            if base is None:
                continue
            if not osp.isfile(base):
                raise ConfigError(f'config {path}, line {line}: its base config {named} is not a file ({base})')
            stack.append(base)
    return order


def _config_frame(error: BaseException, files: Iterable[str]) -> Optional[traceback.FrameSummary]:
    """The innermost frame of ``error``'s traceback that runs one of the config ``files``."""
    files = {osp.abspath(f) for f in files}
    frames = [f for f in traceback.extract_tb(error.__traceback__) if osp.abspath(f.filename) in files]
    return frames[-1] if frames else None


def read_config(filename: str):
    """``mmengine.Config.fromfile(filename)``, with errors that name the config file and line at fault.

    Raises:
        ConfigError: A syntax error in the config or one of its bases, a base that does not exist, or an exception
            raised while running one of them (a NameError, ...).
    """
    from mmengine.config import Config
    files = config_files(filename)
    try:
        return Config.fromfile(filename)
    except ConfigError:
        raise
    except Exception as e:  # noqa: BLE001  (re-raised, with the place named)
        frame = _config_frame(e, files)
        if isinstance(e, SyntaxError) and frame is None:
            raise ConfigError(f'config {filename} or one of its bases: SyntaxError: {e}') from e
        if frame is None:
            raise
        where = f'config {frame.filename}, line {frame.lineno}'
        if osp.abspath(frame.filename) != osp.abspath(filename):
            where += f' (a base config of {filename})'
        code = f'\n    {frame.line}' if frame.line else ''
        raise ConfigError(f'{where}: {type(e).__name__}: {e}{code}') from e


# ------------------------------------------------------------------------------------------------------------------
# --cfg-options


def _parse_value(text: str) -> Any:
    """A ``--cfg-options`` value as mmengine's DictAction reads it, except that a single string keeps its spaces."""
    from mmengine.config import DictAction
    stripped = text.strip()
    if stripped.startswith(('(', '[')) or ',' in stripped:
        return DictAction._parse_iterable(stripped)
    if len(stripped) >= 2 and stripped[0] == stripped[-1] and stripped[0] in '\'"':
        return stripped[1:-1]  # quoted: a string, whatever it looks like
    return DictAction._parse_int_float_bool(stripped)


def parse_cfg_options(tokens: Union[None, Dict[str, Any], Sequence[str]]) -> Dict[str, Any]:
    """``KEY=VALUE`` tokens as a dict (a dict, as mmengine's DictAction makes, is returned as it is).

    Raises:
        ConfigError: A token without ``=``, an empty key or key part, or a value with unbalanced brackets.
    """
    if tokens is None:
        return {}
    if isinstance(tokens, dict):
        return dict(tokens)
    options = {}
    for token in tokens:
        key, sep, value = token.partition('=')
        if not sep:
            raise ConfigError(f'--cfg-options {token!r} is not KEY=VALUE (write e.g. {token}=VALUE)')
        key = key.strip()
        if not key.lstrip('+') or '' in key.lstrip('+').split('.'):
            raise ConfigError(f'--cfg-options {token!r}: the key {key!r} has an empty part')
        try:
            options[key] = _parse_value(value)
        except AssertionError as e:  # DictAction's check of the brackets
            raise ConfigError(f'--cfg-options {key}: cannot read the value {value!r}: {e}') from None
    return options


# What the runner reads besides the sections of a config, and what it passes each section to where the section
# names no type: a key the config lacks is accepted where the class or function that gets it takes it.
_RUNNER_EXTRA = ('launcher', 'model_wrapper_cfg', 'find_unused_parameters', 'compile', 'efficient_conv_bn_eval',
                 'activation_checkpointing', 'custom_imports', 'strategy', 'sync_bn')
_ANY_TYPED = ('_scope_', '_delete_', 'priority', 'constructor', 'paramwise_cfg', 'convert_to_iter_based')
_FILLED_IN = ('self', 'runner', 'cfg', 'dataloader', 'params')  # passed by the runner, not by the config
_DEFAULT_HOOKS = ('runtime_info', 'timer', 'sampler_seed', 'logger', 'param_scheduler', 'checkpoint', 'visualization')


def _parameters(obj) -> Optional[List[str]]:
    """The keyword parameters of a class or function; None where it takes any (``**kwargs``) or cannot be read."""
    try:
        signature = inspect.signature(obj)
    except (TypeError, ValueError):
        return None
    params = signature.parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def _resolve_type(kind) -> Any:
    """A config's ``type=``: the class or function itself, or a name looked up in the registries (None if unknown)."""
    if not isinstance(kind, str):
        return kind if callable(kind) else None
    from . import registry
    for name in registry.__all__:
        try:
            found = getattr(registry, name).get(kind)
        except Exception:  # noqa: BLE001  (a name that is not found is only not known here)
            found = None
        if found is not None:
            return found
    return None


def _section_parameters(path: Tuple[str, ...], node: dict) -> Tuple[Optional[List[str]], str]:
    """The keys the consumer of the dict at ``path`` takes (None: any, or not known) and that consumer's name."""
    if 'type' in node:
        kind = _resolve_type(node['type'])
        if kind is None:
            return None, ''
        params = _parameters(kind)
        return (None if params is None else params + list(_ANY_TYPED)), getattr(kind, '__name__', str(kind))
    if not path:
        import mmengine.runner
        return _parameters(mmengine.runner.Runner) + list(_RUNNER_EXTRA), 'the runner'
    import mmengine.runner as loops
    name = '.'.join(path)
    if name == 'train_cfg':
        loop = loops.EpochBasedTrainLoop if node.get('by_epoch', True) else loops.IterBasedTrainLoop
        return _parameters(loop) + ['by_epoch'], loop.__name__
    if name in ('val_cfg', 'test_cfg'):
        loop = loops.ValLoop if name == 'val_cfg' else loops.TestLoop
        return _parameters(loop), loop.__name__
    if name in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        from torch.utils.data import DataLoader
        return _parameters(DataLoader) + ['num_batch_per_epoch', 'disable_subprocess_warning'], 'DataLoader'
    if name == 'randomness':
        return _parameters(loops.set_random_seed), 'set_random_seed'
    if name == 'env_cfg':
        return ['cudnn_benchmark', 'mp_cfg', 'dist_cfg', 'resource_limit'], 'the runner\'s setup_env'
    if name == 'env_cfg.mp_cfg':
        return ['mp_start_method', 'opencv_num_threads'], 'the runner\'s setup_env'
    if name == 'auto_scale_lr':
        return ['enable', 'base_batch_size'], 'the runner'
    if name == 'default_hooks':
        return list(_DEFAULT_HOOKS), 'the runner\'s default hooks'
    return None, ''


def _kind(value) -> str:
    return 'a section' if isinstance(value, dict) else f'{type(value).__name__} {value!r}'


def _check_value(key: str, old, new) -> None:
    """Refuse a value of another kind than the config's, where that cannot be meant: text for a number or a flag, a
    number for a flag, a list for a number, a plain value for a section."""
    if old is None or new is None:
        return
    number = (int, float)
    bad = False
    if isinstance(old, bool):
        bad = not isinstance(new, bool) and not (isinstance(new, int) and new in (0, 1))
    elif isinstance(old, number):
        bad = not isinstance(new, number) or isinstance(new, bool)
    elif isinstance(old, dict):
        bad = not isinstance(new, dict)
    if bad:
        raise ConfigError(f'--cfg-options {key}={new!r}: the config has {_kind(old)} there, and the value given is '
                          f'{type(new).__name__} {new!r}')


def _unknown_key(key: str, path: Tuple[str, ...], node: dict, missing: str, value) -> None:
    """Refuse the new key ``missing`` in the dict at ``path`` unless what the dict is built into takes it; where that
    cannot be known (a ``**kwargs`` class, a plain dict of keyword arguments) add it with a warning."""
    params, consumer = _section_parameters(path, node)
    where = '.'.join(path) or 'the config'
    if params is not None and missing in params:
        return
    if params is None:
        warnings.warn(f'--cfg-options {key}: {where} has no key {missing!r}, and what it is built into may take any: '
                      f'the key is added (write +{key}=... to add it without this warning)', stacklevel=4)
        return
    # (the keys that hold an imported class or function are the config file's imports, not settings)
    keys = [str(k) for k, v in node.items() if not (isinstance(v, type) or inspect.isroutine(v))]
    others = [p for p in params if p not in node and p not in _ANY_TYPED and p not in _FILLED_IN]
    close = difflib.get_close_matches(missing, keys + others, n=3, cutoff=0.6)
    hint = f' (did you mean {" or ".join(close)}?)' if close else ''
    takes = f'; {consumer} also takes {_listing(others)}' if others else ''
    raise ConfigError(f'--cfg-options {key}={value!r}: {where} has no key {missing!r}{hint}. Its keys: '
                      f'{_listing(keys) or "none"}{takes}. To add a key anyway, write +{key}=...')


def _listing(names: Sequence[str], limit: int = 12) -> str:
    return ', '.join(names[:limit]) + (f' and {len(names) - limit} more' if len(names) > limit else '')


def _check_option(cfg_dict, key: str, value) -> None:
    parts = key.split('.')
    node, path = cfg_dict, ()
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, (list, tuple)):
            where = '.'.join(path)
            if not part.isdigit():
                raise ConfigError(f'--cfg-options {key}: {where} is a list; name its entries by index 0..'
                                  f'{len(node) - 1}, not {part!r}')
            if int(part) >= len(node):
                raise ConfigError(f'--cfg-options {key}: {where} has {len(node)} entries (indices 0..{len(node) - 1}),'
                                  f' there is no entry {part}')
            if isinstance(node, tuple):
                raise ConfigError(f'--cfg-options {key}: {where} is a tuple, whose entries cannot be set one by one; '
                                  f'set the whole value ({where}=...)')
            node, path = node[int(part)], path + (part,)
        elif isinstance(node, dict):
            if part not in node:
                _unknown_key(key, path, node, part, value)
                return
            child = node[part]
            if last:
                _check_value(key, child, value)
                return
            node, path = child, path + (part,)
        else:
            where = '.'.join(path)
            raise ConfigError(f'--cfg-options {key}: {where} is {_kind(node)}, not a section with keys; set {where} '
                              'itself')
        if last:
            _check_value(key, node, value)


def _top_level_variable(cfg_dict, key: str) -> None:
    """A top-level name the runner never reads (``num_classes``, ``img_size``, ...) is a variable of the config
    file, already copied where the file used it: setting it changes nothing, silently."""
    import mmengine.runner
    if '.' in key or key in (_parameters(mmengine.runner.Runner) or []) + list(_RUNNER_EXTRA):
        return
    old = cfg_dict.get(key)
    if isinstance(old, (dict, list)) or key not in cfg_dict:
        return
    same = [p for p, v in _leaves(cfg_dict) if '.' in p and type(v) is type(old) and v == old]
    uses = [p for p in same if p.rsplit('.', 1)[-1] == key] or same
    hint = (f'; the config holds its value {old!r} at {", ".join(uses[:6])}{" ..." if len(uses) > 6 else ""}: '
            'set those instead') if uses else ''
    raise ConfigError(f'--cfg-options {key}: {key} is a variable of the config file, which was already used where '
                      f'the file reads it, so setting it changes nothing{hint}. Write +{key}=... to set it anyway')


def _leaves(node, prefix=''):
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _leaves(v, f'{prefix}{k}.')
    elif isinstance(node, (list, tuple)) and any(isinstance(v, (dict, list, tuple)) for v in node):
        for i, v in enumerate(node):
            yield from _leaves(v, f'{prefix}{i}.')
    else:
        yield prefix[:-1], node


def apply_cfg_options(cfg, options: Union[None, Dict[str, Any], Sequence[str]]) -> None:
    """Merge ``--cfg-options`` into ``cfg`` (in place) after checking each one.

    A key the config does not have is refused, with the close matches, unless the class or function its section
    builds takes it as a keyword (``train_dataloader.dataset.max_samples`` for DigitsDataset); where that cannot be
    known the key is added with a warning. A leading ``+`` adds a key without any check. A value must be of the kind
    the config has there (a number for a number, True/False for a flag, ...). A top-level variable of the config file
    (``num_classes``) is refused: it was already used when the file was read.

    Raises:
        ConfigError: Naming the key, the close matches or both kinds of value.
    """
    options = parse_cfg_options(options)
    if not options:
        return
    cfg_dict = cfg._cfg_dict
    merged = {}
    for key, value in options.items():
        if key.startswith('+'):
            merged[key[1:]] = value
            continue
        _top_level_variable(cfg_dict, key)
        _check_option(cfg_dict, key, value)
        merged[key] = value
    try:
        cfg.merge_from_dict(merged)
    except (KeyError, TypeError) as e:
        raise ConfigError(f'--cfg-options: {e}') from None


# ------------------------------------------------------------------------------------------------------------------
# the model against its data


def dataset_classes(dataset_cfg) -> Optional[int]:
    """How many classes a classification dataset config yields, where that is known without loading it: its
    ``classes`` argument, the dataset class's own ``classes`` (the digits), or the class folders of an image-folder
    dataset; None otherwise."""
    if not isinstance(dataset_cfg, dict):
        return None
    kind = _resolve_type(dataset_cfg.get('type'))
    if not isinstance(kind, type):
        return None
    if dataset_cfg.get('classes') is not None:
        return len(dataset_cfg['classes'])
    if _is_count(dataset_cfg.get('num_classes')) and 'num_classes' in (_parameters(kind) or ()):
        return dataset_cfg['num_classes']
    own = inspect.getattr_static(kind, 'classes', None)
    if isinstance(own, (tuple, list)) and own:  # (an empty tuple: a base's placeholder)
        return len(own)
    from .registry import DATASETS
    folder = DATASETS.get('ImageFolderDataset')  # (heads/classification, which engine/ does not import)
    if folder is not None and issubclass(kind, folder) and dataset_cfg.get('data_root') is not None:
        root = osp.join(osp.expanduser(str(dataset_cfg['data_root'])), str(dataset_cfg.get('split', '')))
        if osp.isdir(root):
            return sum(1 for entry in os.scandir(root) if entry.is_dir())
    return None


def check_num_classes(cfg) -> None:
    """An image classifier or a segmentor needs at least as many classes as its datasets have: with fewer it fails
    at the first step ("Target 7 is out of bounds", or a device-side assert on GPUs), or scores the missing classes
    as wrong.

    Raises:
        ConfigError: Naming both numbers and the option to set.
    """
    from .registry import MODELS
    model = cfg.get('model')
    kind = _resolve_type(model.get('type')) if isinstance(model, dict) else None
    # (heads/classification and heads/segmentation, which engine/ does not import)
    checked = tuple(task for task in (MODELS.get('ImageClassifier'), MODELS.get('Segmentor')) if task is not None)
    if not (isinstance(kind, type) and issubclass(kind, checked)):
        return
    default = inspect.signature(kind).parameters['num_classes'].default
    num_classes = model.get('num_classes', None if default is inspect.Parameter.empty else default)
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        dataset = (cfg.get(loader) or {}).get('dataset')
        found = dataset_classes(dataset)
        if found is not None and _is_count(num_classes) and found > num_classes:
            name = getattr(_resolve_type(dataset.get('type')), '__name__', 'dataset')
            missing = f'label {num_classes}' if found == num_classes + 1 else f'labels {num_classes}..{found - 1}'
            keys = sorted(f'model.{p}' for p, v in _leaves(model)
                          if p.rsplit('.', 1)[-1] == 'num_classes' and v == num_classes) or ['model.num_classes']
            raise ConfigError(f'model.num_classes={num_classes}, but {loader}.dataset ({name}) has {found} classes '
                              f'(labels 0..{found - 1}): the model cannot score {missing}. Set '
                              f'{", ".join(keys)} to {found} (--cfg-options '
                              f'{" ".join(f"{k}={found}" for k in keys)})')


# ------------------------------------------------------------------------------------------------------------------
# the run's settings


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_train_cfg(cfg) -> None:
    """``train_cfg``'s lengths and intervals: whole numbers >= 1. mmengine runs a 0-epoch training without a word,
    and divides by a 0 ``val_interval`` at the end of the first epoch.

    Raises:
        ConfigError: Naming the key and its value.
    """
    train_cfg = cfg.get('train_cfg') or {}
    if not isinstance(train_cfg, dict):
        return
    for key in ('max_epochs', 'max_iters', 'val_interval', 'val_begin'):
        value = train_cfg.get(key)
        if value is None:
            continue
        if not _is_count(value):
            raise ConfigError(f'train_cfg.{key}={value!r} must be a whole number, got {type(value).__name__}')
        if value < 1:
            hint = ' (nothing would be trained)' if key.startswith('max_') else ''
            raise ConfigError(f'train_cfg.{key}={value} must be at least 1{hint}')


def check_loaders_and_hooks(cfg) -> None:
    """The data loaders' batch sizes (whole numbers >= 1), workers (>= 0) and datasets' ``max_samples`` (>= 1, or
    None for all), and the logger's and checkpointer's intervals (>= 1): mmengine and torch fail on these deep
    inside with messages that name no option, or (a negative ``max_samples`` slicing ``[:-5]``, a checkpoint interval
    of 0 saving only at the end) take them without a word.

    Raises:
        ConfigError: Naming the key and its value.
    """
    def count(key: str, value, least: int) -> None:
        if value is None:
            return
        if not _is_count(value):
            raise ConfigError(f'{key}={value!r} must be a whole number, got {type(value).__name__}')
        if value < least:
            raise ConfigError(f'{key}={value} must be at least {least}')

    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        section = cfg.get(loader)
        if not isinstance(section, dict):
            continue
        count(f'{loader}.batch_size', section.get('batch_size'), 1)
        count(f'{loader}.num_workers', section.get('num_workers'), 0)
        dataset = section.get('dataset')
        if isinstance(dataset, dict):
            count(f'{loader}.dataset.max_samples', dataset.get('max_samples'), 1)
    hooks = cfg.get('default_hooks') or {}
    for name in ('logger', 'checkpoint'):
        hook = hooks.get(name) if isinstance(hooks, dict) else None
        if isinstance(hook, dict) and hook.get('interval') != -1:  # -1: the checkpointer saves by interval never
            count(f'default_hooks.{name}.interval', hook.get('interval'), 1)


def check_paths(cfg) -> None:
    """The work dir and the checkpoint to load before anything is built: a work dir that is a file fails as
    "File exists", and a folder as ``load_from`` as "does not exist".

    Raises:
        ConfigError: Naming the path, and for a folder the latest checkpoint in it.
    """
    work_dir = cfg.get('work_dir')
    if isinstance(work_dir, str) and '://' not in work_dir and osp.exists(work_dir) and not osp.isdir(work_dir):
        raise ConfigError(f'work_dir {work_dir!r} is a file, not a folder: pass another --work-dir')
    load_from = cfg.get('load_from')
    if isinstance(load_from, str) and '://' not in load_from:
        what = 'load_from (--resume PATH, or the checkpoint of tools/test.py)'
        if osp.isdir(load_from):
            raise ConfigError(f'{what} {load_from!r} is a folder, not a checkpoint file{_latest_in(load_from)}')
        if not osp.exists(load_from):
            raise ConfigError(f'{what} {load_from!r} does not exist')


def _latest_in(folder: str) -> str:
    from .runner import find_resume_checkpoint
    latest = find_resume_checkpoint(folder)
    return f': the latest checkpoint in it is {latest}' if latest else ': it holds no checkpoint (*.pth)'


def check_batches(loop, loader: str) -> None:
    """A loop's data loader must give at least one batch: an empty dataset, or one smaller than ``batch_size`` with
    ``drop_last=True``, fails in mmengine's scheduler ("`epoch_length` must be a positive integer"), divides by zero
    in its sampler, or loops forever in an iteration-based run.

    Raises:
        ConfigError: Naming the loader, the dataset's size, the batch size and drop_last; or a sampler's own batch
            size (``check_batch_size``) that the loader's cuts across.
    """
    from torch.utils.data import DataLoader
    dataloader = getattr(loop, 'dataloader', None)
    if not isinstance(dataloader, DataLoader):
        return
    # A sampler drawing structured batches (ReID's PKSampler: P identities x K instances) must be cut by the loader at
    # its own batch size; mmengine gives the sampler no batch size, so the sampler is asked here.
    check_batch_size = getattr(dataloader.sampler, 'check_batch_size', None)
    if callable(check_batch_size) and dataloader.batch_size is not None:
        try:
            check_batch_size(dataloader.batch_size)
        except ValueError as e:
            raise ConfigError(f'{loader}: {e}') from None
    try:
        if len(dataloader):
            return
        size = len(dataloader.dataset)
        share = len(dataloader.sampler) if dataloader.sampler is not None else size
    except TypeError:  # an iterable dataset: no length to check
        return
    name = type(dataloader.dataset).__name__
    if not size:
        raise ConfigError(f'{loader}.dataset ({name}) is empty: check its data_root, split or max_samples')
    per_process = f' ({share} per process)' if share != size else ''
    raise ConfigError(f'{loader} gives no batch: its dataset ({name}) has {size} items{per_process}, fewer than '
                      f'{loader}.batch_size={dataloader.batch_size} with drop_last=True: use a smaller batch_size, '
                      'or drop_last=False')


_NEEDS = {'train': ('train_dataloader', 'train_cfg', 'optim_wrapper'),
          'test': ('test_dataloader', 'test_cfg', 'test_evaluator')}


def check_sections(cfg, mode: Optional[str] = None) -> None:
    """The sections a run in ``mode`` ('train' or 'test'; None checks nothing, as for a base config) needs: ``model``
    with a ``type``, and that mode's data loader, loop settings and optimizer or evaluator. mmengine fails with a
    bare ``KeyError: 'model'``, or names all four training sections once the model is built.

    Raises:
        ConfigError: Naming the missing sections.
    """
    if mode is None:
        return
    model = cfg.get('model')
    if model is None:
        raise ConfigError('the config has no model section: model = dict(type=<task model class>, ...)')
    if isinstance(model, dict) and 'type' not in model:
        raise ConfigError(f'model has no type: name the task model class, e.g. type=ImageClassifier (from '
                          f'visionattn.engine); model = {dict(model)}')
    missing = [key for key in _NEEDS.get(mode, ()) if cfg.get(key) is None]
    if missing:
        raise ConfigError(f'to {mode}, the config needs {", ".join(_NEEDS[mode])}; it has no {", ".join(missing)}')


# The sections the runner builds through the registries (elsewhere ``type`` may be a plain argument, as in
# ``clip_grad=dict(type='agc')``).
_BUILT = re.compile(r'model|(train|val|test)_dataloader\.(dataset|sampler|batch_sampler|collate_fn)|'
                    r'(val|test)_evaluator(\.\d+)?|default_hooks\.\w+|custom_hooks\.\d+|param_scheduler(\.\d+)?|'
                    r'optim_wrapper(\.optimizer)?|visualizer(\.vis_backends\.\d+)?|log_processor|(train|val|test)_cfg')


def check_types(cfg) -> None:
    """Every ``type='Name'`` given by name must be registered: mmengine says so only when it builds that part, which
    for a hook or a metric may come after the first epoch. Names with a scope (``mmdet.X``) are left to mmengine.

    Raises:
        ConfigError: Naming the key and the close registered names.
    """
    for path, node in _typed_dicts(cfg._cfg_dict if hasattr(cfg, '_cfg_dict') else cfg):
        kind = node.get('type')
        if not _BUILT.fullmatch(path) or not isinstance(kind, str) or '.' in kind or _resolve_type(kind) is not None:
            continue
        close = difflib.get_close_matches(kind, _registered_names(), n=3, cutoff=0.7)
        hint = f' (did you mean {" or ".join(close)}?)' if close else ''
        raise ConfigError(f'{path}.type={kind!r} is not a registered class or function{hint}; configs may also '
                          'import the class and give it itself (type=ImageClassifier)')


def _typed_dicts(node, path=''):
    if isinstance(node, dict):
        if 'type' in node:
            yield path or 'the config', node
        for key, value in node.items():
            if isinstance(value, (dict, list, tuple)):
                yield from _typed_dicts(value, f'{path}.{key}' if path else str(key))
    elif isinstance(node, (list, tuple)):
        for i, value in enumerate(node):
            yield from _typed_dicts(value, f'{path}.{i}')


def _registered_names() -> List[str]:
    from . import registry
    names = set()
    for name in registry.__all__:
        node = getattr(registry, name)
        while node is not None:
            names.update(node.module_dict)
            node = node.parent
    return sorted(names)
