"""Checkpoint integrity: bytes that changed after a checkpoint was written are found before it is loaded.

``torch.load`` never checks the CRC-32 that torch's zip format records for every member, and a safetensors file
carries no checksum at all, so a flipped block inside a weight loads silently and gives wrong numbers.
:func:`verify_checkpoint` runs before every load (:func:`visionattn.hub.load_checkpoint_file`, which the hub, the
tools and the engine's resume and test all go through):

- a digest file ``<checkpoint>.sha256`` beside it (``sha256sum`` format, written at save by
  :func:`replace_with_digest` / :func:`write_digest`): the whole file must hash to it;
- otherwise a zip (``torch.save``'s format, release archives): every member against its recorded CRC-32;
- otherwise a safetensors file: the header parses and its tensors tile the data section exactly;
- otherwise (torch's legacy pickle format) nothing can be checked without a digest.

Failures raise :class:`CheckpointCorruptedError` naming the file and the damaged member.
"""
import hashlib
import json
import os
import re
import struct
import threading
import zipfile
from math import prod
from pathlib import Path
from typing import List, Optional, Tuple, Union
from zlib import error as zlib_error

__all__ = [
    'CheckpointError', 'CheckpointCorruptedError', 'DIGEST_SUFFIX', 'digest_path', 'sha256_file', 'read_digest',
    'write_digest', 'replace_with_digest', 'checkpoint_format', 'verify_checkpoint',
]

DIGEST_SUFFIX = '.sha256'
_MAX_SAFETENSORS_HEADER = 100 << 20  # safetensors' own limit
# Bits per element of the safetensors dtypes; a dtype not listed here is checked by its offsets only.
_SAFETENSORS_BITS = {
    'BOOL': 8, 'U8': 8, 'I8': 8, 'F8_E4M3': 8, 'F8_E5M2': 8, 'F8_E8M0': 8, 'I16': 16, 'U16': 16, 'F16': 16,
    'BF16': 16, 'I32': 32, 'U32': 32, 'F32': 32, 'I64': 64, 'U64': 64, 'F64': 64, 'C64': 64, 'F4': 4,
    'F6_E2M3': 6, 'F6_E3M2': 6,
}


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be read: missing, truncated, corrupted, not a checkpoint, or unsafe."""


class CheckpointCorruptedError(CheckpointError):
    """A checkpoint whose bytes differ from those written: a CRC-32 or digest mismatch, or an inconsistent header."""


def digest_path(path: Union[str, Path]) -> Path:
    """The digest file kept beside ``path``: ``<path>.sha256``."""
    path = Path(path)
    return path.with_name(path.name + DIGEST_SUFFIX)


def sha256_file(path: Union[str, Path]) -> str:
    """The hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
            digest.update(chunk)
    return digest.hexdigest()


def read_digest(path: Union[str, Path]) -> Optional[str]:
    """The sha256 recorded beside ``path``, or None when there is no digest file."""
    sidecar = digest_path(path)
    if not sidecar.is_file():
        return None
    text = sidecar.read_text(errors='replace').split()
    if not text or not re.fullmatch(r'[0-9a-fA-F]{64}', text[0]):
        raise CheckpointCorruptedError(f'digest file {sidecar} is malformed (expected "<sha256 hex>  <file name>"); '
                                       f'delete it to load {Path(path).name} unchecked')
    return text[0].lower()


def write_digest(path: Union[str, Path], digest: Optional[str] = None) -> str:
    """Write ``<path>.sha256`` (``sha256sum -c`` reads it) through a temporary file; returns the digest."""
    path = Path(path)
    digest = digest or sha256_file(path)
    sidecar = digest_path(path)
    # one temporary file per writer: threads of one process write the digest of the same download at once
    tmp = sidecar.with_name(f'.{sidecar.name}.{os.getpid()}.{threading.get_ident()}.tmp')
    try:
        tmp.write_text(f'{digest}  {path.name}\n')
        os.replace(tmp, sidecar)
    finally:
        tmp.unlink(missing_ok=True)
    return digest


def replace_with_digest(tmp: Union[str, Path], path: Union[str, Path]) -> str:
    """Move a completely written ``tmp`` to ``path`` and record its digest beside it; returns the digest.

    The old digest file goes first, so a kill at any point leaves either no digest (the file is then checked by
    its CRCs or header) or the right one, never a stale digest beside a new file.
    """
    digest = sha256_file(tmp)
    digest_path(path).unlink(missing_ok=True)
    os.replace(tmp, path)
    write_digest(path, digest)
    return digest


