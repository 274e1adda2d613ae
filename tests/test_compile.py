"""torch.compile, torch.fx and TorchScript on neighborhood attention: the op and the NAT / DiNAT models.

- ``torch.compile(fullgraph=True)``: the op (reference path, and the Triton custom op under the interpreter) and a
  small NAT model trace into one graph, forward and backward, train (AdamW) like eager mode, and a second call at the
  same shape compiles nothing new (``error_on_recompile``).
- ``torch.fx``: the op is a leaf of the graph wherever it is called; the registered models trace and
  ``torch.jit.script`` compiles the traced graph, as timm's ``test_model_forward_fx_torchscript`` does it.
- On a GPU: nat_tiny, dinat_tiny and biformer_s under ``torch.compile(fullgraph=True)`` (inductor, bf16 autocast)
  against eager mode, for inference and an AdamW step.
"""

import pytest
import timm
import torch
from compile_testing import GraphRecorder, check_compiled_training, skip_unless_interpreting
from timm.layers import get_notrace_functions, get_notrace_modules, set_scriptable
from torch import nn
from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

import visionattn
from visionattn.ops import neighborhood_attention
from visionattn.zoo import family, paper_facts

NA_FAMILIES = ('NAT', 'DiNAT')
NA_MODELS = [n for n in visionattn.list_models(adopted=False) if family(n) in NA_FAMILIES]


def _params_m(name):
    return paper_facts(name).params_m


SMALLEST_NAT = min((n for n in NA_MODELS if family(n) == 'NAT'), key=_params_m)
# Every registered NA model; all but the smallest NAT under `slow` (DiNAT pads its dilated windows up to 56x56 at any
# input below 224, so even the smallest costs seconds on a CPU).
NA_PARAMS = [n if n == SMALLEST_NAT else pytest.param(n, marks=pytest.mark.slow) for n in NA_MODELS]


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _seeded(*shapes, seed=0, requires_grad=True):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=gen).requires_grad_(requires_grad) for s in shapes]


def _forward_backward(fn, inputs, grad_seed=7):
    out = fn(*inputs)
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(grad_seed))
    leaves = [t for t in inputs if t is not None and t.requires_grad]
    return out, torch.autograd.grad(out, leaves, grad_out)


# ----------------------------------------------------------------------------------------------------------------
# The op under torch.compile.

OP_CASES = {
    # name: (q shape, v head_dim, kwargs, with rpb)
    '2d_rpb_dilated': ((1, 9, 10, 2, 8), 8, dict(kernel_size=3, dilation=(1, 2)), True),
    '2d_causal_strided': ((1, 8, 9, 2, 8), 12, dict(kernel_size=(3, 4), stride=(1, 2), is_causal=(True, False)), False),
    '1d_rpb': ((1, 17, 2, 8), 8, dict(kernel_size=5, dilation=2), True),
}


@pytest.mark.ops
@pytest.mark.parametrize('path', ['reference', 'triton'])
@pytest.mark.parametrize('case', list(OP_CASES))
def test_op_compiles_in_one_graph_without_recompiling(path, case):
    if path == 'triton':
        skip_unless_interpreting()
    q_shape, dim_v, kwargs, with_rpb = OP_CASES[case]
    heads, n_dim = q_shape[-2], len(q_shape) - 3
    kernel = kwargs['kernel_size']
    kernel = kernel if isinstance(kernel, tuple) else (kernel,) * n_dim
    rpb_shape = (heads, *(2 * k - 1 for k in kernel))
    backend = None if path == 'reference' else 'triton'

    def attend(q, k, v, rpb, backend=backend):
        return neighborhood_attention(q, k, v, rpb=rpb, backend=backend, **kwargs)

    def reference(q, k, v, rpb):  # eager, and cheaper than the interpreter
        return attend(q, k, v, rpb, backend='reference')

    recorder = GraphRecorder('aot_eager')
    compiled = torch.compile(attend, backend=recorder, fullgraph=True)
    v_shape = (*q_shape[:-1], dim_v)
    with torch._dynamo.config.patch(error_on_recompile=True):
        for seed in (0, 1):  # the second call, new values at the same shapes, must reuse the graph
            q, k, v, rpb = _seeded(q_shape, q_shape, v_shape, rpb_shape, seed=seed)
            inputs = (q, k, v, rpb if with_rpb else None)
            out, grads = _forward_backward(compiled, inputs)
            ref_out, ref_grads = _forward_backward(reference, inputs)
            torch.testing.assert_close(out, ref_out, rtol=1e-4, atol=1e-5)
            assert len(grads) == len(ref_grads) == 3 + with_rpb
            for got, want in zip(grads, ref_grads):
                torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    assert len(recorder.graphs) == 1
    custom_op = any('visionattn.na_fwd' in t for t in recorder.targets())
    assert custom_op == (path == 'triton'), recorder.targets()


