"""tools/detection_flops.py on a tiny FocusDETR: the deformable-attention formula, the parts adding up, and the
sparsified encoder costing less than the dense one."""
import importlib.util
from pathlib import Path

import pytest
import torch
from visionattn.heads.detection import FocusDETR

pytestmark = pytest.mark.tools

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(num_classes=3, num_queries=20, embed_dims=64, decoder=dict(num_layers=2, ffn_dims=128))
ENCODER = dict(num_layers=2, ffn_dims=128, topk_sa=16)


def _tool():
    spec = importlib.util.spec_from_file_location('detection_flops', ROOT / 'tools' / 'detection_flops.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_counts_add_up_and_sparsification_saves():
    tool = _tool()
    torch.manual_seed(0)
    focus = tool.count_focus_detr(FocusDETR('resnet18', encoder=dict(ENCODER, cascade_ratios=(1.0, 0.5)), **TINY),
                                  64, 96)
    dense = tool.count_focus_detr(FocusDETR('resnet18', encoder=dict(ENCODER, focus_rho=1.0, cascade_ratios=(1.0, 1.0)),
                                            **TINY), 64, 96)
    tokens = 8 * 12 + 4 * 6 + 2 * 3 + 1 * 2
    assert focus['tokens'] == dense['tokens'] == tokens
    keep = int(tokens * 0.5) + 1
    assert focus['updated'] == [keep, int(0.5 * keep)] and dense['updated'] == [tokens, tokens]
    # 8 heads x 4 levels x 4 points x 8 channels, 5 multiply-adds each: encoder tokens + 2 decoder layers x 20 queries
    per_query = tool.msda_macs(1, 1, 8, 4, 4, 8)
    assert per_query == 5 * 8 * 4 * 4 * 8
    assert focus['msda'] == per_query * (sum(focus['updated']) + 2 * 20)
    assert dense['msda'] == per_query * (2 * tokens + 2 * 20)
    for r in (focus, dense):
        assert r['total'] == r['dense'] + r['msda'] + r['norm'] == sum(r['parts'].values())
        assert r['msda_fvcore'] == r['msda'] * 4 // 5
    assert focus['parts']['encoder'] < dense['parts']['encoder']
    assert focus['parts']['backbone'] == dense['parts']['backbone'] > 0
    assert focus['parts']['decoder'] == dense['parts']['decoder'] > 0
