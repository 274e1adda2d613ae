"""The zoo: visionattn's own families, the timm families it adopts, and the published facts about each.

visionattn registers its models with timm and never re-registers a name timm has; the adopted families
(``ADOPTED``) are timm's own models, listed here so that the zoo table and the task heads see one list.
"""
import fnmatch
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional
from urllib.parse import urlsplit

import timm
from timm.models import get_pretrained_cfg, is_model, model_entrypoint

__all__ = [
    'ADOPTED', 'PaperFacts', 'register_paper_facts', 'paper_facts', 'list_models', 'is_adopted', 'family',
    'weight_source', 'zoo_rows', 'render_markdown',
]

# timm families the zoo adopts instead of re-implementing (timm's code is kept as it is): pattern -> family name.
ADOPTED = {
    'efficientvit_m*': 'EfficientViT-M (timm)',
    'mambaout_*': 'MambaOut (timm)',
    'ecaresnet*': 'ECA-ResNet-D/T (timm)',
    'fasternet_*': 'FasterNet (timm)',
}


@dataclass(frozen=True)
class PaperFacts:
    """What the paper and the official code say about one model.

    Attributes:
        family: Display name of the family.
        params_m: Parameters in millions as the paper's table prints them.
        gflops: FLOPs in G as the paper's table prints them (papers print multiply-adds as "FLOPs").
        top1: ImageNet-1k top-1 (%) the paper or official README reports for the released weights.
        reference_params: Exact parameter count of the official implementation (sum over ``parameters()``),
            the figure the zoo's count must match; None where no official implementation exists.
        reference_source: Where ``reference_params`` comes from.
        counting: How the paper counted, where it differs from ``parameters()`` / multiply-adds.
    """
    family: str
    params_m: Optional[float] = None
    gflops: Optional[float] = None
    top1: Optional[float] = None
    reference_params: Optional[int] = None
    reference_source: str = ''
    counting: str = ''


_PAPER_FACTS: Dict[str, PaperFacts] = {}


def register_paper_facts(facts: Dict[str, PaperFacts]) -> None:
    """Record the paper facts of models a family module registers (called at the module's import)."""
    _PAPER_FACTS.update(facts)


def paper_facts(model_name: str) -> Optional[PaperFacts]:
    """The recorded facts for an architecture name (a pretrained tag after '.' is ignored)."""
    return _PAPER_FACTS.get(model_name.split('.')[0])


def _is_ours(model_name: str) -> bool:
    return is_model(model_name) and model_entrypoint(model_name).__module__.startswith('visionattn.')


def is_adopted(model_name: str) -> bool:
    """True for a timm model that the zoo adopts (it is timm's, not re-registered by visionattn)."""
    name = model_name.split('.')[0]
    return not _is_ours(name) and is_model(name) and any(fnmatch.fnmatch(name, p) for p in ADOPTED)


def family(model_name: str) -> str:
    """The family's display name."""
    facts = paper_facts(model_name)
    if facts is not None:
        return facts.family
    name = model_name.split('.')[0]
    return next((f for p, f in ADOPTED.items() if fnmatch.fnmatch(name, p)), '')


def list_models(pattern: str = '*', adopted: bool = True, pretrained: bool = False) -> List[str]:
    """Names in the zoo matching ``pattern``: visionattn's own, then (``adopted=True``) the adopted timm ones.

    Args:
        pattern: fnmatch wildcard on the architecture name.
        adopted: Include the timm families the zoo adopts.
        pretrained: Only names with weights, as ``arch.tag``.
    """
    names = timm.list_models(pattern, pretrained=pretrained)
    ours = [n for n in names if _is_ours(n.split('.')[0])]
    if not adopted:
        return ours
    return ours + [n for n in names if is_adopted(n)]


def weight_source(model_name: str) -> str:
    """Where ``pretrained=True`` takes the weights from, in a few words: those of ``model_name``'s tag, or the
    default weights for an architecture name."""
    cfg = get_pretrained_cfg(model_name, allow_unregistered=False)
    if cfg is None or not cfg.has_weights:
        return 'none'
    if cfg.hf_hub_id:
        return f'HF hub ({cfg.hf_hub_id})'
    host = urlsplit(cfg.url if isinstance(cfg.url, str) else cfg.url[0]).hostname or ''
    return 'official, Google Drive' if 'google' in host else f'official, {host}'


def _fmt(value: Optional[float], spec: str = '.2f', footnote: str = '') -> str:
    if value is None:
        return '—'
    if spec == 'gflops':  # sub-GFLOP models (EfficientViT-M) need a third decimal
        spec = '.3f' if value < 1 else '.2f'
    return format(value, spec) + footnote