@pytest.mark.ops
def test_op_argument_errors_survive_compile():
    """Valid calls trace (the checks' messages are only formatted where they raise); an invalid call under
    torch.compile raises the same error as in eager mode."""
    q = torch.randn(1, 8, 7, 2, 4)
    for kwargs, match in ((dict(kernel_size=9), 'too small'), (dict(kernel_size=3, scale=float('nan')), 'scale'),
                          (dict(kernel_size=(3, 3, 3)), 'one per spatial axis')):
        torch._dynamo.reset()
        with pytest.raises(ValueError, match=match):
            torch.compile(lambda x: neighborhood_attention(x, x, x, **kwargs), backend='eager')(q)


@pytest.mark.ops
def test_op_is_an_fx_leaf_wherever_it_is_called():
    class Attend(nn.Module):
        def __init__(self):
            super().__init__()
            self.rpb = nn.Parameter(torch.randn(2, 5, 5))

        def forward(self, x):
            return neighborhood_attention(x, x * 2, x, 3, rpb=self.rpb) + 1

    module = Attend()
    traced = torch.fx.symbolic_trace(module)
    leaves = [n for n in traced.graph.nodes if n.op == 'call_function' and n.target is neighborhood_attention]
    assert len(leaves) == 1 and leaves[0].args[3] == 3 and leaves[0].kwargs['backend'] is None
    x = torch.randn(2, 6, 7, 2, 8)
    torch.testing.assert_close(traced(x), module(x))


# ----------------------------------------------------------------------------------------------------------------
# A small NAT / DiNAT model under torch.compile: inference, then training with AdamW.

def _small_nat():
    # The smallest registered DiNAT cut down to every path of the real models at a fraction of their cost: a dilated
    # level, maps smaller than the window (padded: levels 2 and 3 at a 64x64 input), layer scale, two heads.
    torch.manual_seed(0)
    name = min((n for n in NA_MODELS if family(n) == 'DiNAT'), key=_params_m)
    return timm.create_model(name, depths=(1, 1, 1, 1), num_heads=(1, 2, 2, 2), embed_dim=16, mlp_ratio=2,
                             layer_scale=1., dilations=((2,), (1,), (1,), (1,)), num_classes=5)


@pytest.mark.backbones
def test_small_nat_compiles_fullgraph_for_inference_and_training():
    model = _small_nat().eval()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    target = torch.tensor([1, 3])
    recorder = GraphRecorder('eager')  # inference: Dynamo's graph is the check; AOT tracing is the training's
    compiled = torch.compile(model, backend=recorder, fullgraph=True)
    with torch._dynamo.config.patch(error_on_recompile=True):
        with torch.no_grad():
            expected = model(x)
            for _ in range(2):
                torch.testing.assert_close(compiled(x), expected, rtol=1e-5, atol=1e-5)
        assert len(recorder.graphs) == 1
        torch._dynamo.reset()  # training is another graph (grad mode is part of the guards)
        recorder = GraphRecorder('aot_eager')
        compiled = torch.compile(model, backend=recorder, fullgraph=True)
        check_compiled_training(model, compiled, x, target)
    assert len(recorder.graphs) == 1


