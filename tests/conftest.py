import os

import pytest
import torch  # does not import triton

# Set before anything imports triton (it reads TRITON_INTERPRET when its kernels are defined): on a machine without a
# GPU Triton kernels run only in its interpreter; on one with a GPU the tests run the compiled kernels, unless
# TRITON_INTERPRET=1 is set by hand (then the CPU-interpreter tests run and the compiled-kernel tests skip).
if not torch.cuda.is_available():
    os.environ.setdefault('TRITON_INTERPRET', '1')
os.environ.setdefault('NO_ALBUMENTATIONS_UPDATE', '1')
_INTERPRETING = os.environ.get('TRITON_INTERPRET', '0') == '1'

if os.environ.get('PYTEST_XDIST_WORKER'):
    torch.set_num_threads(1)  # one thread per xdist worker: the workers already use every core


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    # Tests that run Triton kernels on CPU tensors need the interpreter; where the kernels are compiled (a GPU machine
    # by default) asking for the triton backend on CPU tensors is refused, and such a test skips instead of failing.
    try:
        return (yield)
    except Exception as error:
        from visionattn.ops.checks import BackendUnavailableError
        if _INTERPRETING or not isinstance(error, BackendUnavailableError) or 'not on a CUDA device' not in str(error):
            raise
        pytest.skip('runs Triton kernels on the CPU: needs TRITON_INTERPRET=1 (the kernels are compiled here)')


def pytest_collection_modifyitems(config, items):
    # `cuda` tests run the compiled kernels on the GPU: they skip without one, and under the interpreter.
    if not torch.cuda.is_available():
        skip_cuda = pytest.mark.skip(reason='needs a CUDA device')
    elif _INTERPRETING:
        skip_cuda = pytest.mark.skip(reason='set TRITON_INTERPRET=0 to test the compiled kernels')
    else:
        return
    for item in items:
        if 'cuda' in item.keywords:
            item.add_marker(skip_cuda)


class LoopbackServer:
    """Serves the files of ``root`` over HTTP on 127.0.0.1 and records the paths asked for."""

    def __init__(self, root):
        import functools
        import http.server
        import threading
        self.root, self.requests = root, []
        server = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                server.requests.append(self.path)
                super().do_GET()
        self.httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), functools.partial(Handler, directory=root))
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def url(self, file_name, sha256=None):
        url = f'http://127.0.0.1:{self.httpd.server_address[1]}/{file_name}'
        return url + (f'#sha256={sha256}' if sha256 else '')


@pytest.fixture
def weight_server(tmp_path):
    """A loopback server of ``tmp_path/served`` with a fresh torch hub cache: no test downloads anything."""
    served = tmp_path / 'served'
    served.mkdir()
    old_dir = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / 'hub'))
    server = LoopbackServer(served)
    yield server
    server.httpd.shutdown()
    torch.hub.set_dir(old_dir)


def load_tool(name: str):
    """A script of tools/ imported as a module (tools/ is not a package)."""
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parents[1] / 'tools' / f'{name}.py'
    spec = importlib.util.spec_from_file_location(f'{name}_tool', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _tiny_codec_model(seed: int):
    """The tiny S2LIC with its entropy coders' tables built (real bitstreams), weights drawn from ``seed``."""
    from visionattn.heads.compression.s2lic import build_s2lic
    torch.manual_seed(seed)
    model = build_s2lic('tiny').eval()
    model.update(force=True)
    return model


@pytest.fixture(scope='module')
def codec_model():
    """The tiny S2LIC with its entropy coders' tables built (real bitstreams)."""
    return _tiny_codec_model(0)


@pytest.fixture(scope='module')
def other_codec_model():
    """A tiny S2LIC of the same preset with other weights (another quality's checkpoint, say)."""
    return _tiny_codec_model(1)
