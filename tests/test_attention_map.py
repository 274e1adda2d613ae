"""tools/attention_map.py: the query's attention weights of every attention family in the zoo, checked against what the
layers compute (weights times values give each layer's attention output at the query), and the tool's refusals."""
import json

import pytest
import timm
import torch
from conftest import load_tool

import visionattn
from visionattn.layers.bra import pad_to_regions

pytestmark = pytest.mark.tools


def _tool():
    return load_tool('attention_map')


def _families_with_attention_maps():
    """The smallest zoo model of each family that has layers the tool draws (parametrised over the registry)."""
    from visionattn.zoo import family
    tool = _tool()
    chosen = {}
    for name in visionattn.list_models(adopted=False):
        with torch.device('meta'):
            model = timm.create_model(name)
        if not any(isinstance(m, tool.ATTENTION_LAYERS) for m in model.modules()):
            continue
        params = sum(p.numel() for p in model.parameters())
        if family(name) not in chosen or params < chosen[family(name)][1]:
            chosen[family(name)] = (name, params)
    return sorted(name for name, _ in chosen.values())


def _values(module, x):
    """(values [H, W, heads, d], the layer's attention output [H, W, C] before its output projection) of ``x``."""
    tool = _tool()
    outputs = []
    projection = module.wo if isinstance(module, tool.BiLevelRoutingAttention) else module.proj
    hook = projection.register_forward_pre_hook(lambda mod, args: outputs.append(args[0][0]))
    with torch.no_grad():
        module(x)
    hook.remove()
    return outputs[0]


@pytest.mark.parametrize('size', [224, 72])  # 72: NA maps smaller than the window and BiFormer maps padded
@pytest.mark.parametrize('name', _families_with_attention_maps())
def test_weights_times_values_give_each_layers_attention_output(name, size):
    tool = _tool()
    torch.manual_seed(0)
    model = timm.create_model(name).eval()
    image = torch.randn(1, 3, size, size)
    query = (0.3, 0.7)
    inputs = {}
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, tool.ATTENTION_LAYERS)]
    hooks = [m.register_forward_pre_hook(lambda mod, args, n=n: inputs.__setitem__(n, args[0])) for n, m in layers]
    maps = tool.attention_maps(model, image, query)
    for hook in hooks:
        hook.remove()
    assert [m.name for m in maps] == [n for n, _ in layers]
    assert not any(m.keep_routing or m.last_routing is not None for _, m in layers
                   if isinstance(m, tool.BiLevelRoutingAttention))  # the model is left as it was
    for (layer_name, module), layer in zip(layers, maps):
        weights = layer.weights
        shares = weights.sum((1, 2))  # below 1 by the share of pad tokens, which the detail names
        assert (weights >= 0).all() and (shares <= 1 + 1e-5).all()
        assert ('on padding' in layer.detail) == (1 - float(shares.mean()) > tool.PADDING_SHOWN)
        x = inputs[layer_name][:1]
        qy, qx = layer.query
        heads = weights.shape[0]
        with torch.no_grad():
            if layer.kind == 'neighborhood':
                values = module.qkv(x)[0].unflatten(-1, (3, heads, -1))[..., 2, :, :]
                pad = module.qkv.bias.unflatten(-1, (3, heads, -1))[2]  # what a pad token holds
                context = torch.zeros(())
                assert (weights[0] > 0).sum() <= module.kernel_size ** 2  # within the window
            elif layer.kind == 'routing':
                padded = pad_to_regions(x, module.n_win)
                values = module.qkv(padded)[0][..., 2 * module.qk_dim:].unflatten(-1, (heads, -1))
                pad = module.qkv.qkv.bias[2 * module.qk_dim:].unflatten(-1, (heads, -1))
                # the local context enhancement, a depthwise conv of v, is added to the attention output
                context = module.lepe(values.flatten(-2).permute(2, 0, 1)[None])[0, :, qy, qx]
                values = values[:x.shape[1], :x.shape[2]]
                assert len(layer.routed) == module.topk
            else:
                values = module.qkv(x)[0].unflatten(-1, (3, heads, -1))[..., 2, :, :]
                pad = torch.zeros(values.shape[-2:])
                context = module.lepe(x.permute(0, 3, 1, 2))[0, :, qy, qx]  # the LePE of the block's input
            expected = _values(module, x)[qy, qx]
            got = torch.einsum('hyx,yxhd->hd', weights, values.float()) + (1 - shares)[:, None] * pad.float()
            got = got.flatten() + context
        torch.testing.assert_close(got, expected.float(), atol=1e-4, rtol=1e-4, msg=f'{name} {layer_name}')


