"""Encode/decode images with a learned codec to a self-describing, checksummed file.

File layout, format version 3 (big-endian): magic ``b'VACODEC\\0'`` | format version u8 | model-name length u8 +
UTF-8 name | weights fingerprint 8 bytes | quality u8 | image height u16 | image width u16 | z height u16 |
z width u16 | y length u32 | y CRC-32 u32 | z length u32 | z CRC-32 u32 | header CRC-32 u32 (of every byte before
it) | y bytes | z bytes.

The weights fingerprint (:func:`weights_fingerprint`: the first 8 bytes of a SHA-256 over the state dict, entropy
tables included) ties a file to the checkpoint that encoded it: every checkpoint of one ``--size`` preset has the
same model name, and decoding with another one's weights gives a wrong image without any error from the coder.

Before anything is allocated, decoding checks the magic, the version, the header CRC, the model name, the image
size (1..65535 a side, at most ``--max-pixels`` pixels once padded to 64), the z shape against the image size (one
z element per 64x64 pixels: g_a downsamples by 16, h_a by 4), each stream length (whole 32-bit rANS words, at least
8 bytes, the two adding up to exactly the bytes present) and each stream's CRC-32; once the checkpoint is loaded,
the weights fingerprint. Any failure raises :class:`CodecFileError` naming the field or stream, and the CLI exits 1
with that message and writes nothing. A checkpoint that is missing, corrupted (:mod:`visionattn.integrity`) or does
not fit the preset is reported the same way, and so is an output path that cannot be written (checked before the
model is loaded); outputs go through a temporary file renamed into place, so a failed write leaves no half-written
or clobbered file.

Older files cannot be verified as fully, so they are refused unless ``--accept-unverified``
(``accept_unverified=True``) is given; then they get every check they have and decode with a warning. Version 2
(the version-3 layout without the fingerprint) cannot tell the weights apart. Version 1 (the version-2 header
without any CRC, each stream's u32 length right before its bytes) carries no checksum either, so a flipped bit in a
stream decodes into a wrong image that nothing can detect.

Usage:
    python tools/codec.py encode IMAGE OUT.bin --ckpt CKPT [--size small] [--quality 4]
    python tools/codec.py decode IN.bin OUT.png --ckpt CKPT [--size small] [--max-pixels N] [--accept-unverified]
"""
from __future__ import annotations

import argparse
import hashlib
import os
import struct
import sys
import warnings
import zlib

import numpy as np
import torch
import torch.nn.functional as F
from visionattn.heads.compression.measures import check_unit_images
from visionattn.heads.compression.s2lic import S2LIC_PRESETS, build_s2lic

from visionattn.data.base import load_image
from visionattn.hub import CheckpointError, load_checkpoint_file, unwrap_state_dict

MAGIC = b'VACODEC\0'
FORMAT_VERSION = 3
UNFINGERPRINTED_VERSION = 2  # checksums but no weights fingerprint; read only on request
LEGACY_VERSION = 1  # no checksums either; read only on request
FINGERPRINT_BYTES = 8  # of a SHA-256: two checkpoints collide with probability 2**-64
LATENT_STRIDE = 64  # image pixels per z element along each side; encode pads to multiples of it
MAX_PIXELS = 8192 * 8192  # default limit on the padded image area a file may ask the decoder to allocate
MIN_STREAM_BYTES = 8  # compressai's rANS coder flushes a 64-bit state, in 32-bit words


class CodecFileError(ValueError):
    """A codec file is foreign, truncated, corrupted or inconsistent; the message names the field or stream."""


def _crc(data: bytes) -> int:
    return zlib.crc32(data) & 0xFFFFFFFF


