"""Checkpoint integrity on every load: bytes flipped inside a weight fail, naming the file and the damaged member,
in the hub loader (a local ``file=``), the engine's loader (tools/test.py, --resume) and tools/convert.py, instead of
loading as wrong weights. Zip CRC-32s for torch's format, a ``.sha256`` beside the file where one was written
(tools/convert.py writes it), else the safetensors header."""
import importlib.util
import zipfile
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

import visionattn  # noqa: F401
from visionattn.hub import CheckpointError, extract_checkpoint, load_checkpoint_file
from visionattn.integrity import (
    CheckpointCorruptedError,
    digest_path,
    read_digest,
    replace_with_digest,
    sha256_file,
    verify_checkpoint,
    write_digest,
)

ROOT = Path(__file__).resolve().parents[1]


def _tool():
    spec = importlib.util.spec_from_file_location('convert_tool', ROOT / 'tools' / 'convert.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _flip_largest_member(path: Path, nbytes: int = 8192) -> str:
    """Invert ``nbytes`` in the middle of the largest zip member's data (a weight's storage); returns its name."""
    with zipfile.ZipFile(path) as archive:
        info = max(archive.infolist(), key=lambda i: i.file_size)
    data = bytearray(path.read_bytes())
    local = info.header_offset
    start = local + 30 + int.from_bytes(data[local + 26:local + 28], 'little') + int.from_bytes(
        data[local + 28:local + 30], 'little')  # after the local header, its name and its extra field
    middle = start + info.file_size // 2 - nbytes // 2
    data[middle:middle + nbytes] = bytes(b ^ 0xFF for b in data[middle:middle + nbytes])
    path.write_bytes(bytes(data))
    return info.filename


def _eca_weights():
    torch.manual_seed(0)
    return timm.create_model('eca_resnet18', num_classes=10).state_dict()


def test_flipped_bytes_in_a_weight_name_the_file_and_member(tmp_path):
    path = tmp_path / 'epoch_3.pth'
    torch.save({'state_dict': {'classifier.fc.weight': torch.randn(256, 256), 'classifier.fc.bias': torch.zeros(256)},
                'meta': {'epoch': 3}}, path)
    assert verify_checkpoint(path) == 'crc32'
    member = _flip_largest_member(path)
    assert member == 'epoch_3/data/0'
    with pytest.raises(CheckpointCorruptedError, match=r"epoch_3\.pth is corrupted: zip member 'epoch_3/data/0' "
                                                       r'\(the bytes of tensor storage 0\) fails its CRC-32 check'):
        load_checkpoint_file(path)
    assert torch.load(path, weights_only=True)['meta'] == {'epoch': 3}  # what torch alone would have accepted


def test_pretrained_local_file_is_verified(tmp_path):
    path = tmp_path / 'eca_resnet18.pth'
    torch.save(_eca_weights(), path)
    timm.create_model('eca_resnet18', num_classes=10, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    member = _flip_largest_member(path)
    with pytest.raises(CheckpointCorruptedError, match=rf"eca_resnet18\.pth is corrupted: zip member '{member}'"):
        timm.create_model('eca_resnet18', num_classes=10, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))


def test_engine_loader_refuses_a_corrupted_checkpoint(tmp_path):
    from visionattn.engine.runner import load_training_checkpoint  # what tools/test.py and --resume load with
    path = tmp_path / 'epoch_1.pth'
    torch.save({'meta': {'epoch': 1}, 'state_dict': _eca_weights(), 'message_hub': {}}, path)
    assert load_training_checkpoint(str(path))['meta'] == {'epoch': 1}
    _flip_largest_member(path)
    with pytest.raises(CheckpointCorruptedError, match=r'epoch_1\.pth is corrupted: .*fails its CRC-32 check'):
        load_training_checkpoint(str(path))


def test_convert_refuses_corrupted_input_and_writes_a_digest(tmp_path):
    source, out = tmp_path / 'official.pth', tmp_path / 'out' / 'eca.safetensors'
    torch.save({'state_dict': _eca_weights()}, source)
    summary = _tool().main(['eca_resnet18', str(source), str(out), '--num-classes', '10'])
    assert read_digest(out) == summary['sha256'] == sha256_file(out)
    assert digest_path(out).read_text() == f'{summary["sha256"]}  eca.safetensors\n'  # sha256sum -c format

    # The written file's digest is checked on every load: a flipped block in a safetensors file is found.
    data = bytearray(out.read_bytes())
    data[len(data) // 2] ^= 0x01
    out.write_bytes(bytes(data))
    with pytest.raises(CheckpointCorruptedError, match=r'eca\.safetensors is corrupted: its sha256 is .* but '
                                                       r'eca\.safetensors\.sha256 beside it recorded'):
        load_checkpoint_file(out)

    # A corrupted input is refused and nothing is written.
    member = _flip_largest_member(source)
    with pytest.raises(SystemExit, match=rf"official\.pth is corrupted: zip member '{member}'"):
        _tool().main(['eca_resnet18', str(source), str(tmp_path / 'bad.safetensors'), '--num-classes', '10'])
    assert not (tmp_path / 'bad.safetensors').exists()


def test_safetensors_without_digest_is_checked_by_its_header(tmp_path):
    path = tmp_path / 'w.safetensors'
    save_file({'a': torch.randn(4, 4), 'b': torch.randn(3)}, str(path))
    assert verify_checkpoint(path) == 'safetensors header'
    raw = path.read_bytes()
    (tmp_path / 'long.safetensors').write_bytes(raw + bytes(16))
    with pytest.raises(CheckpointCorruptedError, match=r'long\.safetensors is truncated or corrupted: its header '
                                                       r'describes 76 bytes of tensor data, the file holds 92'):
        load_checkpoint_file(tmp_path / 'long.safetensors')
    header_end = 8 + int.from_bytes(raw[:8], 'little')
    edited = raw[:8] + raw[8:header_end].replace(b'[4,4]', b'[4,5]') + raw[header_end:]
    (tmp_path / 'shape.safetensors').write_bytes(edited)
    with pytest.raises(CheckpointCorruptedError, match=r"tensor 'a' \(F32 \[4, 5\]\) has 64 bytes"):
        load_checkpoint_file(tmp_path / 'shape.safetensors')
    write_digest(path)
    assert verify_checkpoint(path) == 'sha256'


def test_legacy_format_is_checked_by_its_digest(tmp_path):
    path = tmp_path / 'legacy.pth'
    torch.save({'w': torch.randn(1000)}, path, _use_new_zipfile_serialization=False)
    assert verify_checkpoint(path) == 'nothing'  # no CRCs in torch's legacy format
    write_digest(path)
    data = bytearray(path.read_bytes())
    data[-200] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointCorruptedError, match=r'legacy\.pth is corrupted: its sha256'):
        load_checkpoint_file(path)
    digest_path(path).write_text('not a digest\n')
    with pytest.raises(CheckpointCorruptedError, match=r'legacy\.pth\.sha256 is malformed'):
        load_checkpoint_file(path)


def test_replace_with_digest_and_crc_free_files(tmp_path):
    tmp, path = tmp_path / 'x.pth.tmp', tmp_path / 'x.pth'
    torch.save({'w': torch.ones(3)}, tmp)
    write_digest(path, '0' * 64)  # stale, from an older file of that name
    digest = replace_with_digest(tmp, path)
    assert not tmp.exists() and read_digest(path) == digest == sha256_file(path)
    assert torch.equal(load_checkpoint_file(path)['w'], torch.ones(3))

    config = pytest.importorskip('torch.utils.serialization').config
    previous = config.save.compute_crc32
    config.save.compute_crc32 = False  # torch then records CRC 0 for every member: not a corruption
    try:
        torch.save({'w': torch.ones(3)}, tmp_path / 'nocrc.pth')
    finally:
        config.save.compute_crc32 = previous
    assert torch.equal(load_checkpoint_file(tmp_path / 'nocrc.pth')['w'], torch.ones(3))


def test_truncated_and_not_a_file(tmp_path):
    path = tmp_path / 'cut.pth'
    torch.save({'w': torch.randn(1000)}, path)
    path.write_bytes(path.read_bytes()[:3000])
    with pytest.raises(CheckpointCorruptedError, match=r'cut\.pth is truncated or corrupted'):
        load_checkpoint_file(path)
    with pytest.raises(CheckpointError, match='does not exist'):
        verify_checkpoint(tmp_path / 'none.pth')


def test_a_damaged_unpacked_release_member_is_unpacked_again(tmp_path):
    torch.save({'w': torch.randn(1000)}, tmp_path / 'model_final.pth')
    with zipfile.ZipFile(tmp_path / 'release.zip', 'w') as z:
        z.write(tmp_path / 'model_final.pth', 'release/model_final.pth')
    unpacked = extract_checkpoint(tmp_path / 'release.zip')
    good = unpacked.read_bytes()
    _flip_largest_member(unpacked, 64)  # same size, other bytes
    assert extract_checkpoint(tmp_path / 'release.zip') == unpacked and unpacked.read_bytes() == good


def test_empty_directory_and_header_cut_files_are_named(tmp_path):
    # Adversarial probe: verify_checkpoint passed an empty file ('nothing' checked, or 'sha256' with the digest of no
    # bytes beside it), called a directory missing, and passed a .safetensors file cut inside its header, which
    # load_checkpoint_file then handed to torch.load: an uncaught SafetensorError traceback.
    empty = tmp_path / 'empty.pth'
    empty.touch()
    with pytest.raises(CheckpointError, match=r'empty\.pth is empty \(0 bytes\)'):
        verify_checkpoint(empty)
    write_digest(empty)
    with pytest.raises(CheckpointError, match='is empty'):
        verify_checkpoint(empty)
    with pytest.raises(CheckpointError, match='is a directory, not a file'):
        verify_checkpoint(tmp_path)
    whole = tmp_path / 'whole.safetensors'
    save_file({'w': torch.randn(64, 64)}, whole)
    cut = tmp_path / 'cut.safetensors'
    cut.write_bytes(whole.read_bytes()[:30])
    with pytest.raises(CheckpointCorruptedError, match=r'cut\.safetensors is truncated or corrupted'):
        verify_checkpoint(cut)
    with pytest.raises(CheckpointCorruptedError, match=r'cut\.safetensors is truncated or corrupted'):
        load_checkpoint_file(cut)
    # without the check (verify=False, as for a download already verified) the loader's own error is named too: it
    # was safetensors' uncaught SafetensorError (torch.load hands a .safetensors name to safetensors)
    for length in (4, 30):
        cut.write_bytes(whole.read_bytes()[:length])
        with pytest.raises(CheckpointCorruptedError, match=r'cut\.safetensors is truncated or corrupted'):
            load_checkpoint_file(cut, verify=False)
