"""Encode/decode images with a learned codec to a self-describing file.

File layout (big-endian): magic ``b'VACODEC\\0'`` | format version u8 | model-name length u8 + UTF-8 name |
quality u8 | image height u16 | image width u16 | z height u16 | z width u16 | y length u32 + y bytes |
z length u32 + z bytes. Decoding checks the magic, version, model name and every length, so a foreign or
truncated file fails with a clear error instead of producing a wrong image.

Usage:
    python tools/codec.py encode IMAGE OUT.bin --ckpt CKPT [--size small] [--quality 4]
    python tools/codec.py decode IN.bin OUT.png --ckpt CKPT [--size small]
"""
from __future__ import annotations

import argparse
import struct
import sys

import numpy as np
import torch
import torch.nn.functional as F
from visionattn.heads.compression.s2lic import build_s2lic

MAGIC = b'VACODEC\0'
FORMAT_VERSION = 1


def pack(model_name: str, quality: int, image_size: tuple[int, int], strings: list, z_shape) -> bytes:
    """Serialise one image's bitstreams with the header described in the module docstring."""
    name = model_name.encode()
    if len(name) > 255 or not 0 <= quality <= 255:
        raise ValueError('model name must be <= 255 bytes and quality in [0, 255]')
    y_string, z_string = strings[0][0], strings[1][0]
    return b''.join([MAGIC, struct.pack('>BB', FORMAT_VERSION, len(name)), name,
                     struct.pack('>BHHHH', quality, *image_size, *z_shape),
                     struct.pack('>I', len(y_string)), y_string, struct.pack('>I', len(z_string)), z_string])


def unpack(data: bytes) -> dict:
    """Parse :func:`pack` output; raises ValueError naming the problem for foreign or truncated data."""
    if not data.startswith(MAGIC):
        raise ValueError('not a visionattn codec file (bad magic)')
    pos = len(MAGIC)

    def take(count: int, what: str) -> bytes:
        nonlocal pos
        if pos + count > len(data):
            raise ValueError(f'truncated codec file: {what} needs {count} bytes at offset {pos}, '
                             f'file has {len(data)}')
        chunk = data[pos:pos + count]
        pos += count
        return chunk

    version, name_len = struct.unpack('>BB', take(2, 'header'))
    if version != FORMAT_VERSION:
        raise ValueError(f'unsupported codec format version {version} (this tool reads {FORMAT_VERSION})')
    name = take(name_len, 'model name').decode()
    quality, height, width, z_h, z_w = struct.unpack('>BHHHH', take(9, 'header'))
    y_string = take(struct.unpack('>I', take(4, 'y length'))[0], 'y bitstream')
    z_string = take(struct.unpack('>I', take(4, 'z length'))[0], 'z bitstream')
    if pos != len(data):
        raise ValueError(f'codec file has {len(data) - pos} unexpected trailing bytes')
    return {'model': name, 'quality': quality, 'image_size': (height, width), 'z_shape': (z_h, z_w),
            'strings': [[y_string], [z_string]]}


def load_model(ckpt: str | None, size: str):
    """Build S2LIC, load a checkpoint's state dict (weights only) and build the entropy tables."""
    model = build_s2lic(size)
    if ckpt:
        state = torch.load(ckpt, map_location='cpu', weights_only=True)
        state = state.get('state_dict', state)
        state = {k.removeprefix('model.').removeprefix('net.'): v for k, v in state.items()}
        model.load_state_dict(state, strict=True)
    model.eval()
    model.update(force=True)
    return model


def pad_to(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Replicate-pad (B, C, H, W) on the bottom/right to multiples of ``multiple``."""
    height, width = x.shape[-2:]
    return F.pad(x, (0, -width % multiple, 0, -height % multiple), mode='replicate')


def encode_image(model, model_name: str, quality: int, x: torch.Tensor) -> bytes:
    """x: (1, 3, H, W) in [0, 1] -> file bytes."""
    out = model.compress(pad_to(x, 64))
    return pack(model_name, quality, tuple(x.shape[-2:]), out['strings'], out['shape'])


def decode_bytes(model, model_name: str, data: bytes) -> torch.Tensor:
    """File bytes -> (1, 3, H, W) image in [0, 1]."""
    fields = unpack(data)
    if fields['model'] != model_name:
        raise ValueError(f'file was encoded with model {fields["model"]!r}, decoder is {model_name!r}')
    x_hat = model.decompress(fields['strings'], fields['z_shape'])['x_hat'].clamp(0, 1)
    height, width = fields['image_size']
    return x_hat[..., :height, :width]


def main(argv=None) -> int:
    from PIL import Image

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('mode', choices=['encode', 'decode'])
    parser.add_argument('src')
    parser.add_argument('dst')
    parser.add_argument('--ckpt', required=True, help='checkpoint with the model state dict (e.g. model.pth)')
    parser.add_argument('--size', default='small', help='S2LIC preset: paper | small | tiny')
    parser.add_argument('--quality', type=int, default=0, help='quality index stored in the header')
    args = parser.parse_args(argv)
    model = load_model(args.ckpt, args.size)
    model_name = f's2lic-{args.size}'
    if args.mode == 'encode':
        image = np.asarray(Image.open(args.src).convert('RGB'), dtype=np.float32) / 255.0
        x = torch.from_numpy(image).permute(2, 0, 1)[None]
        data = encode_image(model, model_name, args.quality, x)
        with open(args.dst, 'wb') as handle:
            handle.write(data)
        print(f'{args.dst}: {len(data)} bytes, {8 * len(data) / (x.shape[-2] * x.shape[-1]):.4f} bpp')
    else:
        with open(args.src, 'rb') as handle:
            data = handle.read()
        x_hat = decode_bytes(model, model_name, data)
        array = (x_hat[0].permute(1, 2, 0).numpy() * 255.0).round().astype(np.uint8)
        Image.fromarray(array).save(args.dst)
        print(f'{args.dst}: {array.shape[1]}x{array.shape[0]}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