def checkpoint_format(path: Union[str, Path]) -> Optional[str]:
    """``'zip'``, ``'safetensors'`` or ``'pickle'`` from the first bytes of a file, or None for anything else
    (an HTML or JSON error page, an empty file)."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, 'rb') as f:
        head = f.read(16)
    if head[:4] in (b'PK\x03\x04', b'PK\x05\x06'):
        return 'zip'
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:  # torch's legacy format: pickle protocol 2+
        return 'pickle'
    if len(head) >= 9 and 2 <= struct.unpack('<Q', head[:8])[0] <= size - 8 and head[8:9] == b'{':
        return 'safetensors'
    return None


def _describe_member(name: str) -> str:
    if m := re.search(r'(?:^|/)data/(\d+)$', name):
        return f'the bytes of tensor storage {m.group(1)}'
    if name.endswith('data.pkl'):
        return 'the pickled structure: keys, shapes and dtypes'
    return 'an archive member'


def _check_zip(path: Path, label: str) -> None:
    bad: List[Tuple[str, str]] = []
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                # torch writes CRC 0 for every member when saved with compute_crc32=False: nothing to check there.
                if info.is_dir() or (info.CRC == 0 and info.file_size):
                    continue
                try:
                    with archive.open(info) as member:  # zipfile checks the CRC-32 when the member is read to its end
                        while member.read(1 << 20):
                            pass
                except (zipfile.BadZipFile, EOFError, zlib_error) as e:
                    problem = 'fails its CRC-32 check' if 'CRC' in str(e) else f'is damaged ({e})'
                    bad.append((info.filename, f"zip member '{info.filename}' ({_describe_member(info.filename)}) "
                                               f'{problem}'))
                except (NotImplementedError, RuntimeError):  # a compression method or encryption zipfile lacks
                    continue
    except (zipfile.BadZipFile, EOFError) as e:
        raise CheckpointCorruptedError(f'{label} is truncated or corrupted: {e}') from e
    if bad:
        shown = '; '.join(text for _, text in bad[:5]) + (f'; and {len(bad) - 5} more' if len(bad) > 5 else '')
        raise CheckpointCorruptedError(
            f'{label} is corrupted: {shown}. Its bytes changed after it was written (a failing disk, an interrupted '
            f'copy or a bad download); nothing was loaded. Restore it from its source.')


def _check_safetensors(path: Path, label: str) -> None:
    size = path.stat().st_size
    with open(path, 'rb') as f:
        (length,) = struct.unpack('<Q', f.read(8))
        if length > min(size - 8, _MAX_SAFETENSORS_HEADER):
            raise CheckpointCorruptedError(f'{label} is truncated or corrupted: its header claims {length} bytes, '
                                           f'the file has {size}')
        raw = f.read(length)
    try:
        header = json.loads(raw)
        spans = []
        for name, entry in header.items():
            if name == '__metadata__':
                continue
            begin, end = (int(x) for x in entry['data_offsets'])
            bits = _SAFETENSORS_BITS.get(entry['dtype'])
            if bits is not None and end - begin != -(-prod(entry['shape']) * bits // 8):
                raise CheckpointCorruptedError(
                    f"{label} is corrupted: tensor '{name}' ({entry['dtype']} {entry['shape']}) has "
                    f'{end - begin} bytes in the header')
            spans.append((begin, end, name))
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise CheckpointCorruptedError(f'{label} is corrupted: its safetensors header does not parse ({e})') from e
    position = 0
    for begin, end, name in sorted(spans):
        if begin != position or end < begin:
            raise CheckpointCorruptedError(f"{label} is corrupted: tensor '{name}' lies at bytes {begin}..{end} of "
                                           f'the data, where {position} was expected (a gap or an overlap)')
        position = end
    if position != size - 8 - length:
        raise CheckpointCorruptedError(f'{label} is truncated or corrupted: its header describes {position} bytes of '
                                       f'tensor data, the file holds {size - 8 - length}')


def verify_checkpoint(path: Union[str, Path], label: Optional[str] = None) -> str:
    """Check that ``path`` holds the bytes it was written with; returns what was checked (``'sha256'``,
    ``'crc32'``, ``'safetensors header'`` or ``'nothing'`` for a legacy pickle file without a digest, or a file of
    no format known here).

    Args:
        path: The checkpoint file.
        label: How messages name the file (default ``checkpoint file <path>``).

    Raises:
        CheckpointError: ``path`` is missing, a directory or empty.
        CheckpointCorruptedError: A digest or CRC-32 mismatch, a truncated zip or an inconsistent header, naming
            the file and the damaged member.
    """
    path = Path(path)
    label = label or f'checkpoint file {path}'
    if path.is_dir():
        raise CheckpointError(f'{label} is a directory, not a file')
    if not path.is_file():
        raise CheckpointError(f'{label} does not exist')
    if path.stat().st_size == 0:  # whatever a digest beside it says: no checkpoint is 0 bytes long
        raise CheckpointError(f'{label} is empty (0 bytes)')
    expected = read_digest(path)
    if expected is not None:
        actual = sha256_file(path)
        if actual != expected:
            raise CheckpointCorruptedError(
                f'{label} is corrupted: its sha256 is {actual}, but {digest_path(path).name} beside it recorded '
                f'{expected} when it was written; nothing was loaded. Restore it from its source (or, if it was '
                f'replaced on purpose, delete the stale {digest_path(path)})')
        return 'sha256'
    fmt = checkpoint_format(path)
    if fmt == 'zip':
        _check_zip(path, label)
        return 'crc32'
    if fmt == 'safetensors':
        _check_safetensors(path, label)
        return 'safetensors header'
    if path.suffix == '.safetensors':  # cut inside its header (torch.load reads the suffix, and failed uncaught)
        raise CheckpointCorruptedError(f'{label} is truncated or corrupted: its first bytes are not a safetensors '
                                       f'header that fits in its {path.stat().st_size} bytes')
    return 'nothing'
