"""Pretrained weights end to end: official-layout checkpoints served from a loopback HTTP server.

No test touches the internet. The official ECANet checkpoint is re-created from what its code saves: the
torchvision ResNet names (the official model is torchvision's ResNet with an ``eca`` module per block), one
``eca.conv.weight`` of shape [1, 1, k] per block, a DataParallel ``module.`` prefix, wrapped in main.py's
``{'epoch', 'arch', 'state_dict', 'best_prec1', 'optimizer'}`` and written in the legacy (pre-1.6) format.
"""
import argparse
import contextlib
import hashlib
import http.server
import os
import threading
import time
from pathlib import Path

import pytest
import timm
import torch
import torchvision
from safetensors.torch import save_file

import visionattn  # noqa: F401
from visionattn.hub import (
    CheckpointError,
    CheckpointMismatchError,
    cache_path,
    download_weights,
    load_checkpoint_file,
)

ECA_KERNELS = {'eca_resnet18': (3, 5, 7, 7), 'eca_resnet50': (3, 5, 5, 7)}
TORCHVISION = {'eca_resnet18': torchvision.models.resnet18, 'eca_resnet50': torchvision.models.resnet50}


def _twice_at_once(call) -> list:
    """Run ``call`` in two threads at once; their results (or the exceptions they raised), in completion order."""
    results = []

    def run():
        try:
            results.append(call())
        except Exception as e:  # noqa: BLE001
            results.append(e)
    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results

def official_eca_model(name):
    """The official architecture: torchvision's ResNet with ECA applied to the last BN's output of each block."""
    torch.manual_seed(1)
    model = TORCHVISION[name]()
    for stage, k in zip((model.layer1, model.layer2, model.layer3, model.layer4), ECA_KERNELS[name]):
        for block in stage:
            block.eca = torch.nn.Module()  # ECANet's eca_layer holds its Conv1d as `conv`
            block.eca.conv = torch.nn.Conv1d(1, 1, k, padding=(k - 1) // 2, bias=False)
            last_bn = block.bn3 if hasattr(block, 'bn3') else block.bn2

            def eca(module, inputs, out, conv=block.eca.conv):  # ECANet eca_layer: GAP, Conv1d over channels, sigmoid
                y = conv(out.mean((2, 3))[:, None, :])
                return out * torch.sigmoid(y)[:, 0, :, None, None]
            last_bn.register_forward_hook(eca)
    with torch.no_grad():  # non-trivial BN statistics, so a mis-mapped buffer shows in the output
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
    return model.eval()


def official_checkpoint(model, name):
    return {
        'epoch': 100,
        'arch': name,
        'state_dict': {f'module.{k}': v for k, v in model.state_dict().items()},
        'best_prec1': torch.tensor(77.42),
        'optimizer': {'state': {}, 'param_groups': [{'lr': 1e-4, 'momentum': 0.9, 'params': [0, 1]}]},
    }


@pytest.fixture
def server(weight_server):
    return weight_server


def _sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope='module')
def official_r50():
    model = official_eca_model('eca_resnet50')
    return model, official_checkpoint(model, 'eca_resnet50')


def _serve(server, checkpoint, file_name, legacy=True):
    path = server.root / file_name
    torch.save(checkpoint, path, _use_new_zipfile_serialization=not legacy)
    return path


def test_pretrained_downloads_converts_and_loads(server, official_r50):
    official, checkpoint = official_r50
    path = _serve(server, checkpoint, 'eca_resnet50_k3557.pth.tar')
    overlay = dict(url=server.url(path.name, _sha256(path)))
    model = timm.create_model('eca_resnet50', pretrained=True, pretrained_cfg_overlay=overlay).eval()
    assert server.requests == ['/eca_resnet50_k3557.pth.tar']
    assert 'state_dict' not in model.pretrained_cfg

    # Same weights, loaded directly into the official architecture: same predictions.
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        torch.testing.assert_close(model(x), official(x), rtol=1e-4, atol=1e-4)

    # The cached file is reused; features_only and another head size convert the same checkpoint.
    features = timm.create_model('eca_resnet50', pretrained=True, features_only=True, pretrained_cfg_overlay=overlay)
    assert len(server.requests) == 1
    with torch.no_grad():
        torch.testing.assert_close(features.eval()(x)[-1], model.forward_intermediates(x)[1][-1])
    ten_way = timm.create_model('eca_resnet50', pretrained=True, num_classes=10, pretrained_cfg_overlay=overlay)
    torch.testing.assert_close(ten_way.layer4[2].se.conv.weight, official.layer4[2].eca.conv.weight)
    assert ten_way.fc.out_features == 10


def test_basic_block_checkpoint_loads(server):
    official = official_eca_model('eca_resnet18')
    path = _serve(server, official_checkpoint(official, 'eca_resnet18'), 'eca_resnet18_k3577.pth.tar', legacy=False)
    model = timm.create_model('eca_resnet18', pretrained=True, pretrained_cfg_overlay=dict(url=server.url(path.name)))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), official(x), rtol=1e-4, atol=1e-4)

    # One input channel and five classes: timm adapts the first conv and drops the classifier, nothing else.
    gray = timm.create_model('eca_resnet18', pretrained=True, in_chans=1, num_classes=5,
                             pretrained_cfg_overlay=dict(url=server.url(path.name)))
    torch.testing.assert_close(gray.conv1.weight, official.conv1.weight.sum(1, keepdim=True))
    torch.testing.assert_close(gray.layer4[1].se.conv.weight, official.layer4[1].eca.conv.weight)


def test_local_file_and_safetensors(tmp_path, official_r50):
    official, checkpoint = official_r50
    path = tmp_path / 'converted.safetensors'
    converted = {k[len('module.'):].replace('.eca.', '.se.'): v for k, v in checkpoint['state_dict'].items()}
    save_file({k: v.contiguous() for k, v in converted.items()}, str(path))
    model = timm.create_model('eca_resnet50', pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    torch.testing.assert_close(model.state_dict()['layer1.0.se.conv.weight'], official.layer1[0].eca.conv.weight)


def test_checksum_mismatch_is_refused_and_not_cached(server, official_r50):
    path = _serve(server, official_r50[1], 'eca_resnet50_k3557.pth.tar')
    bad = server.url(path.name, '0' * 64)
    with pytest.raises(CheckpointError, match='checksum mismatch'):
        timm.create_model('eca_resnet50', pretrained=True, pretrained_cfg_overlay=dict(url=bad))
    assert not (Path(torch.hub.get_dir()) / 'checkpoints' / path.name).exists()


def test_truncated_file_names_the_file(server, official_r50):
    path = _serve(server, official_r50[1], 'eca_resnet50_k3557.pth.tar', legacy=False)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r'eca_resnet50_k3557\.pth\.tar is truncated or corrupted'):
        timm.create_model('eca_resnet50', pretrained=True, pretrained_cfg_overlay=dict(url=server.url(path.name)))


