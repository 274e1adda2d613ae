"""tools/codec.py against damaged and hostile files: per-stream checksums, header limits, legacy files, the CLI."""
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


def _v2(name, quality, size, z_shape, y, z, y_len=None, z_len=None):
    """A version-2 file with a valid header CRC, so only the field checks can refuse a forged field."""
    header = b''.join([MAGIC, struct.pack('>BB', 2, len(name)), name, struct.pack('>BHHHH', quality, *size, *z_shape),
                       struct.pack('>IIII', len(y) if y_len is None else y_len, zlib.crc32(y),
                                   len(z) if z_len is None else z_len, zlib.crc32(z))])
    return header + struct.pack('>I', zlib.crc32(header)) + y + z


def _flip(data: bytes, offset: int, bit: int = 3) -> bytes:
    return data[:offset] + bytes([data[offset] ^ (1 << bit)]) + data[offset + 1:]


def test_format_version_2_layout(codec, encoded):
    data, y, z = encoded
    assert data == _v2(b's2lic-tiny', 3, (50, 60), (1, 1), y, z)
    fields = codec.unpack(data)
    assert fields['version'] == 2 and fields['strings'] == [[y], [z]] and fields['z_shape'] == (1, 1)


@pytest.mark.parametrize('stream', ['y', 'z'])
@pytest.mark.parametrize('where', [0, 0.5, -1])
def test_a_flipped_bit_in_a_stream_is_detected(codec, codec_model, encoded, stream, where):
    data, y, z = encoded
    string = y if stream == 'y' else z
    start = data.index(string)
    offset = start + (len(string) - 1 if where == -1 else int(where * len(string)))
    with pytest.raises(ValueError, match=f'{stream} bitstream checksum mismatch'):
        codec.decode_bytes(codec_model, 's2lic-tiny', _flip(data, offset))


# Offsets in the version-2 header of a 's2lic-tiny' file: magic 8, version 1, name length 1, name 10, then fields.
@pytest.mark.parametrize('offset', [8 + 2 + 3, 8 + 2 + 10, 8 + 2 + 10 + 2, 8 + 2 + 10 + 9 + 3, -1],
                         ids=['model name', 'quality', 'image height', 'y length', 'header CRC'])
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
@pytest.mark.parametrize('version', [1, 2])
def test_forged_header_fields_are_refused_before_decoding(codec, encoded, size, z_shape, message, version):
    _, y, z = encoded
    data = (_v1 if version == 1 else _v2)(b's2lic-tiny', 3, size, z_shape, y, z)
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
    data = _v2(b's2lic-tiny', 3, (50, 60), (1, 1), y, z, y_len=y_len, z_len=z_len)
    with pytest.raises(ValueError, match=re.escape(message)):
        codec.decode_bytes(_NoDecode(), 's2lic-tiny', data)


def test_other_bad_fields(codec, encoded):
    data, y, z = encoded
    with pytest.raises(ValueError, match='model name field is not UTF-8'):
        codec.unpack(_v2(b's2lic-\xff', 3, (50, 60), (1, 1), y, z))
    with pytest.raises(ValueError, match='unsupported codec format version 3'):
        codec.unpack(MAGIC + bytes([3]) + data[len(MAGIC) + 1:])
    with pytest.raises(ValueError, match='do not match'):
        codec.unpack(data + b'\0')
    with pytest.raises(ValueError, match='truncated codec file: header checksum'):
        codec.unpack(data[:len(data) - len(y) - len(z) - 2])
    with pytest.raises(ValueError, match=r'image size \(0, 60\) does not fit the header'):
        codec.pack('s2lic-tiny', 3, (0, 60), [[y], [z]], (1, 1))
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
    packed.write_bytes(_v2(b's2lic-tiny', 3, (65535, 65535), (1, 1), y, b'\0' * 8))
    assert codec.main(['decode', str(packed), str(out), *common]) == 1
    assert 'z shape field 1x1' in capsys.readouterr().err and not out.exists()
    packed.write_bytes(data)
    assert codec.main(['decode', str(packed), str(out), *common]) == 0
    assert Image.open(out).size == (60, 50)
