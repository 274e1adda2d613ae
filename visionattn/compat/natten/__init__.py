"""A NATTEN drop-in on visionattn's neighborhood-attention op: code written for NATTEN runs unchanged.

NATTEN (github.com/SHI-Labs/NATTEN, MIT; Hassani et al.) ships wheels for some torch/CUDA pairs only, none for the
CPU backward, and since 0.20 no relative positional bias, so code written for it (NAT, DiNAT, diffusion
transformers on neighborhood attention) stops running. visionattn's op has NATTEN's semantics, layout and rpb in
1-, 2- and 3-D, on any GPU Triton supports and on the CPU. After::

    import visionattn.compat.natten
    visionattn.compat.natten.install()  # `import natten` now gives this drop-in, unless a real NATTEN is installed

``import natten`` gives this package, with:

- NATTEN 0.17's modules ``NeighborhoodAttention1D/2D/3D`` (parameters ``qkv``, ``rpb``, ``proj``; official NAT/DiNAT
  checkpoints load unchanged), see :mod:`.modules`;
- the fused ``na1d/na2d/na3d``: NATTEN >= 0.20's at the top level, 0.17's in ``natten.functional`` (with 0.17's
  two-step ops), see :mod:`.functional`;
- NATTEN's switches and queries (``use_fused_na``, ``has_cuda``, ...) as harmless stand-ins, see :mod:`.context`
  (0.15's copies in ``natten.functional``, 0.17's ``natten.utils.get_device_cc``), and ``natten.flops``
  (``get_flops``, ``add_natten_handle``, the fvcore handles of 0.14-0.17.4 and 0.17.4's ``fna_flop_count``...);
- 0.17.4/0.17.5's ``natten.experimental.na1d/na2d/na3d`` (the fused ops of ``natten.functional``).

``install()`` never replaces a real NATTEN: if one is importable (or already imported) it returns that one and
warns. The drop-in can also be used without installing it: ``from visionattn.compat import natten``.

``__version__`` is '0.17.5+visionattn': the modules follow NATTEN 0.17, and ``natten.context`` exists, so the
official NAT/DiNAT code passes ``rel_pos_bias=True`` as it does with NATTEN 0.17. Positional arguments mean what
they mean in the NATTEN that has the name: ``natten.functional.na{1,2,3}d`` (also ``from natten.na2d import na2d``)
take 0.17.5's order (kernel_size, dilation, is_causal, rpb, scale, ...); the top-level ``natten.na{1,2,3}d``, which
only NATTEN >= 0.20 has, take 0.20's (kernel_size, stride, dilation, is_causal, scale, ...). A call that can only be
the other version's order raises a ValueError saying so.
"""
import importlib
import importlib.machinery
import importlib.metadata
import importlib.util
import logging
import pathlib
import sys
import warnings
from types import ModuleType

from . import context, flops, functional, modules
from .context import *  # noqa: F401,F403  (NATTEN exports its switches at the top level)
from .context import __all__ as _context_all
from .functional import na1d_v020 as na1d  # NATTEN >= 0.20's order (stride fifth); 0.17.5 had no natten.na1d op
from .functional import na2d_v020 as na2d  # natten.functional.na2d keeps 0.17.5's order (dilation fifth)
from .functional import na3d_v020 as na3d
from .modules import NeighborhoodAttention1D, NeighborhoodAttention2D, NeighborhoodAttention3D

__version__ = '0.17.5+visionattn'
# NATTEN >= 0.20: whether `from natten import libnatten` (its C++ extension) succeeds; NATTEN's code calls into
# libnatten where it is True. There is none here (the ops need none), and code that finds False still runs na1d/2d/3d.
HAS_LIBNATTEN = False

__all__ = [
    'install', 'uninstall', 'NeighborhoodAttention1D', 'NeighborhoodAttention2D', 'NeighborhoodAttention3D',
    'na1d', 'na2d', 'na3d', 'context', 'experimental', 'flops', 'functional', 'modules', 'utils', 'HAS_LIBNATTEN',
    '__version__',
    *_context_all,
]

_logger = logging.getLogger('visionattn.compat.natten')


def _module_file(n: int) -> ModuleType:
    """NATTEN 0.15-0.17's ``natten/na<n>d.py``: the module class and the ops that file imports. :func:`install`
    registers it as ``natten.na<n>d`` only, so ``from natten.na2d import NeighborhoodAttention2D`` (the path NATTEN
    0.17 tells users of ``natten.natten2d`` to switch to) works, while the attribute ``natten.na2d`` stays the fused
    op of NATTEN >= 0.20."""
    module = ModuleType(f'natten.na{n}d', f"NATTEN 0.17's natten/na{n}d.py (visionattn's drop-in)")
    module.__spec__ = importlib.machinery.ModuleSpec(module.__name__, None)  # for importlib.util.find_spec
    setattr(module, f'NeighborhoodAttention{n}D', getattr(modules, f'NeighborhoodAttention{n}D'))
    for op in (f'na{n}d', f'na{n}d_qk', f'na{n}d_av'):
        setattr(module, op, getattr(functional, op))
    module.__all__ = [f'NeighborhoodAttention{n}D']
    return module


def _utils_module() -> ModuleType:
    """NATTEN 0.17's ``natten.utils`` as its documentation uses it: ``from natten.utils import get_device_cc``."""
    module = ModuleType('natten.utils', "NATTEN 0.17's natten.utils (visionattn's drop-in): get_device_cc")
    module.__spec__ = importlib.machinery.ModuleSpec(module.__name__, None)
    module.get_device_cc = context.get_device_cc
    module.__all__ = ['get_device_cc']
    return module