def test_html_instead_of_checkpoint(server):
    (server.root / 'download').write_text('<!DOCTYPE html><html><body>Virus scan warning</body></html>')
    url = server.url('download') + '#name=eca_resnet50_k3557.pth.tar'
    with pytest.raises(CheckpointError, match='HTML page'):
        timm.create_model('eca_resnet50', pretrained=True, pretrained_cfg_overlay=dict(url=url))


def test_missing_server_file(server):
    with pytest.raises(CheckpointError, match='could not download'):
        timm.create_model('eca_resnet50', pretrained=True, pretrained_cfg_overlay=dict(url=server.url('nope.pth')))


def test_mismatched_checkpoint_lists_keys_and_loads_nothing(server):
    official = official_eca_model('eca_resnet18')
    checkpoint = official_checkpoint(official, 'eca_resnet18')
    path = _serve(server, checkpoint, 'eca_resnet18_k3577.pth.tar')
    overlay = dict(url=server.url(path.name))
    # ResNet-18 weights for ResNet-34: layer1.2, layer2.2, ... are missing and ECA kernels differ.
    with pytest.raises(CheckpointMismatchError) as err:
        timm.create_model('eca_resnet34', pretrained=True, pretrained_cfg_overlay=overlay)
    message = str(err.value)
    assert 'missing keys' in message and 'layer1.2.conv1.weight' in message
    assert 'shape mismatches' in message and 'layer2.0.se.conv.weight' in message
    assert 'eca_resnet18_k3577.pth.tar' in message

    del checkpoint['state_dict']['module.layer4.1.eca.conv.weight']
    checkpoint['state_dict']['module.layer4.1.extra.weight'] = torch.zeros(1)
    path = _serve(server, checkpoint, 'broken.pth')
    with pytest.raises(CheckpointMismatchError, match=r'(?s)missing keys \(1\): layer4\.1\.se\.conv\.weight.*'
                                                      r'unexpected keys \(1\): layer4\.1\.extra\.weight'):
        timm.create_model('eca_resnet18', pretrained=True, pretrained_cfg_overlay=dict(url=server.url(path.name)))


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return exec, (f'open({str(self.marker)!r}, "w").write("ran")',)


def test_pickled_code_is_never_run(tmp_path):
    marker = tmp_path / 'marker'
    path = tmp_path / 'evil.pth'
    torch.save({'state_dict': {'conv1.weight': torch.zeros(1)}, 'payload': _Exploit(marker)}, path)
    with pytest.raises(CheckpointError, match='evil.pth holds objects that are not plain weights'):
        load_checkpoint_file(path)
    assert not marker.exists()


def test_argparse_namespace_beside_weights_is_allowed(tmp_path):
    path = tmp_path / 'with_args.pth'
    torch.save({'model': {'w': torch.ones(2)}, 'args': argparse.Namespace(lr=0.1, arch='eca_resnet50')}, path)
    loaded = load_checkpoint_file(path)
    assert loaded['args'].arch == 'eca_resnet50'
    assert torch.equal(loaded['model']['w'], torch.ones(2))


def test_missing_file_and_no_weights():
    with pytest.raises(CheckpointError, match='does not exist'):
        load_checkpoint_file('/nonexistent/eca.pth')
    with pytest.raises(RuntimeError, match='ela_resnet50 has no pretrained weights'):
        timm.create_model('ela_resnet50', pretrained=True)


def test_eca_checkpoint_layout_conversion_is_pure_renaming(official_r50):
    from visionattn.backbones.resnet_attn import checkpoint_filter_fn
    _, checkpoint = official_r50
    model = timm.create_model('eca_resnet50', device='meta')
    converted = checkpoint_filter_fn(checkpoint, model)
    assert set(converted) == set(model.state_dict())
    assert all(converted[k.replace('module.', '').replace('.eca.', '.se.')] is v
               for k, v in checkpoint['state_dict'].items())


# -- downloads that go wrong: nothing is left in the cache, nothing hangs ------------------------------------------
class _QuietServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):  # the client hung up on a faulty response: expected here
        pass


