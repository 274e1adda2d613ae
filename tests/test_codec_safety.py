"""tools/codec.py against damaged and hostile files: per-stream checksums, header limits, legacy files, the CLI;
and against the wrong weights: unusable or unfitting checkpoints, and a file decoded with another checkpoint."""
import re
import struct
import zlib
from pathlib import Path

import pytest
import torch
from conftest import load_tool

pytestmark = pytest.mark.tools
ROOT = Path(__file__).resolve().parents[1]
MAGIC = b'VACODEC\0'
FINGERPRINT = bytes(range(8))  # forged files are refused before the weights are compared


@pytest.fixture(scope='module')
def codec():
    return load_tool('codec')


@pytest.fixture(scope='module')
def encoded(codec, codec_model):
    """(file bytes, y stream, z stream) of a 50x60 image (padded to 64x64 for coding)."""
    torch.manual_seed(1)
    base = torch.nn.functional.interpolate(torch.rand(1, 3, 8, 8), size=(64, 64), mode='bilinear')
    image = (base + 0.05 * torch.randn(1, 3, 64, 64)).clamp(0, 1)[..., :50, :60]
    strings = codec_model.compress(codec.pad_to(image, 64))['strings']
    data = codec.encode_image(codec_model, 's2lic-tiny', 3, image)
    return data, strings[0][0], strings[1][0]


class _NoDecode:
    """Stands in for the model where a file must be refused before any decoding or allocation."""

    def decompress(self, strings, shape):
        raise AssertionError(f'the decoder was reached (z shape {tuple(shape)}): the header was not checked')


def _v1(name, quality, size, z_shape, y, z):
    """A format-version-1 file: the same header without CRCs, each stream's u32 length right before its bytes."""
    return b''.join([MAGIC, struct.pack('>BB', 1, len(name)), name, struct.pack('>BHHHH', quality, *size, *z_shape),
                     struct.pack('>I', len(y)), y, struct.pack('>I', len(z)), z])


def _checksummed(version, name, fingerprint, quality, size, z_shape, y, z, y_len=None, z_len=None):
    header = b''.join([MAGIC, struct.pack('>BB', version, len(name)), name, fingerprint,
                       struct.pack('>BHHHH', quality, *size, *z_shape),
                       struct.pack('>IIII', len(y) if y_len is None else y_len, zlib.crc32(y),
                                   len(z) if z_len is None else z_len, zlib.crc32(z))])
    return header + struct.pack('>I', zlib.crc32(header)) + y + z


def _v3(name, quality, size, z_shape, y, z, y_len=None, z_len=None, fingerprint=FINGERPRINT):
    """A version-3 file with a valid header CRC, so only the field checks can refuse a forged field."""
    return _checksummed(3, name, fingerprint, quality, size, z_shape, y, z, y_len, z_len)


def _v2(name, quality, size, z_shape, y, z):
    """A version-2 file: the version-3 layout without the weights fingerprint."""
    return _checksummed(2, name, b'', quality, size, z_shape, y, z)


def _flip(data: bytes, offset: int, bit: int = 3) -> bytes:
    return data[:offset] + bytes([data[offset] ^ (1 << bit)]) + data[offset + 1:]


def test_format_version_3_layout(codec, codec_model, encoded):
    data, y, z = encoded
    fingerprint = codec.weights_fingerprint(codec_model)
    assert len(fingerprint) == 8 and data == _v3(b's2lic-tiny', 3, (50, 60), (1, 1), y, z, fingerprint=fingerprint)
    fields = codec.unpack(data)
    assert fields['version'] == 3 and fields['strings'] == [[y], [z]] and fields['z_shape'] == (1, 1)
    assert fields['fingerprint'] == fingerprint


@pytest.mark.parametrize('stream', ['y', 'z'])
@pytest.mark.parametrize('where', [0, 0.5, -1])
def test_a_flipped_bit_in_a_stream_is_detected(codec, codec_model, encoded, stream, where):
    data, y, z = encoded
    string = y if stream == 'y' else z
    start = data.index(string)
    offset = start + (len(string) - 1 if where == -1 else int(where * len(string)))
    with pytest.raises(ValueError, match=f'{stream} bitstream checksum mismatch'):
        codec.decode_bytes(codec_model, 's2lic-tiny', _flip(data, offset))