def weights_fingerprint(model: torch.nn.Module) -> bytes:
    """The first :data:`FINGERPRINT_BYTES` of a SHA-256 over ``model``'s state dict in sorted key order (each name,
    dtype, shape and bytes), entropy tables included: the coder needs them bit for bit identical on both sides."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f'{name}\0{tensor.dtype}\0{tuple(tensor.shape)}\0'.encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return digest.digest()[:FINGERPRINT_BYTES]


def _fingerprint_of(model) -> bytes:
    # load_model records it once; a model built by hand is hashed on every call, so it can never be stale
    return getattr(model, 'weights_fingerprint', None) or weights_fingerprint(model)


def pack(model_name: str, quality: int, image_size: tuple[int, int], strings: list, z_shape,
         fingerprint: bytes) -> bytes:
    """Serialise one image's bitstreams in the version-3 layout described in the module docstring."""
    name = model_name.encode()
    if len(name) > 255 or not 0 <= quality <= 255:
        raise ValueError('model name must be <= 255 bytes and quality in [0, 255]')
    if len(fingerprint) != FINGERPRINT_BYTES:
        raise ValueError(f'weights fingerprint must be {FINGERPRINT_BYTES} bytes, got {len(fingerprint)}')
    if len(strings) != 2 or len(strings[0]) != 1 or len(strings[1]) != 1:
        raise ValueError('pack stores exactly one image: strings must be [[y_string], [z_string]]')
    for what, size in (('image size', image_size), ('z shape', z_shape)):
        if len(size) != 2 or not all(1 <= int(side) <= 0xFFFF for side in size):
            raise ValueError(f'{what} {tuple(size)} does not fit the header (1..65535 a side)')
    y_string, z_string = strings[0][0], strings[1][0]
    header = b''.join([MAGIC, struct.pack('>BB', FORMAT_VERSION, len(name)), name, bytes(fingerprint),
                       struct.pack('>BHHHH', quality, *image_size, *z_shape),
                       struct.pack('>IIII', len(y_string), _crc(y_string), len(z_string), _crc(z_string))])
    return b''.join([header, struct.pack('>I', _crc(header)), y_string, z_string])