@contextlib.contextmanager
def _faulty_server(body: bytes, mode: str):
    """A loopback server that announces ``len(body)`` bytes, then: ``close`` sends half and closes; ``stall`` sends
    1 KiB and goes silent; ``trickle`` sends a byte every 20 ms; ``silent`` never answers; ``unannounced`` sends half
    without announcing a length and closes (HTTP/1.0: the end of the connection ends the body); ``endless`` sends
    ``body`` again and again without a length; ``chunked`` sends half in a chunk that announces all and closes;
    ``redirect`` redirects to the same path. Every handler ends by itself within 5 s, and at once when the test leaves
    the block."""
    release, requests = threading.Event(), []

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            requests.append(self.path)
            if mode == 'silent':
                release.wait(5)
                return
            if mode == 'redirect':
                self.send_response(302)
                self.send_header('Location', self.path)
                self.send_header('Content-Length', '0')
                self.end_headers()
                return
            if mode == 'chunked':
                self.protocol_version = 'HTTP/1.1'  # chunked encoding needs it; the connection closes after
                self.close_connection = True
            self.send_response(200)
            if mode == 'chunked':
                self.send_header('Transfer-Encoding', 'chunked')
            elif mode not in ('unannounced', 'endless'):
                self.send_header('Content-Length', str(len(body)))
            self.end_headers()
            if mode == 'chunked':
                self.wfile.write(f'{len(body):x}\r\n'.encode() + body[:len(body) // 2])
            elif mode == 'endless':
                for _ in range(500):  # 5 s of it at most
                    if release.wait(0.01):
                        break
                    self.wfile.write(body)  # fails once the client hangs up
            if mode in ('close', 'unannounced'):
                self.wfile.write(body[:len(body) // 2])
            elif mode == 'stall':
                self.wfile.write(body[:1024])
                self.wfile.flush()
                release.wait(5)
            elif mode == 'trickle':
                for i in range(250):
                    if release.wait(0.02):
                        break
                    self.wfile.write(body[i:i + 1])
                    self.wfile.flush()
    httpd = _QuietServer(('127.0.0.1', 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f'http://127.0.0.1:{httpd.server_address[1]}', requests
    finally:
        release.set()
        httpd.shutdown()
        httpd.server_close()


def _cache_files():
    cache = Path(torch.hub.get_dir()) / 'checkpoints'
    return sorted(p.name for p in cache.iterdir()) if cache.is_dir() else []


def test_connection_closed_early_leaves_nothing_and_is_not_reused(weight_server, official_r50):
    body = _serve(weight_server, official_r50[1], 'eca.pth', legacy=False).read_bytes()
    with _faulty_server(body, 'close') as (base, requests):
        for _ in range(2):  # the second call asks the server again: no partial file was cached
            with pytest.raises(CheckpointError, match=rf'closed after {len(body) // 2} of the {len(body)} bytes'):
                timm.create_model('eca_resnet50', pretrained=True, pretrained_cfg_overlay=dict(url=f'{base}/eca.pth'))
            assert _cache_files() == []
        assert requests == ['/eca.pth', '/eca.pth']


@pytest.mark.parametrize('mode', ['silent', 'stall', 'trickle'])
def test_a_stalled_server_times_out(weight_server, monkeypatch, mode):
    monkeypatch.setenv('VISIONATTN_DOWNLOAD_TIMEOUT', '0.4')
    with _faulty_server(b'\x80\x02' + bytes(64 << 10), mode) as (base, _):
        start = time.monotonic()
        with pytest.raises(CheckpointError, match='timed out' if mode == 'silent' else 'stalled'):
            download_weights(f'{base}/w.pth', progress=False)
        assert time.monotonic() - start < 3
    assert _cache_files() == []


def test_a_json_body_is_not_cached(weight_server):
    (weight_server.root / 'eca.pth').write_text('{"error": "download quota exceeded"}')
    with pytest.raises(CheckpointError, match=r'eca\.pth returned 36 bytes that are not a checkpoint .*quota'):
        timm.create_model('eca_resnet50', pretrained=True,
                          pretrained_cfg_overlay=dict(url=weight_server.url('eca.pth')))
    assert _cache_files() == []


def test_a_cached_file_is_checked_against_the_known_sha256(weight_server, official_r50):
    official, checkpoint = official_r50
    path = _serve(weight_server, checkpoint, 'eca_resnet50_k3557.pth.tar')
    cached = Path(torch.hub.get_dir()) / 'checkpoints' / path.name
    cached.parent.mkdir(parents=True)
    damaged = bytearray(path.read_bytes())
    damaged[len(damaged) // 2:len(damaged) // 2 + 8192] = bytes(8192)  # legacy format: no CRC would tell
    cached.write_bytes(damaged)
    overlay = dict(url=weight_server.url(path.name, _sha256(path)))
    model = timm.create_model('eca_resnet50', pretrained=True, pretrained_cfg_overlay=overlay)
    assert weight_server.requests == ['/' + path.name]  # downloaded again, not reused
    assert _sha256(cached) == _sha256(path)
    torch.testing.assert_close(model.layer4[2].conv3.weight, official.layer4[2].conv3.weight)

    # When the server's copy is wrong too: a clear failure and no file where the complete one is expected.
    path.write_bytes(damaged)
    cached.write_bytes(damaged)
    with pytest.raises(CheckpointError, match='checksum mismatch'):
        timm.create_model('eca_resnet50', pretrained=True, pretrained_cfg_overlay=overlay)
    assert _cache_files() == []


def test_a_cached_file_without_known_sha256_is_checked_too(weight_server, official_r50):
    path = _serve(weight_server, official_r50[1], 'eca.pth', legacy=False)
    cache = Path(torch.hub.get_dir()) / 'checkpoints'
    cache.mkdir(parents=True)
    (cache / 'eca.pth').write_bytes(path.read_bytes()[:path.stat().st_size // 2])  # left by an older download
    overlay = dict(url=weight_server.url('eca.pth'))
    timm.create_model('eca_resnet50', pretrained=True, pretrained_cfg_overlay=overlay)
    assert weight_server.requests == ['/eca.pth']
    # Downloaded without a known digest, its sha256 is kept beside it and checked on reuse.
    assert (cache / 'eca.pth.sha256').read_text() == f'{_sha256(path)}  eca.pth\n'
    damaged = bytearray((cache / 'eca.pth').read_bytes())
    damaged[-100] ^= 0xFF  # in the zip's central directory
    (cache / 'eca.pth').write_bytes(damaged)
    timm.create_model('eca_resnet50', pretrained=True, pretrained_cfg_overlay=overlay)
    assert weight_server.requests == ['/eca.pth', '/eca.pth']
    timm.create_model('eca_resnet50', pretrained=True, pretrained_cfg_overlay=overlay)
    assert len(weight_server.requests) == 2


def _one_model_per_family():
    from visionattn.zoo import family
    first = {}
    for name in visionattn.list_models(adopted=False):
        first.setdefault(family(name), name)
    return sorted(first.values())


@pytest.mark.parametrize('name', _one_model_per_family())
@pytest.mark.parametrize('kwargs,match', [
    (dict(num_classes=-1), 'num_classes=-1'),
    (dict(drop_path_rate=2.0), 'drop_path_rate=2.0'),
    (dict(drop_rate=-0.1), 'drop_rate=-0.1'),
    (dict(pretrained='Ture'), "pretrained='Ture'"),
    (dict(pretrained=True, pretrained_cfg_overlay=dict(file='')), 'is empty'),
])
def test_build_refuses_values_taken_silently(name, kwargs, match):
    # Issue 21: these built a model (num_classes=-1 returned features, 'Ture' was taken as True, an empty file fell
    # back to downloading) or failed deep inside bernoulli_ (drop_path_rate 2.0).
    with pytest.raises(ValueError, match=match):
        timm.create_model(name, **kwargs)


def test_cache_dir_is_honoured(weight_server, official_r50, tmp_path):
    # Issue 22: create_model(..., cache_dir=X) went to torch hub's folder for the zoo's own weights.
    path = _serve(weight_server, official_r50[1], 'eca.pth', legacy=False)
    cache = tmp_path / 'my_cache'
    overlay = dict(url=weight_server.url(path.name))
    timm.create_model('eca_resnet50', pretrained=True, cache_dir=cache, pretrained_cfg_overlay=overlay)
    assert (cache / 'eca.pth').read_bytes() == path.read_bytes()
    assert _cache_files() == []  # nothing in torch hub's folder
    timm.create_model('eca_resnet50', pretrained=True, cache_dir=cache, pretrained_cfg_overlay=overlay)
    assert weight_server.requests == ['/eca.pth']  # reused from there


def test_offline_message_names_the_file_and_where_it_goes(weight_server, official_r50, tmp_path):
    # Issue 22: offline, the error said only that the URL could not be reached.
    url = weight_server.url('missing.pth') + '#name=eca_resnet50_k3557.pth.tar&size=1234'
    cache = tmp_path / 'offline_cache'
    with pytest.raises(CheckpointError) as error:
        timm.create_model('eca_resnet50', pretrained=True, cache_dir=cache, pretrained_cfg_overlay=dict(url=url))
    message = str(error.value)
    assert 'could not download' in message
    assert 'eca_resnet50_k3557.pth.tar, 1234 bytes' in message
    assert 'pretrained_cfg_overlay=dict(file="/path/to/eca_resnet50_k3557.pth.tar")' in message
    assert str(cache / 'eca_resnet50_k3557.pth.tar') in message
    # The way out works: the file put where the message says loads without a server.
    torch.save(official_r50[1], cache / 'eca_resnet50_k3557.pth.tar')
    timm.create_model('eca_resnet50', pretrained=True, cache_dir=cache, pretrained_cfg_overlay=dict(
        url=weight_server.url('missing.pth') + '#name=eca_resnet50_k3557.pth.tar'))


def test_a_recorded_size_is_checked(weight_server, official_r50):
    path = _serve(weight_server, official_r50[1], 'eca.pth', legacy=False)
    size = path.stat().st_size
    with pytest.raises(CheckpointError, match=f'size mismatch .* expected {size + 1} bytes, got {size}'):
        download_weights(weight_server.url('eca.pth') + f'#size={size + 1}', progress=False)
    assert _cache_files() == []
    assert download_weights(weight_server.url('eca.pth') + f'#size={size}', progress=False).stat().st_size == size


def test_numpy_objects_beside_the_weights_are_skipped_not_built(tmp_path):
    # Issue 22: a checkpoint with numpy objects (an older engine checkpoint's history, an official best_acc) was
    # refused whole; now only its tensors are read: the numpy objects become inert placeholders, never built.
    import numpy as np

    from visionattn.hub import SkippedObject
    official = official_eca_model('eca_resnet18')
    checkpoint = official_checkpoint(official, 'eca_resnet18')
    checkpoint.update(best_prec1=np.float64(70.9), history=np.arange(5.0), rng=np.random.get_state())
    path = tmp_path / 'with_numpy.pth'
    torch.save(checkpoint, path)
    loaded = load_checkpoint_file(path)
    assert isinstance(loaded['best_prec1'], SkippedObject) and isinstance(loaded['history'], SkippedObject)
    assert isinstance(loaded['rng'][1], SkippedObject) and loaded['rng'][0] == 'MT19937'
    model = timm.create_model('eca_resnet18', pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    torch.testing.assert_close(model.layer4[1].se.conv.weight, official.layer4[1].eca.conv.weight)
    # Other globals are still refused.
    torch.save({'state_dict': {}, 'payload': _Exploit(tmp_path / 'marker')}, path)
    with pytest.raises(CheckpointError, match='not plain weights'):
        load_checkpoint_file(path)


def test_an_engine_checkpoint_points_to_publish(tmp_path):
    official = official_eca_model('eca_resnet18')
    path = tmp_path / 'epoch_6.pth'
    torch.save({'meta': {'epoch': 6}, 'message_hub': {}, 'optimizer': {},
                'state_dict': {f'classifier.{k}': v for k, v in official.state_dict().items()}}, path)
    with pytest.raises(CheckpointMismatchError, match=r'tools/publish\.py CONFIG CHECKPOINT OUT_DIR'):
        timm.create_model('eca_resnet18', pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))


def test_a_fine_tuned_classifier_that_fits_is_loaded(tmp_path):
    # Adversarial probe: a checkpoint fine-tuned for 10 classes, loaded into a 10-class model from a file, lost its
    # classifier (timm drops it when the class count differs from the cfg's 1000) with only an INFO log.
    model = timm.create_model('eca_resnet18', num_classes=10)
    path = tmp_path / 'fine_tuned.safetensors'
    save_file(model.state_dict(), str(path))
    loaded = timm.create_model('eca_resnet18', num_classes=10, pretrained=True,
                               pretrained_cfg_overlay=dict(file=str(path)))
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], tensor, rtol=0, atol=0, msg=name)
    # another class count still takes the body and leaves the new classifier initialised
    other = timm.create_model('eca_resnet18', num_classes=5, pretrained=True,
                              pretrained_cfg_overlay=dict(file=str(path)))
    torch.testing.assert_close(other.conv1.weight, model.conv1.weight)
    assert other.fc.weight.shape == (5, 512)


def test_wrong_dtypes_and_non_tensors_are_mismatches(tmp_path):
    # Adversarial probe: int8 or bool tensors of the right shapes loaded as float weights; a numpy array stored as
    # a weight failed with an AttributeError from the shape check.
    import numpy as np
    model = timm.create_model('eca_resnet18')
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    weights['conv1.weight'] = weights['conv1.weight'].to(torch.int8)
    path = tmp_path / 'int8.pth'
    torch.save(weights, path)
    with pytest.raises(CheckpointMismatchError, match='conv1.weight: checkpoint dtype torch.int8 vs model'):
        timm.create_model('eca_resnet18', pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    weights['conv1.weight'] = np.zeros((64, 3, 7, 7), dtype=np.float32)
    torch.save(weights, path)
    with pytest.raises(CheckpointMismatchError, match='conv1.weight: checkpoint holds a SkippedObject, not a tensor'):
        timm.create_model('eca_resnet18', pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))


def test_the_reader_follows_the_content_and_bad_paths_are_named(tmp_path):
    # Adversarial probe: safetensors bytes under a name without the extension (a download URL without one) were
    # read by torch.load and reported as corrupted; a directory was 'missing'; an empty file had an empty reason.
    path = tmp_path / 'weights'
    save_file({'w': torch.arange(3.)}, str(path))
    torch.testing.assert_close(load_checkpoint_file(path)['w'], torch.arange(3.))
    with pytest.raises(CheckpointError, match='is a directory'):
        load_checkpoint_file(tmp_path)
    empty = tmp_path / 'empty.pth'
    empty.touch()
    with pytest.raises(CheckpointError, match=r'is empty \(0 bytes\)'):
        load_checkpoint_file(empty)


def test_a_cache_file_name_cannot_leave_the_cache_folder(weight_server, tmp_path):
    # Adversarial probe: #name=../x.pth named a file outside the cache folder; one that failed the cache check was
    # deleted there ("downloading it again"), whatever it was. Other odd names failed with bare OSErrors.
    (weight_server.root / 'w.pth').write_bytes(b'<html>not this</html>')
    victim = tmp_path / 'notes.pth'
    victim.write_text('a file of the user, not a checkpoint')
    cache = tmp_path / 'cache'
    for fragment, why in (('name=../notes.pth', 'it is a path'), ('name=..', 'it names a folder'),
                          ('name=a%00b.pth', 'control characters'), ('name=' + 'x' * 300 + '.pth', 'longer than'),
                          ('sha256=abc', 'not a sha256 digest')):
        with pytest.raises(ValueError, match=f'#{fragment.split("=")[0]}=.*{why}'):
            download_weights(weight_server.url('w.pth') + '#' + fragment, cache_dir=cache, progress=False)
    assert victim.read_text() == 'a file of the user, not a checkpoint'
    assert weight_server.requests == []
    # a URL path that cannot name a file gets a name made from the URL
    assert cache_path('http://host/..', cache).parent == cache and cache_path('http://host/..').name != '..'


def test_a_download_cut_short_without_an_announced_length_is_not_cached(weight_server, tmp_path):
    # Adversarial probe: a torch legacy-format file (no CRCs) from a server that announced no length and closed
    # early passed every check, went into the cache with a digest vouching for it, and failed to load on every call.
    import io
    buffer = io.BytesIO()
    torch.save({'state_dict': {'w': torch.randn(4096)}}, buffer, _use_new_zipfile_serialization=False)
    body = buffer.getvalue()
    cache = tmp_path / 'cache'
    with _faulty_server(body, 'unannounced') as (base, requests):
        for _ in range(2):
            with pytest.raises(CheckpointError, match=r'download of .*w\.pth is incomplete or damaged: the server '
                                                      r'announced no length'):
                download_weights(f'{base}/w.pth', cache_dir=cache, progress=False)
            assert sorted(p.name for p in cache.iterdir()) == []
        assert len(requests) == 2


def test_a_cached_download_that_does_not_read_is_removed(weight_server):
    # Such a file left in the cache (by an older version) is taken out once it fails to load, and fetched again.
    official = official_eca_model('eca_resnet18')
    path = _serve(weight_server, official_checkpoint(official, 'eca_resnet18'), 'eca18.pth')
    cache = Path(torch.hub.get_dir()) / 'checkpoints'
    cache.mkdir(parents=True)
    (cache / 'eca18.pth').write_bytes(path.read_bytes()[:path.stat().st_size // 2])
    (cache / 'eca18.pth.sha256').write_text(f'{_sha256(cache / "eca18.pth")}  eca18.pth\n')
    overlay = dict(url=weight_server.url('eca18.pth'))
    with pytest.raises(CheckpointError, match='truncated or corrupted.*\n.*removed from the cache'):
        timm.create_model('eca_resnet18', pretrained=True, pretrained_cfg_overlay=overlay)
    assert _cache_files() == [] and weight_server.requests == []
    model = timm.create_model('eca_resnet18', pretrained=True, pretrained_cfg_overlay=overlay)
    assert weight_server.requests == ['/eca18.pth']
    torch.testing.assert_close(model.layer4[1].se.conv.weight, official.layer4[1].eca.conv.weight)


@pytest.mark.parametrize('errno_name', ['ENOSPC', 'EACCES', 'EROFS'])
def test_a_cache_folder_that_cannot_be_written_is_named(weight_server, official_r50, monkeypatch, tmp_path,
                                                        errno_name):
    # Adversarial probe: a full, read-only or foreign cache folder failed with the bare OSError of the temporary
    # file, naming neither the cache folder nor the way out (another cache_dir).
    import errno

    import visionattn.hub as hub
    fetch = hub._fetch

    def fetch_then_fail(url, dst, *args):
        fetch(url, dst, *args)
        raise OSError(getattr(errno, errno_name), os.strerror(getattr(errno, errno_name)), str(dst))
    monkeypatch.setattr(hub, '_fetch', fetch_then_fail)
    path = _serve(weight_server, {'w': torch.ones(3)}, 'w.pth', legacy=False)
    cache = tmp_path / 'cache'
    with pytest.raises(CheckpointError, match=rf'could not write the download of .*w\.pth into the cache folder '
                                              rf'{cache}: {os.strerror(getattr(errno, errno_name))}.*cache_dir='):
        download_weights(weight_server.url(path.name), cache_dir=cache, progress=False)
    assert list(cache.iterdir()) == []


def test_threads_writing_the_same_digest_do_not_collide(tmp_path, monkeypatch):
    # Adversarial probe: two threads downloading the same file wrote its digest through one temporary name (the
    # process id alone): the second rename found it gone and that download failed with FileNotFoundError.
    import threading

    import visionattn.integrity as integrity
    path = tmp_path / 'w.pth'
    path.write_bytes(b'weights')
    both_written, replace = threading.Barrier(2, timeout=10), os.replace

    def replace_together(src, dst):
        both_written.wait()  # both temporaries are written before either is renamed
        replace(src, dst)
    monkeypatch.setattr(integrity.os, 'replace', replace_together)

    digest = _sha256(path)
    assert _twice_at_once(lambda: integrity.write_digest(path)) == [digest, digest]
    assert integrity.read_digest(path) == _sha256(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ['w.pth', 'w.pth.sha256']


def test_partial_downloads_left_by_killed_writers_are_removed(weight_server, tmp_path):
    # Reliability gap: a download killed by SIGKILL (or a crash) runs no clean-up, and its hidden temporary file stayed
    # in the cache for good, one more per kill. A later download of the same name removes those whose writer is gone
    # from this host or that are a day old, and never one that a live process or thread may still be writing.
    import subprocess
    import sys

    import visionattn.hub as hub
    _serve(weight_server, {'w': torch.ones(3)}, 'w.pth', legacy=False)
    cache = tmp_path / 'cache'
    cache.mkdir()
    killed = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])
    killed.kill()
    killed.wait()
    alive = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])
    stop = threading.Event()
    writer_thread = threading.Thread(target=stop.wait, args=(10,), daemon=True)
    writer_thread.start()
    here, elsewhere, day = hub._host_tag(), 'f' * 12, 24 * 3600
    removed = {
        f'.w.pth.{here}.{killed.pid}.1.part': 0,  # its process was killed
        f'.w.pth.{elsewhere}.{killed.pid}.2.part': 2 * day,  # another host's, untouched for two days
        f'.w.pth.{killed.pid}.3.part': 2 * day,  # named as before the host tag, two days old
    }
    kept = {
        f'.w.pth.{here}.{alive.pid}.1.part': 0,  # a live process of this host
        f'.w.pth.{here}.{os.getpid()}.{writer_thread.ident}.part': 0,  # another live thread of this process
        f'.w.pth.{elsewhere}.{killed.pid}.1.part': 0,  # another host's: its process ids mean nothing here
        f'.w.pth.{killed.pid}.4.part': 0,  # named as before the host tag, recent
        f'.other.pth.{here}.{killed.pid}.1.part': 0,  # another file's (cleaned by its own download)
    }
    try:
        for name, age in {**removed, **kept}.items():
            (cache / name).write_bytes(b'partial')
            os.utime(cache / name, (time.time() - age, time.time() - age))
        download_weights(weight_server.url('w.pth'), cache_dir=cache, progress=False)
    finally:
        alive.kill()
        alive.wait()
        stop.set()
    assert sorted(p.name for p in cache.iterdir()) == sorted([*kept, 'w.pth', 'w.pth.sha256'])
    assert all((cache / name).read_bytes() == b'partial' for name in kept)


def test_a_hung_dns_lookup_times_out(weight_server, monkeypatch, tmp_path):
    # Reliability gap: urlopen's timeout covers the socket but not socket.getaddrinfo before it, so a resolver that
    # never answered hung the download for good.
    import socket

    from visionattn.hub import DownloadError
    release, lookup = threading.Event(), socket.getaddrinfo
    port = weight_server.httpd.server_address[1]

    def getaddrinfo(host, *args, **kwargs):
        if host == 'hung.resolver.test':
            release.wait(5)
            raise socket.gaierror(socket.EAI_AGAIN, 'Temporary failure in name resolution')
        return lookup('127.0.0.1' if host == 'weights.test' else host, *args, **kwargs)
    monkeypatch.setattr(socket, 'getaddrinfo', getaddrinfo)
    cache = tmp_path / 'cache'
    try:
        start = time.monotonic()
        with pytest.raises(DownloadError, match=rf'could not download http://hung\.resolver\.test:{port}/w\.pth: timed '
                                                r'out looking up hung\.resolver\.test: no answer within 0\.3 s'):
            download_weights(f'http://hung.resolver.test:{port}/w.pth', cache_dir=cache, progress=False, timeout=0.3)
        assert time.monotonic() - start < 1.5
    finally:
        release.set()
    assert list(cache.iterdir()) == []
    # a name that resolves downloads as before, through the same bounded lookup
    _serve(weight_server, {'w': torch.ones(3)}, 'w.pth', legacy=False)
    assert download_weights(f'http://weights.test:{port}/w.pth', cache_dir=cache, progress=False).is_file()
    assert weight_server.requests == ['/w.pth']


# -- downloads and extractions under attack: what went wrong before, and what already held --------------------------
@pytest.mark.parametrize('value', ['0', '-1', 'nan', 'inf', 'soon'])
def test_a_timeout_that_is_not_a_positive_number_of_seconds_is_refused(weight_server, monkeypatch, tmp_path, value):
    # Adversarial probe: VISIONATTN_DOWNLOAD_TIMEOUT=0 made the socket non-blocking ("Operation now in progress"),
    # -1 and nan failed in the socket with "Timeout value out of range" / "Invalid value NaN", inf with an
    # OverflowError about time_t: none named the setting.
    _serve(weight_server, {'w': torch.ones(3)}, 'w.pth', legacy=False)
    monkeypatch.setenv('VISIONATTN_DOWNLOAD_TIMEOUT', value)
    with pytest.raises(ValueError, match=rf"VISIONATTN_DOWNLOAD_TIMEOUT='{value}' is not a positive number of "
                                         r'seconds'):
        download_weights(weight_server.url('w.pth'), cache_dir=tmp_path / 'cache', progress=False)
    assert weight_server.requests == [] and not (tmp_path / 'cache').exists()
    monkeypatch.delenv('VISIONATTN_DOWNLOAD_TIMEOUT')
    with pytest.raises(ValueError, match=r'timeout=0 is not a positive number of seconds'):
        download_weights(weight_server.url('w.pth'), cache_dir=tmp_path / 'cache', progress=False, timeout=0)


def test_a_body_longer_than_the_recorded_size_is_cut_off(weight_server, tmp_path):
    # Adversarial probe: a server that sent more than the URL's #size= (another file, or a body without end and
    # without a length) was read to its end, filling the disk, before the size check refused it.
    cache = tmp_path / 'cache'
    with _faulty_server(b'\x80\x02' + bytes(64 << 10), 'endless') as (base, _):
        start = time.monotonic()
        with pytest.raises(CheckpointError, match=r'size mismatch for .*w\.pth: expected 1000 bytes .*, the server '
                                                  r'sent more'):
            download_weights(f'{base}/w.pth#size=1000', cache_dir=cache, progress=False)
        assert time.monotonic() - start < 2
    assert list(cache.iterdir()) == []


@pytest.mark.parametrize('mode,match', [
    ('redirect', r'could not download .*w\.pth: HTTP Error 302: .*infinite loop'),
    ('chunked', r'download of .*w\.pth failed after \d+ bytes: IncompleteRead'),
])
def test_a_redirect_loop_or_a_chunked_body_cut_short_fails_clearly(weight_server, tmp_path, mode, match):
    # Held already (kept as a guard): urllib stops a redirect loop, and a chunked body that ends early is an error.
    cache = tmp_path / 'cache'
    with _faulty_server(b'\x80\x02' + bytes(4096), mode) as (base, requests):
        with pytest.raises(CheckpointError, match=match):
            download_weights(f'{base}/w.pth', cache_dir=cache, progress=False)
    assert list(cache.iterdir()) == [] and 0 < len(requests) <= 10


def test_empty_files_are_never_taken_for_checkpoints(weight_server, tmp_path):
    # Held already (kept as a guard): a zero-byte cache entry is fetched again; a zero-byte answer is refused.
    good = _serve(weight_server, {'w': torch.ones(3)}, 'w.pth', legacy=False)
    (weight_server.root / 'e.pth').write_bytes(b'')
    cache = tmp_path / 'cache'
    cache.mkdir()
    (cache / 'w.pth').write_bytes(b'')
    assert download_weights(weight_server.url('w.pth'), cache_dir=cache, progress=False).read_bytes() == \
        good.read_bytes()
    with pytest.raises(CheckpointError, match=r'e\.pth returned 0 bytes that are not a checkpoint'):
        download_weights(weight_server.url('e.pth'), cache_dir=cache, progress=False)
    assert sorted(p.name for p in cache.iterdir()) == ['w.pth', 'w.pth.sha256']


def test_two_downloads_of_one_file_at_once_both_succeed(weight_server, tmp_path, monkeypatch):
    # Held already (kept as a guard): each writer has its own temporary file, and the renames are atomic.
    import visionattn.hub as hub
    good = _serve(weight_server, {'w': torch.randn(1000)}, 'w.pth', legacy=False)
    fetch, both_fetched = hub._fetch, threading.Barrier(2, timeout=10)

    def fetch_together(*args):
        out = fetch(*args)
        both_fetched.wait()  # both bodies are in their temporary files before either is moved into place
        return out
    monkeypatch.setattr(hub, '_fetch', fetch_together)
    cache = tmp_path / 'cache'

    results = _twice_at_once(lambda: download_weights(weight_server.url('w.pth'), cache_dir=cache, progress=False))
    assert results == [cache / 'w.pth'] * 2 and len(weight_server.requests) == 2
    assert (cache / 'w.pth').read_bytes() == good.read_bytes()
    assert sorted(p.name for p in cache.iterdir()) == ['w.pth', 'w.pth.sha256']


def _release(folder: Path, member: bytes, name: str = 'release.zip') -> Path:
    """A release archive holding ``release/model_final.pth``."""
    import zipfile
    with zipfile.ZipFile(folder / name, 'w') as archive:
        archive.writestr('release/model_final.pth', member)
    return folder / name


def _legacy_bytes(checkpoint) -> bytes:
    import io
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer, _use_new_zipfile_serialization=False)  # no CRCs of its own
    return buffer.getvalue()


def test_an_unpacked_member_is_checked_when_loaded_on_its_own(tmp_path):
    # Reliability gap: a legacy-format member unpacked from a release had nothing beside it to check it by, so once
    # its bytes changed, loading the unpacked file by its path gave wrong weights without a word.
    from visionattn.hub import CheckpointCorruptedError, extract_checkpoint
    unpacked = extract_checkpoint(_release(tmp_path, _legacy_bytes({'w': torch.zeros(4096)})))
    damaged = bytearray(unpacked.read_bytes())
    damaged[-100] ^= 0xFF  # inside the tensor's bytes
    unpacked.write_bytes(damaged)
    with pytest.raises(CheckpointCorruptedError, match=r'model_final\.pth is corrupted: its sha256'):
        load_checkpoint_file(unpacked)
    # through extract_checkpoint it is unpacked again, digest and all
    assert torch.equal(load_checkpoint_file(extract_checkpoint(tmp_path / 'release.zip'))['w'], torch.zeros(4096))


def test_partial_extractions_left_by_killed_writers_are_removed(tmp_path, monkeypatch):
    # Reliability gap: an extraction killed midway left its hidden temporary file (as large as the checkpoint) in the
    # folder for good. It is named like a download's now and cleaned the same way; one that fails midway leaves
    # nothing, and nothing where the complete file is expected.
    import subprocess
    import sys
    import zipfile

    import visionattn.hub as hub
    from visionattn.hub import extract_checkpoint
    archive = _release(tmp_path, _legacy_bytes({'w': torch.ones(3)}))
    folder = tmp_path / 'release'
    folder.mkdir()
    read = zipfile.ZipExtFile.read

    def read_then_die(self, *args):
        read(self, *args)
        raise KeyboardInterrupt
    monkeypatch.setattr(zipfile.ZipExtFile, 'read', read_then_die)
    with pytest.raises(KeyboardInterrupt):
        extract_checkpoint(archive)
    assert list(folder.iterdir()) == []
    monkeypatch.undo()

    killed = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])
    killed.kill()
    killed.wait()
    alive = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])
    here, day = hub._host_tag(), 24 * 3600
    removed = {
        f'.model_final.pth.{here}.{killed.pid}.1.part': 0,  # its process was killed
        f'.model_final.pth.{killed.pid}.part': 2 * day,  # named as extractions were before, two days old
    }
    kept = {
        f'.model_final.pth.{here}.{alive.pid}.1.part': 0,  # a live process of this host
        f'.model_final.pth.{alive.pid}.part': 0,  # named as before, recent (judged by age alone)
    }
    try:
        for name, age in {**removed, **kept}.items():
            (folder / name).write_bytes(b'partial')
            os.utime(folder / name, (time.time() - age, time.time() - age))
        assert extract_checkpoint(archive) == folder / 'model_final.pth'
    finally:
        alive.kill()
        alive.wait()
    assert sorted(p.name for p in folder.iterdir()) == sorted([*kept, 'model_final.pth', 'model_final.pth.sha256'])
    assert torch.equal(load_checkpoint_file(folder / 'model_final.pth')['w'], torch.ones(3))


def test_two_extractions_of_one_archive_at_once_both_succeed(tmp_path, monkeypatch):
    # Reliability gap: threads of one process unpacked through one temporary name (the process id alone): one moved
    # the other's file into place, possibly while it was still being written, and the other failed with
    # FileNotFoundError.
    from visionattn.hub import extract_checkpoint
    member = _legacy_bytes({'w': torch.arange(1000.)})
    archive = _release(tmp_path, member)
    both_written, replace = threading.Barrier(2, timeout=10), os.replace

    def replace_together(src, dst):
        if str(src).endswith('.part'):
            both_written.wait()  # both temporaries are written before either is renamed
        replace(src, dst)
    monkeypatch.setattr(os, 'replace', replace_together)

    results = _twice_at_once(lambda: extract_checkpoint(archive))
    target = tmp_path / 'release' / 'model_final.pth'
    assert results == [target] * 2
    assert target.read_bytes() == member
    assert sorted(p.name for p in target.parent.iterdir()) == ['model_final.pth', 'model_final.pth.sha256']


def test_a_member_shorter_than_the_archive_records_is_refused(tmp_path):
    # Adversarial probe: a member whose data ends before the size its archive records (the CRC-32 covers only the
    # data) was unpacked and returned as complete, and unpacked again on every call (the size never matched).
    import struct

    from visionattn.hub import CheckpointCorruptedError, extract_checkpoint
    member = _legacy_bytes({'w': torch.ones(100)})
    archive = _release(tmp_path, member)
    raw = bytearray(archive.read_bytes())
    struct.pack_into('<I', raw, raw.find(b'PK\x03\x04') + 22, len(member) + 100)  # local header's size
    struct.pack_into('<I', raw, raw.find(b'PK\x01\x02') + 24, len(member) + 100)  # central directory's
    archive.write_bytes(raw)
    with pytest.raises(CheckpointCorruptedError, match=rf'release/model_final\.pth unpacks to {len(member)} bytes '
                                                       rf'\(.*\), the archive records {len(member) + 100} bytes'):
        extract_checkpoint(archive)
    assert list((tmp_path / 'release').iterdir()) == []


def test_a_folder_that_cannot_take_the_unpacked_file_is_named(tmp_path, monkeypatch):
    # Adversarial probe: a read-only or full folder (a shared read-only cache holding the archive) failed with the
    # bare OSError of the temporary file, naming neither the archive nor the way out.
    import errno

    import visionattn.hub as hub
    from visionattn.hub import extract_checkpoint
    archive = _release(tmp_path, _legacy_bytes({'w': torch.ones(3)}))
    real_open = open

    def read_only(file, mode='r', *args, **kwargs):
        if 'w' in mode:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(file))
        return real_open(file, mode, *args, **kwargs)
    monkeypatch.setattr(hub, 'open', read_only, raising=False)
    with pytest.raises(CheckpointError, match=rf'could not unpack release/model_final\.pth of {archive} into '
                                              rf'{tmp_path / "release"}: {os.strerror(errno.EROFS)}.*out_dir='):
        extract_checkpoint(archive)
    assert list((tmp_path / 'release').iterdir()) == []
    # unpacked before, it is taken from there without writing
    monkeypatch.undo()
    unpacked = extract_checkpoint(archive)
    monkeypatch.setattr(hub, 'open', read_only, raising=False)
    assert extract_checkpoint(archive) == unpacked