# Offsets in the version-3 header of a 's2lic-tiny' file: magic 8, version 1, name length 1, name 10, weights
# fingerprint 8, then fields.
@pytest.mark.parametrize('offset', [8 + 2 + 3, 8 + 2 + 10 + 5, 8 + 2 + 18, 8 + 2 + 18 + 2, 8 + 2 + 18 + 9 + 3, -1],
                         ids=['model name', 'weights fingerprint', 'quality', 'image height', 'y length',
                              'header CRC'])
def test_a_flipped_bit_in_the_header_is_detected(codec, encoded, offset):
    data, y, z = encoded
    if offset == -1:  # the last byte of the header CRC itself
        offset = len(data) - len(y) - len(z) - 1
    with pytest.raises(ValueError, match='header checksum mismatch'):
        codec.decode_bytes(_NoDecode(), 's2lic-tiny', _flip(data, offset, bit=0))


@pytest.mark.parametrize('size, z_shape, message', [
    ((65535, 65535), (1, 1), r'z shape field 1x1 does not match image size 65535x65535.*expected 1024x1024'),
    ((65535, 65535), (1024, 1024), r'image size field 65535x65535 .* exceeds the limit'),
    ((50, 60), (4000, 4000), r'z shape field 4000x4000 does not match image size 50x60.*expected 1x1'),
    ((0, 60), (1, 1), r'image size field 0x60: both sides must be at least 1'),
    ((130, 60), (2, 1), r'z shape field 2x1 does not match image size 130x60.*expected 3x1'),
])
@pytest.mark.parametrize('version', [1, 2, 3])
def test_forged_header_fields_are_refused_before_decoding(codec, encoded, size, z_shape, message, version):
    _, y, z = encoded
    data = {1: _v1, 2: _v2, 3: _v3}[version](b's2lic-tiny', 3, size, z_shape, y, z)
    with pytest.raises(ValueError, match=message):
        codec.decode_bytes(_NoDecode(), 's2lic-tiny', data, accept_unverified=True)


def test_pixel_limit_is_adjustable(codec, codec_model, encoded):
    data = encoded[0]
    with pytest.raises(ValueError, match=r'image size field 50x60 \(4096 pixels once padded\) exceeds the limit'):
        codec.decode_bytes(_NoDecode(), 's2lic-tiny', data, max_pixels=4095)
    assert codec.decode_bytes(codec_model, 's2lic-tiny', data, max_pixels=4096).shape == (1, 3, 50, 60)


@pytest.mark.parametrize('case', ['z not whole words', 'y empty', 'y too long', 'z too short', 'y huge'])
def test_stream_length_fields_must_match_the_bytes_present(codec, encoded, case):
    _, y, z = encoded
    body = len(y) + len(z)
    y_len, z_len, message = {
        'z not whole words': (len(y), 5, 'z length field 5: a rANS stream is whole 32-bit words, at least 8 bytes'),
        'y empty': (0, len(z), 'y length field 0'),
        'y too long': (len(y) + 4, len(z), f'stream length fields (y {len(y) + 4} + z {len(z)} bytes) do not match '
                                           f'the {body} bytes after the header'),
        'z too short': (len(y), len(z) - 4, f'(y {len(y)} + z {len(z) - 4} bytes) do not match the {body} bytes'),
        'y huge': (4000 * 4000 * 4, len(z), f'(y {4000 * 4000 * 4} + z {len(z)} bytes) do not match'),
    }[case]
    data = _v3(b's2lic-tiny', 3, (50, 60), (1, 1), y, z, y_len=y_len, z_len=z_len)
    with pytest.raises(ValueError, match=re.escape(message)):
        codec.decode_bytes(_NoDecode(), 's2lic-tiny', data)


def test_other_bad_fields(codec, encoded):
    data, y, z = encoded
    with pytest.raises(ValueError, match='model name field is not UTF-8'):
        codec.unpack(_v3(b's2lic-\xff', 3, (50, 60), (1, 1), y, z))
    with pytest.raises(ValueError, match='unsupported codec format version 4'):
        codec.unpack(MAGIC + bytes([4]) + data[len(MAGIC) + 1:])
    with pytest.raises(ValueError, match='do not match'):
        codec.unpack(data + b'\0')
    with pytest.raises(ValueError, match='truncated codec file: header checksum'):
        codec.unpack(data[:len(data) - len(y) - len(z) - 2])
    with pytest.raises(ValueError, match=r'image size \(0, 60\) does not fit the header'):
        codec.pack('s2lic-tiny', 3, (0, 60), [[y], [z]], (1, 1), FINGERPRINT)
    with pytest.raises(ValueError, match='weights fingerprint must be 8 bytes, got 4'):
        codec.pack('s2lic-tiny', 3, (50, 60), [[y], [z]], (1, 1), FINGERPRINT[:4])
    with pytest.raises(ValueError, match=r'1 <= H, W <= 65535, got \(1, 3, 1, 65600\)'):
        codec.encode_image(_NoDecode(), 's2lic-tiny', 3, torch.zeros(1, 3, 1, 65600))  # refused before compressing