def _check_fields(name: bytes, image_size: tuple[int, int], z_shape: tuple[int, int], max_pixels: int) -> str:
    """Check header fields against each other and the limits; returns the decoded model name."""
    try:
        model = name.decode()
    except UnicodeDecodeError as exc:
        raise CodecFileError(f'model name field is not UTF-8 ({exc.reason} at byte {exc.start})') from None
    height, width = image_size
    if height < 1 or width < 1:
        raise CodecFileError(f'image size field {height}x{width}: both sides must be at least 1')
    expected = (-(-height // LATENT_STRIDE), -(-width // LATENT_STRIDE))
    padded = expected[0] * LATENT_STRIDE * expected[1] * LATENT_STRIDE
    if tuple(z_shape) != expected:
        raise CodecFileError(f'z shape field {z_shape[0]}x{z_shape[1]} does not match image size {height}x{width}: '
                             f'the model has one z element per {LATENT_STRIDE}x{LATENT_STRIDE} pixels, so expected '
                             f'{expected[0]}x{expected[1]}')
    if padded > max_pixels:
        raise CodecFileError(f'image size field {height}x{width} ({padded} pixels once padded) exceeds the limit of '
                             f'{max_pixels} pixels (raise it with --max-pixels / max_pixels= if the file is trusted)')
    return model


def _check_stream_length(what: str, length: int) -> None:
    if length < MIN_STREAM_BYTES or length % 4:
        raise CodecFileError(f'{what} length field {length}: a rANS stream is whole 32-bit words, at least '
                             f'{MIN_STREAM_BYTES} bytes')


def unpack(data: bytes, max_pixels: int = MAX_PIXELS, accept_unverified: bool = False) -> dict:
    """Parse and verify :func:`pack` output before anything is decoded.

    Args:
        data: The whole file.
        max_pixels: Largest padded image area (pixels) the header may claim.
        accept_unverified: Read version-1 (no checksums) and version-2 (no weights fingerprint) files with a warning
            instead of refusing them.

    Returns:
        ``{'model', 'version', 'fingerprint', 'quality', 'image_size', 'z_shape', 'strings'}``; ``fingerprint`` is
        None for files older than version 3.

    Raises:
        CodecFileError: Foreign, truncated, corrupted or inconsistent data; the message names the field or stream.
    """
    if not data.startswith(MAGIC):
        raise CodecFileError('not a visionattn codec file (bad magic)')
    pos = len(MAGIC)

    def take(count: int, what: str) -> bytes:
        nonlocal pos
        if pos + count > len(data):
            raise CodecFileError(f'truncated codec file: {what} needs {count} bytes at offset {pos}, '
                                 f'file has {len(data)}')
        chunk = data[pos:pos + count]
        pos += count
        return chunk

    version, name_len = struct.unpack('>BB', take(2, 'header'))
    if version not in (FORMAT_VERSION, UNFINGERPRINTED_VERSION, LEGACY_VERSION):
        raise CodecFileError(f'unsupported codec format version {version} (this tool reads {FORMAT_VERSION}, and '
                             f'{UNFINGERPRINTED_VERSION} and {LEGACY_VERSION} with --accept-unverified)')
    if version == LEGACY_VERSION and not accept_unverified:
        raise CodecFileError(f'codec format version {LEGACY_VERSION} has no checksums, so a corrupted stream would '
                             f'decode into a wrong image unnoticed; pass --accept-unverified (accept_unverified=True) '
                             f'to decode it anyway, or re-encode the image')
    if version == UNFINGERPRINTED_VERSION and not accept_unverified:
        raise CodecFileError(f'codec format version {UNFINGERPRINTED_VERSION} records no weights fingerprint, so '
                             f'decoding with another checkpoint than the one that encoded it would give a wrong image '
                             f'unnoticed; pass --accept-unverified (accept_unverified=True) to decode it anyway with '
                             f'that checkpoint, or re-encode the image')
    name = take(name_len, 'model name')
    fingerprint = take(FINGERPRINT_BYTES, 'weights fingerprint') if version == FORMAT_VERSION else None
    quality, height, width, z_h, z_w = struct.unpack('>BHHHH', take(9, 'header'))
    checksummed = version != LEGACY_VERSION
    if checksummed:
        y_len, y_crc, z_len, z_crc = struct.unpack('>IIII', take(16, 'stream lengths and checksums'))
        header_end = pos
        (header_crc,) = struct.unpack('>I', take(4, 'header checksum'))
        if _crc(data[:header_end]) != header_crc:
            raise CodecFileError('header checksum mismatch: the header (model, weights fingerprint, quality, sizes, '
                                 'stream lengths) is corrupted')
    model = _check_fields(name, (height, width), (z_h, z_w), max_pixels)
    if checksummed:
        _check_stream_length('y', y_len)
        _check_stream_length('z', z_len)
        if y_len + z_len != len(data) - pos:
            raise CodecFileError(f'stream length fields (y {y_len} + z {z_len} bytes) do not match the '
                                 f'{len(data) - pos} bytes after the header (truncated or padded file)')
        y_string, z_string = data[pos:pos + y_len], data[pos + y_len:]
        for what, string, crc in (('y', y_string, y_crc), ('z', z_string, z_crc)):
            if _crc(string) != crc:
                raise CodecFileError(f'{what} bitstream checksum mismatch (CRC-32 {_crc(string):08x}, header says '
                                     f'{crc:08x}): the {what} stream is corrupted')
        if version == UNFINGERPRINTED_VERSION:
            warnings.warn(f'codec format version {UNFINGERPRINTED_VERSION} records no weights fingerprint: decoded '
                          f'with another checkpoint than the one that encoded it, it gives a wrong image unnoticed',
                          UserWarning, stacklevel=2)
    else:
        y_len = struct.unpack('>I', take(4, 'y length'))[0]
        _check_stream_length('y', y_len)
        y_string = take(y_len, 'y bitstream')
        z_len = struct.unpack('>I', take(4, 'z length'))[0]
        _check_stream_length('z', z_len)
        z_string = take(z_len, 'z bitstream')
        if pos != len(data):
            raise CodecFileError(f'codec file has {len(data) - pos} unexpected trailing bytes')
        warnings.warn(f'codec format version {LEGACY_VERSION} has no checksums: a corrupted stream cannot be '
                      f'detected and would decode into a wrong image (nor can the checkpoint that encoded it be '
                      f'checked)', UserWarning, stacklevel=2)
    return {'model': model, 'version': version, 'fingerprint': fingerprint, 'quality': quality,
            'image_size': (height, width), 'z_shape': (z_h, z_w), 'strings': [[y_string], [z_string]]}


# Prefixes the weights may carry: tools/train.py's compression task model keeps the codec as ``.codec``, other
# wrappers use ``model``/``net``, and DistributedDataParallel adds ``module.``.
_STATE_PREFIXES = ('module.', 'model.', 'net.', 'codec.')


def _shape(value) -> str:
    return str(tuple(value.shape)) if isinstance(value, torch.Tensor) else f'a {type(value).__name__}'


def _check_fits(state: dict, model: torch.nn.Module, ckpt: str, size: str) -> None:
    """Raise :class:`CheckpointError` in one line, naming the file and a few keys, unless ``state`` fits ``model``."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    # The entropy coders' tables are empty until update() and take the checkpoint's shape when loaded.
    mismatched = [f'{k} {_shape(v)} vs {tuple(expected[k].shape)}' for k, v in state.items()
                  if k in expected and expected[k].numel()
                  and not (isinstance(v, torch.Tensor) and v.shape == expected[k].shape)]
    # integer or bool values where the model holds floats would be cast into the weights without a word
    mismatched += [f'{k} {v.dtype} vs {expected[k].dtype}' for k, v in state.items()
                   if k in expected and isinstance(v, torch.Tensor) and expected[k].is_floating_point()
                   and not v.is_floating_point()]
    if missing or unexpected or mismatched:
        parts = [f'{what} ({len(keys)}): {", ".join(keys[:3])}{", ..." if len(keys) > 3 else ""}'
                 for what, keys in (('missing keys', missing), ('unexpected keys', unexpected),
                                    ('shape mismatches, checkpoint vs model', mismatched)) if keys]
        raise CheckpointError(f'checkpoint {ckpt} does not fit S2LIC --size {size} (another preset, or not an S2LIC '
                              f'checkpoint): {"; ".join(parts)}')


def load_model(ckpt: str | None, size: str):
    """Build S2LIC, load a checkpoint's weights, build the entropy tables and record :func:`weights_fingerprint`.

    Args:
        ckpt: A file of weights: a state dict, or a checkpoint nesting one (tools/train.py's, under
            ``state_dict``, with the task model's ``codec.`` prefix). It is verified and read without running pickled
            code (:func:`visionattn.hub.load_checkpoint_file`). None keeps the random initialisation (tests).
        size: The S2LIC preset the checkpoint was trained with.

    Raises:
        CheckpointError: The path is empty, or the file is missing, corrupted, unsafe or does not fit the preset;
            the message names the file.
    """
    model = build_s2lic(size)
    if ckpt is not None:
        if not str(ckpt).strip():  # an empty --ckpt must not silently code with random weights
            raise CheckpointError('--ckpt is empty: give the checkpoint file of the weights to code with')
        checkpoint = load_checkpoint_file(ckpt)
        try:
            state = unwrap_state_dict(checkpoint, prefixes=_STATE_PREFIXES)
        except CheckpointError as exc:  # its message does not name the file
            raise CheckpointError(f'checkpoint file {ckpt}: {exc}') from None
        _check_fits(state, model, ckpt, size)
        model.load_state_dict(state, strict=True)
    model.eval()
    model.update(force=True)
    model.weights_fingerprint = weights_fingerprint(model)
    return model


def pad_to(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Replicate-pad (B, C, H, W) on the bottom/right to multiples of ``multiple``."""
    height, width = x.shape[-2:]
    return F.pad(x, (0, -width % multiple, 0, -height % multiple), mode='replicate')


def encode_image(model, model_name: str, quality: int, x: torch.Tensor) -> bytes:
    """x: (1, 3, H, W) floats in [0, 1] -> file bytes."""
    if x.ndim != 4 or x.shape[:2] != (1, 3) or not all(1 <= side <= 0xFFFF for side in x.shape[-2:]):
        raise ValueError(f'encode takes one (1, 3, H, W) image with 1 <= H, W <= 65535, got {tuple(x.shape)}')
    check_unit_images(x, 'encode')  # NaN would hang the coder; 0..255 would code into a wrong image
    out = model.compress(pad_to(x.float(), LATENT_STRIDE))
    return pack(model_name, quality, tuple(x.shape[-2:]), out['strings'], out['shape'], _fingerprint_of(model))


def decode_fields(model, model_name: str, fields: dict) -> torch.Tensor:
    """Verified :func:`unpack` fields -> (1, 3, H, W) image in [0, 1], once the model and its weights match the
    file's."""
    if fields['model'] != model_name:
        raise CodecFileError(f'file was encoded with model {fields["model"]!r}, decoder is {model_name!r}')
    if fields.get('fingerprint') is not None:
        ours = _fingerprint_of(model)
        if fields['fingerprint'] != ours:
            raise CodecFileError(f'weights fingerprint mismatch: the file was encoded with weights '
                                 f'{fields["fingerprint"].hex()}, the decoder has {ours.hex()}; other weights decode '
                                 f'it into a wrong image, so decode with the checkpoint that encoded it')
    x_hat = model.decompress(fields['strings'], fields['z_shape'])['x_hat'].clamp(0, 1)
    height, width = fields['image_size']
    return x_hat[..., :height, :width]


def decode_bytes(model, model_name: str, data: bytes, max_pixels: int = MAX_PIXELS,
                 accept_unverified: bool = False) -> torch.Tensor:
    """File bytes -> (1, 3, H, W) image in [0, 1]; the file is verified (see :func:`unpack`) before decoding."""
    return decode_fields(model, model_name, unpack(data, max_pixels, accept_unverified))


def _write_atomically(path: str, write) -> bool:
    """``write(temporary path)``, then rename it to ``path``: a failure (disk full, say) leaves neither a
    half-written file nor a clobbered older one; it is reported in one line and gives False."""
    folder, name = os.path.split(os.path.abspath(path))
    temporary = os.path.join(folder, f'.{name}.{os.getpid()}.tmp')
    try:
        write(temporary)
        os.replace(temporary, path)
        return True
    except OSError as exc:
        print(f'{path}: error: cannot write the output: {exc}', file=sys.stderr)
        return False
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def _check_destination(src: str, dst: str, mode: str) -> str | None:
    """Why ``dst`` cannot be written (checked before any work), or None."""
    from PIL import Image

    folder = os.path.dirname(os.path.abspath(dst))
    if not os.path.isdir(folder):
        return f'output folder {folder} does not exist'
    if os.path.isdir(dst):
        return 'the output path is a folder'
    if os.path.exists(dst) and os.path.exists(src) and os.path.samefile(src, dst):
        return f'the output would overwrite the input {src}'
    if mode == 'decode' and os.path.splitext(dst)[1].lower() not in Image.registered_extensions():
        return f'unknown image file extension {os.path.splitext(dst)[1]!r} (use .png for a lossless copy)'
    return None


def _load_or_report(ckpt: str, size: str):
    """:func:`load_model`, or None after printing why the checkpoint cannot be used (the message names it)."""
    try:
        return load_model(ckpt, size)
    except CheckpointError as exc:
        print(f'error: {exc}', file=sys.stderr)
        return None


def _quality(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 255:
        raise argparse.ArgumentTypeError(f'{value} is not in 0..255 (the header stores one byte)')
    return value


def _report_destination(args) -> bool:
    problem = _check_destination(args.src, args.dst, args.mode)
    if problem:
        print(f'{args.dst}: error: {problem}', file=sys.stderr)
    return not problem


def main(argv=None) -> int:
    from PIL import Image

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('mode', choices=['encode', 'decode'])
    parser.add_argument('src')
    parser.add_argument('dst')
    parser.add_argument('--ckpt', required=True, help='checkpoint with the model state dict (e.g. model.pth)')
    parser.add_argument('--size', default='small', choices=sorted(S2LIC_PRESETS), help='S2LIC preset')
    parser.add_argument('--quality', type=_quality, default=0, help='quality index stored in the header (0..255)')
    parser.add_argument('--max-pixels', type=int, default=MAX_PIXELS,
                        help=f'decode: largest padded image area a file may claim (default {MAX_PIXELS})')
    parser.add_argument('--accept-unverified', action='store_true',
                        help=f'decode: read files of format version {UNFINGERPRINTED_VERSION} (no weights '
                             f'fingerprint) and {LEGACY_VERSION} (no checksums either)')
    args = parser.parse_args(argv)
    model_name = f's2lic-{args.size}'
    if args.mode == 'encode':
        try:  # 16-bit PNGs scaled to 8 bits (convert('RGB') saturated them), float TIFFs refused, alpha dropped
            image = load_image(args.src).astype(np.float32) / 255.0
        except (OSError, ValueError) as exc:  # missing, a directory, not an image, truncated
            print(f'{args.src}: error: cannot read the image: {exc}', file=sys.stderr)
            return 1
        if not _report_destination(args):
            return 1
        model = _load_or_report(args.ckpt, args.size)
        if model is None:
            return 1
        x = torch.from_numpy(image).permute(2, 0, 1)[None]
        try:
            data = encode_image(model, model_name, args.quality, x)
        except ValueError as exc:
            print(f'{args.src}: error: {exc}', file=sys.stderr)
            return 1

        def write(path):
            with open(path, 'wb') as handle:
                handle.write(data)
        if not _write_atomically(args.dst, write):
            return 1
        print(f'{args.dst}: {len(data)} bytes, {8 * len(data) / (x.shape[-2] * x.shape[-1]):.4f} bpp')
    else:
        try:
            with open(args.src, 'rb') as handle:
                data = handle.read()
        except OSError as exc:
            print(f'{args.src}: error: cannot read the codec file: {exc}', file=sys.stderr)
            return 1
        try:  # verify the whole file before loading the model or allocating anything
            fields = unpack(data, args.max_pixels, args.accept_unverified)
            if fields['model'] != model_name:
                raise CodecFileError(f'file was encoded with model {fields["model"]!r}, decoder is {model_name!r}')
        except CodecFileError as exc:
            print(f'{args.src}: error: {exc}', file=sys.stderr)
            return 1
        if not _report_destination(args):
            return 1
        model = _load_or_report(args.ckpt, args.size)
        if model is None:
            return 1
        try:
            x_hat = decode_fields(model, model_name, fields)
        except CodecFileError as exc:  # the weights fingerprint, known once the checkpoint is loaded
            print(f'{args.src}: error: {exc}', file=sys.stderr)
            return 1
        array = (x_hat[0].permute(1, 2, 0).numpy() * 255.0).round().astype(np.uint8)
        extension = os.path.splitext(args.dst)[1].lower()
        if not _write_atomically(args.dst, lambda path: Image.fromarray(array).save(
                path, format=Image.registered_extensions()[extension])):
            return 1
        print(f'{args.dst}: {array.shape[1]}x{array.shape[0]}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