@pytest.mark.slow
@pytest.mark.backbones
def test_small_nat_compiles_with_inductor_on_the_triton_path(monkeypatch):
    """The path a GPU takes (the Triton custom op inside an inductor graph), run by the interpreter on the CPU."""
    skip_unless_interpreting()
    monkeypatch.setenv('VISIONATTN_BACKEND', 'triton')
    model = _small_nat()
    recorder = GraphRecorder('inductor')
    compiled = torch.compile(model, backend=recorder, fullgraph=True)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch._dynamo.config.patch(error_on_recompile=True):
        check_compiled_training(model, compiled, x, torch.tensor([1, 3]), tol=1e-3)
    assert len(recorder.graphs) == 1
    assert any('visionattn.na_fwd' in t for t in recorder.targets())


@pytest.mark.slow
@pytest.mark.backbones
@pytest.mark.parametrize('name', [n for n in NA_MODELS if _params_m(n) <= 30])
def test_registered_model_compiles_fullgraph(name):
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=5)
    recorder = GraphRecorder('aot_eager')
    compiled = torch.compile(model, backend=recorder, fullgraph=True)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch._dynamo.config.patch(error_on_recompile=True):
        check_compiled_training(model, compiled, x, torch.tensor([1, 3]), tol=1e-3)
    assert len(recorder.graphs) == 1


# ----------------------------------------------------------------------------------------------------------------
# torch.fx, then TorchScript of the traced graph (timm's tests/test_models.py::test_model_forward_fx_torchscript).

def _fx_model(model):
    tracer_kwargs = dict(leaf_modules=get_notrace_modules(), autowrap_functions=get_notrace_functions(),
                         param_shapes_constant=True)
    _, eval_nodes = get_graph_node_names(model, tracer_kwargs=tracer_kwargs)
    return create_feature_extractor(model, return_nodes=[eval_nodes[-1]], tracer_kwargs=tracer_kwargs)


@pytest.mark.backbones
@pytest.mark.parametrize('name', NA_PARAMS)
def test_fx_trace_then_torchscript(name):
    with set_scriptable(True):
        torch.manual_seed(0)
        model = timm.create_model(name).eval()
    fx_model = _fx_model(model)
    attention = [n for n in fx_model.graph.nodes if n.op == 'call_function' and 'neighborhood_attention' in n.name]
    assert len(attention) == sum(len(level.blocks) for level in model.levels)  # one leaf per block
    scripted = torch.jit.script(fx_model)
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        expected = model(x)
        (out,) = scripted(x).values()
    torch.testing.assert_close(out, expected)


# ----------------------------------------------------------------------------------------------------------------
# GPU: the compiled kernels inside inductor graphs, at the benchmark's settings.

@pytest.mark.cuda
@pytest.mark.parametrize('name', ['nat_tiny', 'dinat_tiny', 'biformer_s'])
def test_compiled_model_matches_eager_cuda(name):
    torch.manual_seed(0)
    model = timm.create_model(name).cuda()
    x = torch.randn(2, 3, 224, 224, device='cuda')
    target = torch.tensor([3, 7], device='cuda')

    def autocast():
        return torch.autocast('cuda', dtype=torch.bfloat16)

    model.eval()
    compiled = torch.compile(model, fullgraph=True)
    with torch.no_grad(), autocast():
        expected = model(x).float()
        with torch._dynamo.config.patch(error_on_recompile=True):
            for _ in range(2):
                out = compiled(x).float()
                # bf16: fused and unfused kernels round differently; compare against the logits' scale.
                assert (out - expected).norm() <= 2e-2 * expected.norm()
    # Training in fp32, where compiled and eager must agree closely. Under bf16 autocast they need not: BiFormer's
    # top-k routing of bf16 region logits can pick other regions when Inductor fuses the rounding differently
    # (biformer_s on an H100: gradient error 2.7e-2 in bf16, 6.4e-4 in fp32; eager against eager: 0).
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True)
    with torch._dynamo.config.patch(error_on_recompile=True):
        check_compiled_training(model, compiled, x, target, tol=5e-3)