def zoo_rows(names: Iterable[str], progress: bool = False) -> List[Dict[str, str]]:
    """One row per model: measured params/GMACs beside the paper's figures, the weights, their licence and their
    Hugging Face hub id (empty where the weights are not on the hub)."""
    from tqdm import tqdm

    from .profile import measure  # builds models; keep ``import visionattn`` light

    rows = []
    for name in tqdm(list(names), desc='measuring', unit='model', disable=not progress):
        measured = measure(name)
        facts = paper_facts(name) or PaperFacts(family(name))
        cfg = get_pretrained_cfg(name)
        footnote = ' ¹' if facts.counting else ''  # the paper counted another way: the README's footnote ¹
        rows.append({
            'model': name,
            'family': facts.family,
            'params (M)': _fmt(measured.params_m),
            'paper params (M)': _fmt(facts.params_m, footnote=footnote),
            'GMACs': _fmt(measured.gmacs, 'gflops'),
            'paper GFLOPs': _fmt(facts.gflops, 'gflops', footnote),
            'top-1': _fmt(facts.top1),
            'input': 'x'.join(str(s) for s in measured.input_size[1:]),
            'weights': weight_source(name),
            'licence': cfg.license if cfg is not None and cfg.license else '—',
            # where timm.create_model('hf-hub:<id>') finds the weights; empty until they are published there
            'hf_hub_id': (cfg.hf_hub_id or '') if cfg is not None else '',
        })
    return rows


def render_markdown(rows: List[Dict[str, str]]) -> str:
    """A GitHub markdown table of :func:`zoo_rows`."""
    header = list(rows[0])
    lines = ['| ' + ' | '.join(header) + ' |', '|' + '|'.join('---' for _ in header) + '|']
    lines += ['| ' + ' | '.join(row[h] for h in header) + ' |' for row in rows]
    return '\n'.join(lines) + '\n'


# Adopted timm families: the figures their official READMEs print. FasterNet: JierunChen/FasterNet README;
# EfficientViT-M: microsoft/Cream EfficientViT/classification/README.md @74fb8c5 (FLOPs printed in M);
# MambaOut: yuweihao/MambaOut README @923b110 (MACs).
_FASTERNET, _EFFICIENTVIT, _MAMBAOUT = 'FasterNet (timm)', 'EfficientViT-M (timm)', 'MambaOut (timm)'
register_paper_facts({
    'efficientvit_m0': PaperFacts(_EFFICIENTVIT, 2.3, 0.079, 63.2),
    'efficientvit_m1': PaperFacts(_EFFICIENTVIT, 3.0, 0.167, 68.4),
    'efficientvit_m2': PaperFacts(_EFFICIENTVIT, 4.2, 0.201, 70.8),
    'efficientvit_m3': PaperFacts(_EFFICIENTVIT, 6.9, 0.263, 73.4),
    'efficientvit_m4': PaperFacts(_EFFICIENTVIT, 8.8, 0.299, 74.3),
    'efficientvit_m5': PaperFacts(_EFFICIENTVIT, 12.4, 0.522, 77.1),
    'mambaout_femto': PaperFacts(_MAMBAOUT, 7.3, 1.2, 78.9),
    'mambaout_kobe': PaperFacts(_MAMBAOUT, 9.1, 1.5, 80.0),
    'mambaout_tiny': PaperFacts(_MAMBAOUT, 26.5, 4.5, 82.7),
    'mambaout_small': PaperFacts(_MAMBAOUT, 48.5, 9.0, 84.1),
    'mambaout_base': PaperFacts(_MAMBAOUT, 84.8, 15.8, 84.2),
    'fasternet_t0': PaperFacts(_FASTERNET, 3.9, 0.34, 71.9),
    'fasternet_t1': PaperFacts(_FASTERNET, 7.6, 0.85, 76.2),
    'fasternet_t2': PaperFacts(_FASTERNET, 15.0, 1.90, 78.9),
    'fasternet_s': PaperFacts(_FASTERNET, 31.1, 4.55, 81.3),
    'fasternet_m': PaperFacts(_FASTERNET, 53.5, 8.72, 83.0),
    'fasternet_l': PaperFacts(_FASTERNET, 93.4, 15.49, 83.5),
})
# timm's own trainings and variants, with no paper table to quote: listed so the zoo table says so.
register_paper_facts({name: PaperFacts('ECA-ResNet-D/T (timm)', counting='timm-trained; no paper figures') for name in (
    'ecaresnet26t', 'ecaresnet50d', 'ecaresnet50d_pruned', 'ecaresnet50t', 'ecaresnet101d', 'ecaresnet101d_pruned',
    'ecaresnet200d', 'ecaresnet269d', 'ecaresnetlight')})
register_paper_facts({name: PaperFacts(_MAMBAOUT, counting="timm's variant; no paper figures") for name in (
    'mambaout_small_rw', 'mambaout_base_short_rw', 'mambaout_base_tall_rw', 'mambaout_base_wide_rw',
    'mambaout_base_plus_rw')})