def test_urls_that_differ_only_in_their_query_are_cached_apart(weight_server, tmp_path):
    # Adversarial probe: 'get.php?id=1' and 'get.php?id=2' (two files of a download script) shared the cache file
    # get.php: the second was taken from the cache as the first, without a request and, lacking a sha256, unchecked.
    _serve(weight_server, {'w': torch.ones(3)}, 'get.php', legacy=False)
    cache = tmp_path / 'cache'
    first = download_weights(weight_server.url('get.php?id=1'), cache_dir=cache, progress=False)
    second = download_weights(weight_server.url('get.php?id=2'), cache_dir=cache, progress=False)
    assert first != second and weight_server.requests == ['/get.php?id=1', '/get.php?id=2']
    # a path that names a weight file keeps its name whatever the query (Dropbox's ?dl=1), and a digest is lowercase
    digest = 'AB' * 32
    assert cache_path(f'https://host/w.pth?dl=1#sha256={digest}', cache) == cache / 'w.pth'
    from visionattn.hub import weight_file_facts
    assert weight_file_facts(f'https://host/w.pth?dl=1#sha256={digest}')['sha256'] == 'ab' * 32


def test_a_cache_dir_that_is_a_file_or_a_broken_link_is_named(weight_server, tmp_path):
    # Adversarial probe: a cache_dir that is a file failed with a bare NotADirectoryError of the temporary file's
    # clean-up (which replaced the cache error); a broken symbolic link said only "File exists".
    _serve(weight_server, {'w': torch.ones(3)}, 'w.pth', legacy=False)
    (tmp_path / 'a_file').write_text('x')
    for cache in (tmp_path / 'a_file', tmp_path / 'a_file' / 'sub'):
        with pytest.raises(CheckpointError, match=rf'into the cache folder {cache}: .*\({tmp_path / "a_file"} is a '
                                                  r'file, not a folder\).*cache_dir='):
            download_weights(weight_server.url('w.pth'), cache_dir=cache, progress=False)
    (tmp_path / 'link').symlink_to(tmp_path / 'gone')
    with pytest.raises(CheckpointError, match=rf'\({tmp_path / "link"} is a symbolic link to {tmp_path / "gone"}, '
                                              r'which does not exist\)'):
        download_weights(weight_server.url('w.pth'), cache_dir=tmp_path / 'link', progress=False)
    (tmp_path / 'gone').mkdir()  # followed once it leads somewhere
    assert download_weights(weight_server.url('w.pth'), cache_dir=tmp_path / 'link', progress=False).is_file()


def test_a_cache_dir_under_the_home_folder_is_expanded(weight_server, tmp_path, monkeypatch):
    # Adversarial probe: cache_dir='~/weights' was taken literally: the download went to a folder named '~' in the
    # working directory, and the next run from elsewhere downloaded it again.
    _serve(weight_server, {'w': torch.ones(3)}, 'w.pth', legacy=False)
    (tmp_path / 'home').mkdir()
    (tmp_path / 'cwd').mkdir()
    monkeypatch.setenv('HOME', str(tmp_path / 'home'))
    monkeypatch.chdir(tmp_path / 'cwd')
    path = download_weights(weight_server.url('w.pth'), cache_dir='~/weights', progress=False)
    assert path == tmp_path / 'home' / 'weights' / 'w.pth' and path.is_file()
    assert list((tmp_path / 'cwd').iterdir()) == []