def test_version_1_files_are_refused_unless_accepted_then_decode_with_a_warning(codec, codec_model, encoded):
    data, y, z = encoded
    legacy = _v1(b's2lic-tiny', 3, (50, 60), (1, 1), y, z)
    with pytest.raises(ValueError, match='version 1 has no checksums.*--accept-unverified'):
        codec.decode_bytes(codec_model, 's2lic-tiny', legacy)
    with pytest.warns(UserWarning, match='version 1 has no checksums'):
        decoded = codec.decode_bytes(codec_model, 's2lic-tiny', legacy, accept_unverified=True)
    torch.testing.assert_close(decoded, codec.decode_bytes(codec_model, 's2lic-tiny', data), rtol=0, atol=0)
    with pytest.raises(ValueError, match='truncated codec file: z bitstream'):
        codec.unpack(legacy[:-4], accept_unverified=True)
    with pytest.raises(ValueError, match='4 unexpected trailing bytes'):
        codec.unpack(legacy + b'\0' * 4, accept_unverified=True)


def test_cli_refuses_a_corrupted_file_and_writes_nothing(codec, codec_model, encoded, tmp_path, capsys):
    from PIL import Image

    ckpt, png, packed, out = (tmp_path / name for name in ('model.pth', 'in.png', 'img.bin', 'out.png'))
    torch.save(codec_model.state_dict(), ckpt)
    Image.fromarray((torch.rand(50, 60, 3) * 255).byte().numpy()).save(png)
    common = ['--ckpt', str(ckpt), '--size', 'tiny']
    assert codec.main(['encode', str(png), str(packed), *common]) == 0
    data = packed.read_bytes()
    y = codec.unpack(data)['strings'][0][0]
    packed.write_bytes(_flip(data, data.index(y) + len(y) // 2))
    assert codec.main(['decode', str(packed), str(out), *common]) == 1
    assert 'y bitstream checksum mismatch' in capsys.readouterr().err and not out.exists()
    packed.write_bytes(_v3(b's2lic-tiny', 3, (65535, 65535), (1, 1), y, b'\0' * 8))
    assert codec.main(['decode', str(packed), str(out), *common]) == 1
    assert 'z shape field 1x1' in capsys.readouterr().err and not out.exists()
    packed.write_bytes(data)
    assert codec.main(['decode', str(packed), str(out), *common]) == 0
    assert Image.open(out).size == (60, 50)


def test_version_2_files_are_refused_unless_accepted_then_decode_with_a_warning(codec, codec_model, encoded):
    data, y, z = encoded
    older = _v2(b's2lic-tiny', 3, (50, 60), (1, 1), y, z)
    with pytest.raises(ValueError, match='version 2 records no weights fingerprint.*--accept-unverified'):
        codec.decode_bytes(codec_model, 's2lic-tiny', older)
    with pytest.warns(UserWarning, match='version 2 records no weights fingerprint'):
        decoded = codec.decode_bytes(codec_model, 's2lic-tiny', older, accept_unverified=True)
    torch.testing.assert_close(decoded, codec.decode_bytes(codec_model, 's2lic-tiny', data), rtol=0, atol=0)
    with pytest.raises(ValueError, match=r'y bitstream checksum mismatch'):  # its checksums still hold
        codec.unpack(_flip(older, older.index(y)), accept_unverified=True)


# -- the weights: checkpoints that cannot be used, and files decoded with other weights -----------------------------
@pytest.fixture(scope='module')
def files(codec_model, other_codec_model, tmp_path_factory):
    """A checkpoint of codec_model, one of other_codec_model and a 50x60 PNG."""
    from PIL import Image

    folder = tmp_path_factory.mktemp('codec_weights')
    torch.save(codec_model.state_dict(), folder / 'a.pth')
    torch.save(other_codec_model.state_dict(), folder / 'b.pth')
    torch.manual_seed(2)
    Image.fromarray((torch.rand(50, 60, 3) * 255).byte().numpy()).save(folder / 'in.png')
    return folder


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and 'error: ' in err and 'Traceback' not in err, err
    return err


def test_decoding_with_other_weights_is_refused(codec, codec_model, other_codec_model, encoded):
    ours, theirs = codec.weights_fingerprint(codec_model), codec.weights_fingerprint(other_codec_model)
    assert ours != theirs
    message = f'weights fingerprint mismatch: the file was encoded with weights {ours.hex()}, the decoder has ' \
              f'{theirs.hex()}'
    with pytest.raises(ValueError, match=message):
        codec.decode_bytes(other_codec_model, 's2lic-tiny', encoded[0])
    assert codec.decode_bytes(codec_model, 's2lic-tiny', encoded[0]).shape == (1, 3, 50, 60)


def test_cli_refuses_a_file_of_other_weights_and_writes_nothing(codec, files, tmp_path, capsys):
    packed, out = tmp_path / 'img.bin', tmp_path / 'out.png'
    assert codec.main(['encode', str(files / 'in.png'), str(packed), '--ckpt', str(files / 'a.pth'),
                       '--size', 'tiny']) == 0
    capsys.readouterr()
    assert codec.main(['decode', str(packed), str(out), '--ckpt', str(files / 'b.pth'), '--size', 'tiny']) == 1
    err = _one_line_error(capsys)
    assert err.startswith(f'{packed}: error: weights fingerprint mismatch') and not out.exists()
    assert codec.main(['decode', str(packed), str(out), '--ckpt', str(files / 'a.pth'), '--size', 'tiny']) == 0
    assert out.exists()


def _corrupt(source: Path, dst: Path, tensor: torch.Tensor) -> Path:
    """``source`` with 64 bytes inside ``tensor``'s storage flipped: the zip's CRC-32 of that member fails."""
    raw = bytearray(source.read_bytes())
    start = raw.index(tensor.numpy().tobytes()) + 16
    raw[start:start + 64] = bytes(b ^ 0xFF for b in raw[start:start + 64])
    dst.write_bytes(bytes(raw))
    return dst


@pytest.mark.parametrize('case', ['corrupted', 'missing', 'directory', 'empty', 'empty path'])
@pytest.mark.parametrize('mode', ['encode', 'decode'])
def test_cli_reports_an_unusable_checkpoint_in_one_line(codec, codec_model, files, encoded, tmp_path, capsys, case,
                                                        mode):
    ckpt = tmp_path / 'model.pth'
    if case == 'corrupted':
        _corrupt(files / 'a.pth', ckpt, codec_model.state_dict()['g_s.0.weight'])
    elif case == 'directory':
        ckpt.mkdir()
    elif case == 'empty':
        ckpt.touch()
    packed, out = tmp_path / 'img.bin', tmp_path / ('out.png' if mode == 'decode' else 'out.bin')
    packed.write_bytes(encoded[0])
    src = packed if mode == 'decode' else files / 'in.png'
    path = '' if case == 'empty path' else str(ckpt)
    assert codec.main([mode, str(src), str(out), '--ckpt', path, '--size', 'tiny']) == 1
    err = _one_line_error(capsys)
    assert (str(ckpt) in err) if path else '--ckpt is empty' in err
    assert not out.exists()
    if case == 'corrupted':
        assert 'CRC-32' in err


def _train_checkpoint(codec_model) -> dict:
    """What tools/train.py saves for configs/compression: the task model's state dict (the codec under ``codec.``)
    beside the engine's records."""
    from visionattn.heads.compression.s2lic import build_s2lic
    from visionattn.heads.compression.task import ImageCompressor

    task = ImageCompressor(codec=dict(type=build_s2lic, size='tiny'))
    task.codec.load_state_dict(codec_model.state_dict())
    assert all(key.startswith('codec.') for key in task.state_dict())
    return {'meta': {'iter': 40}, 'state_dict': task.state_dict(), 'message_hub': {}, 'optimizer': {}}


@pytest.mark.parametrize('wrapping', ['tools/train.py', 'model.', 'DataParallel'])
def test_checkpoints_of_the_trainer_and_wrappers_load(codec, codec_model, tmp_path, wrapping):
    weights = codec_model.state_dict()
    checkpoint = {'tools/train.py': lambda: _train_checkpoint(codec_model),
                  'model.': lambda: {'model': {f'model.{k}': v for k, v in weights.items()}},
                  'DataParallel': lambda: {f'module.{k}': v for k, v in weights.items()}}[wrapping]()
    torch.save(checkpoint, tmp_path / 'model.pth')
    model = codec.load_model(str(tmp_path / 'model.pth'), 'tiny')
    for key, value in model.state_dict().items():
        assert torch.equal(value, weights[key]), key
    # the same weights, however the file wraps them, give the same fingerprint: files encoded with one decode with all
    assert model.weights_fingerprint == codec.weights_fingerprint(codec_model)


@pytest.mark.parametrize('change, message', [
    ('drop and add', r'missing keys \(1\): g_a\.0\.bias; unexpected keys \(1\): extra\.weight$'),
    ('reshape', r'shape mismatches, checkpoint vs model \(1\): g_s\.0\.weight \(2, 2\) vs \(40, 32, 3, 3\)$'),
    ('not a tensor', r'shape mismatches, checkpoint vs model \(1\): h_a\.0\.bias a str vs \(32,\)$'),
    ('integers', r'shape mismatches, checkpoint vs model \(1\): h_a\.0\.bias torch\.int8 vs torch\.float32$'),
    ('other preset', r'shape mismatches, checkpoint vs model \(386\): g_a_enh\.layers\.0\.weight \(8, 3, 3, 3\) vs '
                     r'\(32, 3, 3, 3\), .*, \.\.\.$'),
], ids=['drop and add', 'reshape', 'not a tensor', 'integers', 'other preset'])
def test_a_checkpoint_that_does_not_fit_is_one_line_naming_keys(codec, codec_model, files, tmp_path, capsys,
                                                                 change, message):
    state = dict(codec_model.state_dict())
    size = 'small' if change == 'other preset' else 'tiny'
    if change == 'drop and add':
        del state['g_a.0.bias']
        state['extra.weight'] = torch.zeros(1)
    elif change == 'reshape':
        state['g_s.0.weight'] = torch.zeros(2, 2)
    elif change == 'not a tensor':
        state['h_a.0.bias'] = 'zeros'
    elif change == 'integers':  # would be cast into the float weights
        state['h_a.0.bias'] = state['h_a.0.bias'].to(torch.int8)
    ckpt = tmp_path / 'model.pth'
    torch.save(state, ckpt)
    prefix = re.escape(f'checkpoint {ckpt} does not fit S2LIC --size {size}')
    with pytest.raises(RuntimeError, match=prefix + '.*' + message):
        codec.load_model(str(ckpt), size)
    assert codec.main(['encode', str(files / 'in.png'), str(tmp_path / 'out.bin'), '--ckpt', str(ckpt),
                       '--size', size]) == 1
    assert re.fullmatch('error: ' + prefix + '.*' + message, _one_line_error(capsys))


@pytest.mark.parametrize('mode', ['encode', 'decode'])
@pytest.mark.parametrize('case', ['missing', 'directory', 'not an image'])
def test_cli_reports_an_unreadable_input_in_one_line(codec, files, tmp_path, capsys, mode, case):
    src = tmp_path / ('in.png' if mode == 'encode' else 'in.bin')
    if case == 'directory':
        src.mkdir()
    elif case == 'not an image':
        src.write_bytes(b'not a picture')
    out = tmp_path / 'out'
    code = codec.main([mode, str(src), str(out), '--ckpt', str(files / 'a.pth'), '--size', 'tiny'])
    assert code == 1 and str(src) in _one_line_error(capsys) and not out.exists()


# -- adversarial probe: odd inputs, values the coder must not see, and outputs ----------------------------------------
class _NoCompress:
    """Stands in for the model where an image must be refused before it reaches the entropy coder."""

    def compress(self, x):
        raise AssertionError('the coder was reached: NaN/inf latents make compressai\'s rANS coder loop forever')

    def __call__(self, x):
        return self.compress(x)


@pytest.mark.parametrize('case, message', [
    ('nan', 'NaN or infinite'), ('inf', 'NaN or infinite'), ('0..255', r'in \[0, 1\], got values in \[0\.02032, 255\]'),
    ('[-1, 1]', r'got values in \[-0\.99'), ('uint8', 'takes float images in \\[0, 1\\], got torch.uint8'),
])
def test_images_the_coder_must_not_see_are_refused(codec, case, message):
    # NaN or inf hung encode forever (compressai's rANS bypass coding never ends); 0..255 floats coded silently
    torch.manual_seed(0)
    x = torch.rand(1, 3, 20, 24)
    if case in ('nan', 'inf'):
        x[0, 1, 5, 7] = float(case)
    else:
        x = {'0..255': x * 255, '[-1, 1]': x * 2 - 1, 'uint8': (x * 255).byte()}[case]
    with pytest.raises(ValueError, match=message):
        codec.encode_image(_NoCompress(), 's2lic-tiny', 3, x)
    from visionattn.heads.compression.measures import codec_round_trip
    no_coder = _NoCompress()
    no_coder.training, no_coder.eval, no_coder.train = False, lambda: None, lambda mode: None
    with pytest.raises(ValueError, match=message):
        codec_round_trip(no_coder, x)


def test_encode_reads_16_bit_and_refuses_float_images(codec, codec_model, files, tmp_path, capsys):
    from PIL import Image

    # a 16-bit grey PNG: PIL's convert('RGB') clipped it at 255, so the file coded an almost white image
    grey = (torch.linspace(0, 65535, 40 * 50).reshape(40, 50)).numpy().astype('uint16')
    Image.fromarray(grey).save(tmp_path / 'g16.png')
    assert codec.main(['encode', str(tmp_path / 'g16.png'), str(tmp_path / 'g16.bin'), '--ckpt',
                       str(files / 'a.pth'), '--size', 'tiny']) == 0
    eight_bit = torch.from_numpy((grey / 257.0).round().astype('uint8')).float() / 255
    expected = codec.encode_image(codec_model, 's2lic-tiny', 0, eight_bit.expand(1, 3, 40, 50))
    assert (tmp_path / 'g16.bin').read_bytes() == expected
    # a float TIFF has no known range (convert('RGB') made it black): refused, naming the file
    Image.fromarray(torch.rand(40, 50).numpy()).save(tmp_path / 'f.tif')
    capsys.readouterr()
    assert codec.main(['encode', str(tmp_path / 'f.tif'), str(tmp_path / 'f.bin'), '--ckpt', str(files / 'a.pth'),
                       '--size', 'tiny']) == 1
    assert 'f.tif' in _one_line_error(capsys) and not (tmp_path / 'f.bin').exists()


@pytest.mark.parametrize('case', ['missing folder', 'overwrite the input', 'unknown extension', 'folder'])
def test_cli_refuses_an_unwritable_output_in_one_line(codec, files, encoded, tmp_path, capsys, case):
    # these raised a traceback after the whole coding (or, dst == src, replaced the photo by its code)
    png = tmp_path / 'in.png'
    png.write_bytes((files / 'in.png').read_bytes())
    packed = tmp_path / 'img.bin'
    packed.write_bytes(encoded[0])
    mode, src, dst, message = {
        'missing folder': ('encode', png, tmp_path / 'nowhere' / 'x.bin', 'output folder'),
        'overwrite the input': ('encode', png, png, 'would overwrite the input'),
        'unknown extension': ('decode', packed, tmp_path / 'out.xyz', "unknown image file extension '.xyz'"),
        'folder': ('decode', packed, tmp_path, 'is a folder'),
    }[case]
    before = png.read_bytes()
    assert codec.main([mode, str(src), str(dst), '--ckpt', str(files / 'a.pth'), '--size', 'tiny']) == 1
    err = _one_line_error(capsys)
    assert message in err and str(dst) in err
    assert png.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ['img.bin', 'in.png']


def test_a_failed_write_keeps_the_older_output(codec, files, encoded, tmp_path, capsys, monkeypatch):
    from PIL import Image

    packed, out = tmp_path / 'img.bin', tmp_path / 'out.png'
    packed.write_bytes(encoded[0])
    out.write_bytes(b'an older result')

    def disk_full(self, fp, *args, **kwargs):
        with open(fp, 'wb') as handle:
            handle.write(b'\x89PNG half')
        raise OSError(28, 'No space left on device')
    monkeypatch.setattr(Image.Image, 'save', disk_full)
    assert codec.main(['decode', str(packed), str(out), '--ckpt', str(files / 'a.pth'), '--size', 'tiny']) == 1
    assert 'No space left on device' in _one_line_error(capsys)
    assert out.read_bytes() == b'an older result' and sorted(p.name for p in tmp_path.iterdir()) == ['img.bin',
                                                                                                      'out.png']


@pytest.mark.parametrize('option, message', [(['--size', 'huge'], "invalid choice: 'huge'"),
                                             (['--size', 'tiny', '--quality', '300'], '300 is not in 0..255')])
def test_cli_refuses_bad_options_before_any_work(codec, files, tmp_path, capsys, option, message):
    # --size huge raised a ValueError traceback; --quality 300 failed only after loading the model and coding
    with pytest.raises(SystemExit) as exit_info:
        codec.main(['encode', str(files / 'in.png'), str(tmp_path / 'x.bin'), '--ckpt', str(files / 'a.pth'),
                    *option])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