def test_the_tool_draws_a_figure_and_writes_the_weights(tmp_path, capsys):
    out = tmp_path / 'figures' / 'dinat.png'
    maps = _tool().main(['dinat_mini', '--query', '0.25', '0.5', '--out', str(out)])
    assert out.stat().st_size > 10_000 and 'RANDOM weights' in capsys.readouterr().out
    record = json.loads(out.with_suffix('.json').read_text())
    # per stage the last layer of each kind: DiNAT's stages alternate undilated and dilated windows (the last stage,
    # 7x7 tokens, has only undilated ones)
    assert [layer['name'] for layer in record['layers']] == [m.name for m in maps] == [
        'levels.0.blocks.1.attn', 'levels.0.blocks.2.attn', 'levels.1.blocks.2.attn', 'levels.1.blocks.3.attn',
        'levels.2.blocks.4.attn', 'levels.2.blocks.5.attn', 'levels.3.blocks.4.attn']
    assert record['layers'][0]['detail'] == '7x7 window, dilation 8' and record['query'] == [0.25, 0.5]
    assert not list(out.parent.glob('.*tmp*'))


def test_checkpoints_load_strictly_and_a_training_checkpoint_points_to_publish(tmp_path, capsys):
    torch.manual_seed(1)
    weights = timm.create_model('nat_mini').state_dict()
    torch.save(weights, tmp_path / 'nat_mini.pth')
    maps = _tool().main(['nat_mini', '--checkpoint', str(tmp_path / 'nat_mini.pth'), '--layers',
                         'levels.0.blocks.0.attn', '--out', str(tmp_path / 'map.png')])
    assert len(maps) == 1 and 'nat_mini.pth' in capsys.readouterr().out
    torch.save({'meta': {'epoch': 1}, 'message_hub': {}, 'optimizer': {},
                'state_dict': {f'classifier.{k}': v for k, v in weights.items()}}, tmp_path / 'epoch_1.pth')
    with pytest.raises(SystemExit, match=r'(?s)Unexpected key.*tools/publish\.py CONFIG CHECKPOINT OUT_DIR'):
        _tool().main(['nat_mini', '--checkpoint', str(tmp_path / 'epoch_1.pth'), '--out', str(tmp_path / 'x.png')])


@pytest.mark.parametrize('args, message', [
    (['resnet18'], 'has no attention layer this tool draws'),
    (['nat_mini', '--layers', 'levels.0.blocks.9.attn'], 'no attention layer named levels.0.blocks.9.attn'),
    (['nat_mini', '--query', '1.5', '0.5'], 'not a fraction of the image'),
    (['nat_mini', '--out', 'map.jpg'], 'must end in .png'),
    (['nat_mini', '--pretrained', '--checkpoint', 'x.pth'], 'pass one'),
    (['nat_mini', '--image', 'missing.jpg'], 'is not a file'),
    (['no_such_model'], 'Unknown model'),
])
def test_refusals_name_the_problem(args, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as raised:
        _tool().main(args)
    assert message in f'{raised.value}{capsys.readouterr().err}'
    assert not list(tmp_path.glob('*.png'))
