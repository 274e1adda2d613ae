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
