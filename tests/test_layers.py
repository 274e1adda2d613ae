import re

import pytest
import torch

from visionattn.layers import ELA_VERSIONS, EfficientLocalAttention


def _ela_by_loops(x, layer):
    """ELA written out element by element: strip means, the shared zero-padded Conv1d, GroupNorm, sigmoid."""
    weight = layer.conv.weight  # C, C/groups, k
    channels, per_group, k = weight.shape
    norm_groups = layer.norm.num_groups

    def gate(strip):  # C, L
        length = strip.shape[1]
        conv = torch.zeros_like(strip)
        for c in range(channels):
            first = (c // per_group) * per_group
            for i in range(length):
                for j in range(k):
                    src = i + j - k // 2
                    if 0 <= src < length:
                        conv[c, i] += sum(weight[c, g, j] * strip[first + g, src] for g in range(per_group))
        grouped = conv.reshape(norm_groups, -1)
        normed = (grouped - grouped.mean(1, keepdim=True)) / torch.sqrt(grouped.var(1, unbiased=False, keepdim=True)
                                                                        + layer.norm.eps)
        normed = normed.reshape(channels, length) * layer.norm.weight[:, None] + layer.norm.bias[:, None]
        return torch.sigmoid(normed)

    out = torch.empty_like(x)
    for b in range(x.shape[0]):
        gate_h = gate(x[b].mean(2))  # C, H
        gate_w = gate(x[b].mean(1))  # C, W
        out[b] = x[b] * gate_h[:, :, None] * gate_w[:, None, :]
    return out


@pytest.mark.parametrize('version', sorted(ELA_VERSIONS))
def test_ela_matches_elementwise_definition(version):
    torch.manual_seed(0)
    layer = EfficientLocalAttention(32, version=version).double()
    torch.nn.init.normal_(layer.norm.weight)
    torch.nn.init.normal_(layer.norm.bias)
    x = torch.randn(2, 32, 5, 7, dtype=torch.double)
    torch.testing.assert_close(layer(x), _ela_by_loops(x, layer))


@pytest.mark.parametrize('version, weight_shape, norm_groups', [
    ('T', (64, 1, 5), 32), ('B', (64, 1, 7), 16), ('S', (64, 8, 5), 16), ('L', (64, 8, 7), 16)])
def test_ela_versions(version, weight_shape, norm_groups):
    layer = EfficientLocalAttention(64, version=version)
    assert tuple(layer.conv.weight.shape) == weight_shape
    assert layer.conv.bias is None
    assert layer.norm.num_groups == norm_groups


def test_ela_rejects_bad_arguments():
    with pytest.raises(ValueError, match='unknown ELA version'):
        EfficientLocalAttention(64, version='X')
    with pytest.raises(ValueError, match='24 channels'):
        EfficientLocalAttention(24, version='B')  # 24 is not divisible by 16 GroupNorm groups


def test_ss2d_names_a_map_it_cannot_take():
    # Adversarial probe: a channels-first map, another channel count or a 3-D tensor failed inside in_proj or permute
    # with torch's own shape errors, and an empty map inside the depthwise conv.
    from visionattn.layers import SS2D
    layer = SS2D(8, d_state=2)
    for x, match in ((torch.randn(1, 8, 3, 5), r'channels-last \[B, H, W, C=8\].*\[1, 8, 3, 5\]'),
                     (torch.randn(3, 5, 8), r'\[B, H, W, C=8\].*\[3, 5, 8\]'),
                     (torch.randn(1, 0, 5, 8), r'map is empty.*\[1, 0, 5, 8\]')):
        with pytest.raises(ValueError, match=match):
            layer(x)
    assert layer(torch.randn(0, 3, 5, 8)).shape == (0, 3, 5, 8)  # no image: still the empty result
    traced = torch.fx.symbolic_trace(layer)  # the check stays one leaf of a traced graph
    x = torch.randn(1, 3, 5, 8)
    torch.testing.assert_close(traced(x), layer(x))


def test_layers_name_a_bad_count_at_construction():
    # Adversarial probe: a float, zero or NumPy count reached torch.zeros / torch.empty or Python's modulo and failed
    # there (TypeError / ZeroDivisionError naming no argument), or was refused at the first forward
    np = pytest.importorskip('numpy')
    from visionattn.layers import (
        SS2D,
        BiLevelRoutingAttention,
        EuclideanRelPosSelfAttention2d,
        NeighborhoodAttention2d,
        PartialConv,
        ShiftedWindowAttention,
        VMoBAAttention,
    )
    for build, match in (
            (lambda: NeighborhoodAttention2d(8, 2.0, 3), 'num_heads=2.0 must be an int >= 1'),
            (lambda: ShiftedWindowAttention(8, 0, 4), 'num_heads=0 must be an int >= 1'),
            (lambda: ShiftedWindowAttention(8, 2.0, 4), 'num_heads=2.0 must be an int >= 1'),
            (lambda: ShiftedWindowAttention(8, 2, 4.0), 'window_size=4.0 must be an int >= 1'),
            (lambda: ShiftedWindowAttention(8, 2, 4, 2.0), r'shift_size must be an int in \[0, window_size=4\)'),
            (lambda: EuclideanRelPosSelfAttention2d(8, 2.0), 'num_heads=2.0 must be an int >= 1'),
            (lambda: SS2D(8, d_state=4.0), 'd_state=4.0 must be an int >= 1'),
            (lambda: SS2D(8, dt_rank=0), 'dt_rank=0 must be an int >= 1'),
            (lambda: BiLevelRoutingAttention(8, 2, 2, 2, qk_dim=8.0), 'qk_dim=8.0 must be an int >= 1'),
            (lambda: BiLevelRoutingAttention(8, 2, 2, 2, side_dwconv=3.0), 'side_dwconv=3.0 must be an int'),
            (lambda: EfficientLocalAttention(32.0), 'channels=32.0 must be an int >= 1'),
            (lambda: PartialConv(8, 2.0), 'n_div=2.0 must be an int >= 1'),
            (lambda: VMoBAAttention(1.0), r'layer_index must be an int >= 0.*1\.0')):
        with pytest.raises(ValueError, match=match):
            build()
    # NumPy integers are the counts they hold
    x = torch.randn(1, 6, 6, 8)
    layer = BiLevelRoutingAttention(8, np.int64(2), np.int64(2), np.int64(2), side_dwconv=np.int64(3))
    assert (layer.num_heads, layer.n_win, layer.topk) == (2, 2, 2) and type(layer.topk) is int
    assert layer(x).shape == x.shape
    assert ShiftedWindowAttention(8, 2, 4, np.int64(2))(x).shape == x.shape
    assert VMoBAAttention(np.int64(4)).chunk == (4, 4)


def test_ss2d_refuses_an_even_conv():
    # Adversarial probe: an even d_conv with padding (d_conv - 1) // 2 shrank the map by one, and the scan failed at
    # the first forward on a shape mismatch naming neither the conv nor its size
    from visionattn.layers import SS2D
    for d_conv in (2, 4):
        with pytest.raises(ValueError, match=f'd_conv={d_conv} must be an odd int'):
            SS2D(8, d_state=2, d_conv=d_conv)
    for d_conv in (0, 1, 3):  # no conv, or a "same" one
        assert SS2D(8, d_state=2, d_conv=d_conv)(torch.randn(1, 3, 5, 8)).shape == (1, 3, 5, 8)


def test_partial_spatial_attention_refuses_a_map_count_it_cannot_apply():
    # Adversarial probe: num_maps=2 over 4 gated channels passed the divisibility check and failed in the product of
    # the first forward (a [B, 2, H, W] gate against [B, 4, H, W] channels)
    from visionattn.layers import PartialSpatialAttention
    with pytest.raises(ValueError, match='num_maps=2 must be 1 or the 4 gated channels'):
        PartialSpatialAttention(8, num_maps=2)
    x = torch.randn(2, 8, 3, 5)
    for maps in (1, 4):
        assert PartialSpatialAttention(8, num_maps=maps)(x).shape == x.shape


def test_shifted_window_attention_names_a_map_it_cannot_take():
    # Adversarial probe: a channels-first map or another width failed in the qkv matmul, an empty map in Python's
    # modulo (ZeroDivisionError)
    from visionattn.layers import ShiftedWindowAttention
    layer = ShiftedWindowAttention(8, 2, 4, 2)
    for x in (torch.randn(1, 8, 5, 5), torch.randn(1, 5, 5, 6), torch.randn(1, 0, 5, 8), torch.randn(5, 5, 8)):
        shape = re.escape(str(list(x.shape)))
        with pytest.raises(ValueError, match=r'channels-last \[B, H, W, C=8\] map, got shape ' + shape):
            layer(x)
    assert layer(torch.randn(0, 5, 6, 8)).shape == (0, 5, 6, 8)


def test_position_embedding_refuses_a_mask_that_is_not_bool():
    # Adversarial probe: an integer 0/1 padding mask went through ~ as a bitwise not (~1 = -2, ~0 = 255 for uint8),
    # so the embedding came out silently wrong (1.5 off) instead of an error
    from visionattn.layers import PositionEmbeddingSine
    embed = PositionEmbeddingSine(8)
    mask = torch.zeros(2, 3, 4, dtype=torch.bool)
    mask[1, :, 3] = True
    assert embed(mask).shape == (2, 16, 3, 4)
    for bad in (mask.to(torch.uint8), mask.long(), mask.float(), mask[0]):
        with pytest.raises(TypeError, match=rf'bool padding mask \[B, H, W\].*got {bad.dtype}'):
            embed(bad)