def _experimental_module() -> ModuleType:
    """NATTEN 0.17.4/0.17.5's ``natten.experimental``: the fused ``na1d/na2d/na3d`` as ``torch.library`` ops, which its
    docs (flops.md) tell users to import for ``torch.compile`` without graph breaks and ``torch.utils.flop_counter``.
    visionattn's op already is a custom op, so they are the fused ops of ``natten.functional`` (0.17.5's order)."""
    module = ModuleType('natten.experimental', "NATTEN 0.17's natten.experimental (visionattn's drop-in): na1d/2d/3d")
    module.__spec__ = importlib.machinery.ModuleSpec(module.__name__, None)
    module.na1d, module.na2d, module.na3d = functional.na1d, functional.na2d, functional.na3d
    module.__all__ = ['na1d', 'na2d', 'na3d']
    return module


utils = _utils_module()
experimental = _experimental_module()

# ``natten.<name>`` that code imports: the 0.14-0.17 module files natten1d/2d/3d hold the modules, 0.15-0.17's
# na1d/2d/3d the module and its ops.
_SUBMODULES = {'context': context, 'flops': flops, 'functional': functional, 'modules': modules, 'utils': utils,
               'experimental': experimental,
               'natten1d': modules, 'natten2d': modules, 'natten3d': modules,
               **{f'na{n}d': _module_file(n) for n in (1, 2, 3)}}


def _registered() -> dict:
    this = sys.modules[__name__]
    return {'natten': this, **{f'natten.{name}': module for name, module in _SUBMODULES.items()}}


class _Distribution(importlib.metadata.Distribution):
    """The drop-in as ``importlib.metadata`` sees an installed natten while :func:`install` is in effect: code that
    asks whether natten is installed by its version (Hugging Face transformers' ``is_natten_available``) finds it."""

    def read_text(self, filename):
        if filename == 'METADATA':
            return (f'Metadata-Version: 2.1\nName: natten\nVersion: {__version__}\n'
                    "Summary: visionattn's NATTEN drop-in (visionattn.compat.natten)\n")
        return None  # no RECORD, entry points or top_level.txt: nothing is installed on disk

    def locate_file(self, path):
        return pathlib.Path(__file__).parent / path


class _DistributionFinder(importlib.metadata.DistributionFinder):
    """Answers ``importlib.metadata`` for natten (names matched as pip normalizes them); finds no modules."""

    def find_spec(self, fullname, path=None, target=None):
        return None

    def find_distributions(self, context=importlib.metadata.DistributionFinder.Context()):
        name = context.name
        if name is None or name.lower().replace('-', '_').replace('.', '_') == 'natten':
            yield _Distribution()


_FINDER = _DistributionFinder()


def _where(module: ModuleType) -> str:
    spec = getattr(module, '__spec__', None)
    return getattr(module, '__file__', None) or (spec.origin if spec is not None else None) or repr(module)


def install() -> ModuleType:
    """Makes ``import natten`` (and ``natten.functional``, ``natten.context``, ...) give this drop-in.

    ``importlib.metadata`` then reports a natten distribution of version ``__version__`` as well, since some code
    (Hugging Face transformers' NAT/DiNAT) checks that natten is installed by its metadata; install the drop-in
    before importing such code.

    Never replaces a real NATTEN: when a module named ``natten`` is already imported, or one can be imported
    (``importlib.util.find_spec('natten')`` finds it), nothing is registered, a warning says so and that module is
    returned. Calling it again is harmless.

    Returns:
        The module ``import natten`` now gives.

    Raises:
        ImportError: a real NATTEN is installed but fails to import; it is not replaced (uninstall it to use the
            drop-in).
    """
    this = sys.modules[__name__]
    current = sys.modules.get('natten')
    if current is this:
        return this
    if current is not None:
        warnings.warn(f"visionattn.compat.natten.install(): a natten module is already imported from "
                      f"{_where(current)}; it is kept and visionattn's drop-in is not installed", stacklevel=2)
        return current
    spec = importlib.util.find_spec('natten')
    if spec is not None:
        origin = spec.origin or ', '.join(spec.submodule_search_locations or ()) or spec.name
        warnings.warn(f'visionattn.compat.natten.install(): a real NATTEN is installed ({origin}); it is used and '
                      "visionattn's drop-in is not installed (uninstall natten to use the drop-in)", stacklevel=2)
        try:
            return importlib.import_module('natten')
        except Exception as error:
            raise ImportError(
                f'visionattn.compat.natten.install(): the NATTEN installed at {origin} fails to import ({error!r}); '
                "visionattn does not replace an installed NATTEN: uninstall it (pip uninstall natten) to use "
                "visionattn's drop-in") from error
    sys.modules.update(_registered())
    if _FINDER not in sys.meta_path:
        sys.meta_path.append(_FINDER)
    _logger.info("visionattn.compat.natten.install(): `import natten` now gives visionattn's drop-in")
    return this


def uninstall() -> None:
    """Undoes :func:`install`: removes from ``sys.modules`` the ``natten`` entries that are this drop-in (a real
    NATTEN's are never touched) and its package metadata. Modules that already imported ``natten`` keep their
    reference."""
    for name, module in _registered().items():
        if sys.modules.get(name) is module:
            del sys.modules[name]
    if _FINDER in sys.meta_path:
        sys.meta_path.remove(_FINDER)


def __getattr__(name: str):
    if name.startswith('__'):
        raise AttributeError(name)
    raise AttributeError(
        f"natten (visionattn's drop-in) has no {name!r}: it provides NATTEN 0.17's NeighborhoodAttention1D/2D/3D, "
        'the fused na1d/na2d/na3d, natten.functional (also the two-step ops) and NATTEN\'s switches; NATTEN-only '
        'features (attention, merge_attentions, kernel configurations, the profiler) are not included')
