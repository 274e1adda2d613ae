"""Pretrained weights: download, cache, checksum, safe loading and strict conversion of official checkpoints.

Every family's ``_create_*`` goes through :func:`build_model`. With ``pretrained=True`` it downloads the file
named by the pretrained cfg (``url``) or takes a local ``file``, verifies its checksum where one is known,
loads it without running pickled code, converts it with the family's ``checkpoint_filter_fn`` and checks the
result against the model *before* a single tensor is copied, so a wrong checkpoint fails with the list of
missing, unexpected and mis-shaped keys instead of half-loading.

Checksums travel in the URL fragment, ``https://host/file.pth#sha256=<hex>``, which HTTP clients never send;
``#size=<bytes>`` records the file's length where no digest is published, and ``#name=<file name>`` gives the cache
file a name when the URL path has none (e.g. Google Drive links). Downloads go to ``timm.create_model``'s
``cache_dir`` when one is given, else torch hub's ``checkpoints`` folder; offline, the error names the file to fetch
by hand and where to put it.

Every load is checked for integrity first (:mod:`visionattn.integrity`: a digest beside the file, zip CRC-32s or a
safetensors header). Downloads time out on a silent server or DNS resolver (``VISIONATTN_DOWNLOAD_TIMEOUT`` seconds,
default 30), are checked against Content-Length and the known size and sha256 (else against the checkpoint formats;
a body longer than the known size is cut off), and only then moved into the cache; a cached file is checked the same
way before it is reused, and fetched again when it fails. :func:`extract_checkpoint` unpacks a release archive's
checkpoint the same way: through a temporary file of its writer, checked, then moved into place with its digest.
"""
import argparse
import functools
import hashlib
import http.client
import logging
import math
import os
import pickle
import re
import socket
import threading
import time
import urllib.error
import urllib.request
import zipfile
import zlib
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Union
from urllib.parse import parse_qs, urlsplit, urlunsplit
from zlib import error as zlib_error

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file as load_safetensors
from timm.models import build_model_with_cfg
from torch import nn

from ._timm_compat import resolve_pretrained_cfg
from .integrity import (
    CheckpointCorruptedError,
    CheckpointError,
    checkpoint_format,
    digest_path,
    sha256_file,
    verify_checkpoint,
    write_digest,
)

__all__ = [
    'CheckpointError', 'CheckpointCorruptedError', 'CheckpointMismatchError', 'DownloadError', 'build_model',
    'download_weights', 'weight_file_facts', 'cache_path', 'load_checkpoint_file', 'unwrap_state_dict',
    'is_engine_checkpoint', 'PUBLISH_HINT', 'TRAINED_WEIGHT_KEYS', 'EMA_WEIGHT_KEYS', 'check_state_dict',
    'extract_checkpoint', 'sha256_file', 'verify_checkpoint', 'SAFE_GLOBALS', 'SkippedObject',
]

_logger = logging.getLogger(__name__)

# Harmless objects that official checkpoints store beside the weights (the training script's argparse
# arguments). Anything else that is not a tensor or a plain container is refused by torch's weights-only loader.
SAFE_GLOBALS = [argparse.Namespace]

# Where training scripts keep the weights: the trained ones (timm: 'state_dict'; DeiT-style: 'model') and their
# exponential moving average (timm: 'state_dict_ema'; DeiT-style: 'model_ema'); unwrapping takes the first found.
TRAINED_WEIGHT_KEYS = ('state_dict', 'model', 'module')
EMA_WEIGHT_KEYS = ('state_dict_ema', 'model_ema')
_WRAPPER_KEYS = TRAINED_WEIGHT_KEYS + EMA_WEIGHT_KEYS


class CheckpointMismatchError(CheckpointError):
    """A checkpoint that reads fine but does not fit the model."""


class DownloadError(CheckpointError):
    """A download that did not complete: no connection, an HTTP error, a stalled or early-closed transfer."""


_MAX_NAME_CHARS = 200  # room for the temporary file's prefix and suffix within the usual 255-byte limit


def _bad_file_name(name: str) -> Optional[str]:
    """Why ``name`` cannot be a file of the cache folder (a path, '..', control characters, too long), or None."""
    if '/' in name or '\\' in name:
        return 'it is a path, not a file name'
    if name in ('.', '..'):
        return 'it names a folder'
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        return 'it holds control characters'
    if len(name.encode('utf-8', 'surrogatepass')) > _MAX_NAME_CHARS:
        return f'it is longer than {_MAX_NAME_CHARS} bytes'
    return None


# File names that say they hold weights (or a release archive of them), whatever the query after them.
_WEIGHT_SUFFIXES = ('.pth', '.pt', '.bin', '.ckpt', '.safetensors', '.tar', '.zip', '.npz', '.h5', '.pkl')


def _parse_weight_url(url: str):
    """Split ``url#sha256=..&size=..&name=..`` into the URL to fetch, the expected sha256, the expected size in bytes
    and the cache file name.

    Raises:
        ValueError: A ``#name=`` that is not a plain file name (it would put the file outside the cache folder, or
            fail to open), a ``#sha256=`` that is not 64 hex digits, a ``#size=`` that is not a number of bytes.
    """
    parts = urlsplit(url)
    fragment = {k: v[-1] for k, v in parse_qs(parts.fragment).items()}
    fetch_url = urlunsplit(parts._replace(fragment=''))
    name = fragment.get('name')
    if name is not None and (why := _bad_file_name(name)):
        raise ValueError(f'{url}: #name={name!r} cannot name the cache file: {why}')
    if name is None:
        name = os.path.basename(parts.path)
        # 'get.php?id=1' and 'get.php?id=2' are two files under one path name: the second would be taken from the
        # cache as the first, unchecked where no sha256 is known. A query is part of the name where the path's does
        # not name a weight file ('w.pth?dl=1' stays w.pth).
        if parts.query and not name.lower().endswith(_WEIGHT_SUFFIXES):
            name = ''
    if not name or '.' not in name or _bad_file_name(name):
        name = hashlib.sha256(fetch_url.encode()).hexdigest()[:16] + '.pth'
    sha256 = fragment.get('sha256')
    if sha256 is not None and not re.fullmatch(r'[0-9a-fA-F]{64}', sha256):
        raise ValueError(f'{url}: #sha256={sha256!r} is not a sha256 digest (64 hex digits)')
    sha256 = sha256.lower() if sha256 is not None else None  # as sha256sum and the digest files write it
    size = fragment.get('size')
    if size is not None and not size.isdigit():
        raise ValueError(f'{url}: #size={size!r} is not a number of bytes')
    return fetch_url, sha256, int(size) if size is not None else None, name


def weight_file_facts(url: str) -> Dict[str, Any]:
    """What a weight URL records about its file: ``url`` (to fetch), ``name`` (of the cache file), ``sha256`` and
    ``size`` (None where not recorded)."""
    fetch_url, sha256, size, name = _parse_weight_url(url)
    return dict(url=fetch_url, name=name, sha256=sha256, size=size)


def cache_path(url: str, cache_dir: Optional[Union[str, Path]] = None) -> Path:
    """The file :func:`download_weights` keeps ``url`` in: ``<cache_dir>/<name>``, by default in torch hub's
    ``checkpoints`` folder. A file put there by hand is used (after the same checks) instead of downloading."""
    # (a '~/weights' not expanded was created as a folder named '~' in the working directory)
    cache = Path(cache_dir).expanduser() if cache_dir is not None else Path(torch.hub.get_dir()) / 'checkpoints'
    return cache / _parse_weight_url(url)[3]


_DEFAULT_TIMEOUT = 30.0
_MIN_BYTES_PER_TIMEOUT = 1 << 10  # less than this in a whole timeout window is a stalled (trickling) server


def _download_timeout(timeout: Optional[float]) -> float:
    """``timeout``, else ``VISIONATTN_DOWNLOAD_TIMEOUT``, else 30 s. Refused here unless positive and finite: a socket
    takes 0 as "never wait" and fails on the others without naming the setting."""
    name, value = 'timeout', timeout
    if timeout is None:
        name, value = 'VISIONATTN_DOWNLOAD_TIMEOUT', os.environ.get('VISIONATTN_DOWNLOAD_TIMEOUT', '')
        if not value:
            return _DEFAULT_TIMEOUT
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = math.nan
    if not 0 < seconds <= threading.TIMEOUT_MAX:  # (False for nan)
        raise ValueError(f'{name}={value!r} is not a positive number of seconds')
    return seconds


def _lookup(host: str, port: int, timeout: float) -> list:
    """``socket.getaddrinfo`` within ``timeout`` seconds. The system resolver takes no timeout (a hung DNS server
    blocks it for good), so it runs in a daemon thread, left to finish on its own when the time is up (a
    concurrent.futures worker would be joined at interpreter exit, hanging it there instead)."""
    found = {}

    def lookup():
        try:
            found['addresses'] = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)
        except Exception as e:  # handed to the caller
            found['error'] = e
    thread = threading.Thread(target=lookup, name=f'visionattn-lookup-{host}', daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise TimeoutError(f'timed out looking up {host}')
    if 'error' in found:
        raise found['error']
    return found['addresses']


def _connect(address, timeout=None, source_address=None, **kwargs) -> socket.socket:
    """``socket.create_connection`` whose host lookup is bounded by ``timeout`` too (each address found then has
    ``timeout`` seconds to accept, as there)."""
    if not isinstance(timeout, (int, float)):  # urllib's "no timeout" sentinel: nothing to bound
        return socket.create_connection(address, timeout, source_address, **kwargs)
    host, port = address
    error = None
    for family, kind, proto, _, sockaddr in _lookup(host, port, timeout):
        sock = None
        try:
            sock = socket.socket(family, kind, proto)
            sock.settimeout(timeout)
            if source_address:
                sock.bind(source_address)
            sock.connect(sockaddr)
            return sock
        except OSError as e:
            error = e
            if sock is not None:
                sock.close()
    raise error if error is not None else OSError(f'no address found for {host}')


class _BoundedLookup:
    """An urllib handler whose connections open their socket through :func:`_connect` (``_create_connection`` is
    http.client's hook for that; urlopen's own looks the host up without a timeout)."""

    def do_open(self, http_class, req, **kwargs):
        def connection(host, **kw):
            conn = http_class(host, **kw)
            conn._create_connection = _connect
            return conn
        return super().do_open(connection, req, **kwargs)


class _HTTPHandler(_BoundedLookup, urllib.request.HTTPHandler):
    pass


class _HTTPSHandler(_BoundedLookup, urllib.request.HTTPSHandler):
    pass


def _fetch(url: str, dst: Path, timeout: float, progress: bool, size: Optional[int] = None):
    """Stream ``url`` into ``dst``; returns the sha256 of what was written and whether the server announced its
    length (without one, a connection that closes early looks like the end of the file). Raises
    :class:`CheckpointError` when the server does not answer, goes silent (or trickles) for ``timeout`` seconds,
    closes before Content-Length, or sends more than the ``size`` the URL records. The host lookup is bounded by
    ``timeout`` too."""
    from tqdm import tqdm
    request = urllib.request.Request(url, headers={'User-Agent': 'visionattn', 'Accept-Encoding': 'identity'})
    try:  # built per call, so that proxy variables set since are honoured, as urlopen's first call does
        response = urllib.request.build_opener(_HTTPHandler, _HTTPSHandler).open(request, timeout=timeout)
    except (OSError, http.client.HTTPException) as e:  # URLError, HTTPError and socket timeouts are OSErrors
        reason = e.reason if isinstance(e, urllib.error.URLError) else e
        if isinstance(reason, TimeoutError):  # a silent resolver, or a server that accepts but does not answer
            raise DownloadError(f'could not download {url}: {reason}: no answer within {timeout:g} s '
                                f'(VISIONATTN_DOWNLOAD_TIMEOUT sets the limit)') from e
        raise DownloadError(f'could not download {url}: {e}') from e
    with response:
        length = response.headers.get('Content-Length', '')
        expected = int(length) if length.strip().isdigit() else None
        digest, received = hashlib.sha256(), 0
        window_start, window_received = time.monotonic(), 0
        with open(dst, 'wb') as f, tqdm(total=expected, unit='B', unit_scale=True, unit_divisor=1024,
                                        disable=not progress, desc=url.rsplit('/', 1)[-1][:40]) as bar:
            while True:
                try:
                    chunk = response.read1(1 << 20)  # returns what one socket read gives: a trickle is seen
                except TimeoutError as e:
                    raise DownloadError(f'download of {url} stalled: no data for {timeout:g} s after {received} '
                                        f'bytes (VISIONATTN_DOWNLOAD_TIMEOUT sets the limit)') from e
                except (OSError, http.client.HTTPException) as e:
                    raise DownloadError(f'download of {url} failed after {received} bytes: {e!r}') from e
                if not chunk:
                    break
                f.write(chunk)
                digest.update(chunk)
                received += len(chunk)
                bar.update(len(chunk))
                if size is not None and received > size:
                    break  # another file, or a body without end: reading on could fill the disk
                now = time.monotonic()
                if now - window_start >= timeout:
                    if received - window_received < _MIN_BYTES_PER_TIMEOUT:
                        raise DownloadError(
                            f'download of {url} stalled: {received - window_received} bytes in {now - window_start:.1f}'
                            f' s after {received} bytes (VISIONATTN_DOWNLOAD_TIMEOUT sets the limit)')
                    window_start, window_received = now, received
    if size is not None and received > size:
        if checkpoint_format(dst) is None:
            raise _not_a_checkpoint(dst, url)
        raise CheckpointCorruptedError(f'size mismatch for {url}: expected {size} bytes (#size=), the server sent '
                                       f'more; stopped after {received}')
    if expected is not None and received != expected:
        raise DownloadError(f'download of {url} is incomplete: the connection closed after {received} of the '
                            f'{expected} bytes announced')
    return digest.hexdigest(), expected is not None


# A live download writes its temporary file at least once per timeout (else it fails and removes it), a live extraction
# all the time: one left a day untouched has no writer, on whichever host sharing the cache it was.
_STALE_PART_SECONDS = 24 * 3600
# What follows ".<name>." in a temporary file's name: host tag, process and thread of its writer (no host tag: a
# download's name before the tag was added, or an extraction's, "<pid>.part", judged by age alone).
_PART_WRITER = re.compile(r'(?:(?P<host>[0-9a-f]{12})\.)?(?P<pid>\d{1,10})(?:\.(?P<thread>\d{1,20}))?\.part')


@functools.lru_cache(maxsize=None)
def _host_tag() -> str:
    """Where a process id means this process table: this boot of this machine (hosts sharing a cache folder may have
    one hostname) and this pid namespace (containers on one machine number their processes apart)."""
    parts = [socket.gethostname()]
    for read in (lambda: Path('/proc/sys/kernel/random/boot_id').read_text().strip(),
                 lambda: os.readlink('/proc/self/ns/pid')):
        try:
            parts.append(read())
        except OSError:  # not Linux: the hostname alone
            parts.append('')
    return hashlib.sha256('\0'.join(parts).encode()).hexdigest()[:12]


def _part_path(cache: Path, name: str) -> Path:
    """The temporary file this thread writes ``name`` into: named by its writer, so concurrent writers never share
    one and a later one can tell whether its writer is gone."""
    return cache / f'.{name}.{_host_tag()}.{os.getpid()}.{threading.get_ident()}.part'


def _writer_alive(pid: int, thread: int) -> bool:
    """Whether the process ``pid`` of this host (thread ``thread`` where it is this process) may still write."""
    if pid == os.getpid():
        # Another thread of this process downloading (download_weights registers foreign threads too); this
        # thread's own name, or that of a thread since ended, was left by an earlier process with this pid.
        return thread != threading.get_ident() and thread in {t.ident for t in threading.enumerate()}
    if os.name != 'posix':
        return True  # no harmless probe: os.kill terminates the process on Windows
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (OSError, OverflowError):  # EPERM: alive under another user
        return True
    return True


def _remove_stale_parts(cache: Path, name: str) -> None:
    """Remove the temporary files that earlier downloads (or extractions) of ``name`` left in ``cache`` and will
    never finish.

    A writer killed by SIGKILL or a crash runs no clean-up and leaves its file (checkpoints are hundreds of MB).
    One is stale when its writer's process is gone from this host, or when it was not modified for a day (a writer
    of another host sharing the cache, whose process ids mean nothing here, is judged by that alone). A file a live
    process may still be writing is kept. Nothing here fails the download.
    """
    prefix, now = f'.{name}.', time.time()
    try:
        entries = list(os.scandir(cache))
    except OSError:  # no cache folder yet (the download creates it and reports what is wrong with it)
        return
    for entry in entries:
        writer = _PART_WRITER.fullmatch(entry.name[len(prefix):]) if entry.name.startswith(prefix) else None
        if writer is None:
            continue
        try:
            if entry.is_dir(follow_symlinks=False):
                continue
            old = now - entry.stat(follow_symlinks=False).st_mtime > _STALE_PART_SECONDS
            ours = writer['host'] == _host_tag() and writer['thread'] is not None
            if old or (ours and not _writer_alive(int(writer['pid']), int(writer['thread']))):
                os.unlink(entry.path)
                _logger.info('Removed %s, left by a writer of %s that did not finish', entry.path, name)
        except OSError as e:  # removed by another download meanwhile, or not ours to remove
            _logger.debug('Could not remove %s: %s', entry.path, e)


def _new_part(folder: Path, name: str) -> Path:
    """The temporary file through which this thread writes ``folder/name``, once the leftovers of killed writers of
    ``name`` are gone (downloads and extractions share the naming and the clean-up)."""
    threading.current_thread()  # registers a thread not started by threading, so _writer_alive sees it as alive
    _remove_stale_parts(folder, name)
    return _part_path(folder, name)


def _not_a_checkpoint(path: Path, source: str) -> CheckpointError:
    with open(path, 'rb') as f:
        head = f.read(64)
    if head.lstrip().lower().startswith((b'<!doctype html', b'<html')):
        return CheckpointError(
            f'{source} returned an HTML page, not a checkpoint (a login, quota or confirmation page of the '
            f'file host); download it by hand and pass pretrained_cfg_overlay=dict(file=...)')
    return CheckpointError(f'{source} returned {path.stat().st_size} bytes that are not a checkpoint (neither a zip, '
                           f'a safetensors nor a pickle file); they start with {head[:48]!r}')


def _check_weights_file(path: Path, source: str, sha256: Optional[str], actual: Optional[str] = None,
                        size: Optional[int] = None) -> None:
    """Raise :class:`CheckpointError` unless ``path`` is the checkpoint ``source`` names: its size where one is
    recorded, its sha256 where one is known, else a checkpoint format whose CRCs or header (or a digest beside it)
    hold."""
    if size is not None and path.stat().st_size != size:
        if checkpoint_format(path) is None:
            raise _not_a_checkpoint(path, source)
        raise CheckpointCorruptedError(f'size mismatch for {source}: expected {size} bytes, got {path.stat().st_size}')
    if sha256 is not None:
        actual = actual or sha256_file(path)
        if actual != sha256.lower():
            if checkpoint_format(path) is None:
                raise _not_a_checkpoint(path, source)
            raise CheckpointCorruptedError(f'checksum mismatch for {source}: expected sha256 {sha256}, got {actual}')
        return
    if checkpoint_format(path) is None:
        raise _not_a_checkpoint(path, source)
    verify_checkpoint(path, label=source)


def download_weights(url: str, cache_dir: Optional[Union[str, Path]] = None, progress: bool = True,
                     timeout: Optional[float] = None) -> Path:
    """Download ``url`` into the cache (torch hub's ``checkpoints`` folder by default) and return the path.

    The body goes to a temporary file beside the cache entry with a progress bar. The server must answer and keep
    sending within ``timeout`` seconds (default ``VISIONATTN_DOWNLOAD_TIMEOUT`` or 30), and deliver the whole
    Content-Length. The file must have the ``#size=`` of the URL where one is given, and match its ``#sha256=``,
    or, without one, be a checkpoint whose zip CRCs or safetensors header hold; only then is it moved into place
    (with ``<name>.sha256`` beside it when the URL gave no digest). On any failure nothing is left in the cache, and
    the temporary files of downloads of the same name that were killed before they could clean up are removed
    (those of a live writer are kept). A cached file is checked the same way (its size and sha256 against the URL's,
    else its digest file, CRCs or header) and downloaded again when it fails. The timeout also bounds the lookup of
    the host.
    """
    fetch_url, sha256, size, name = _parse_weight_url(url)
    path = cache_path(url, cache_dir)
    cache = path.parent
    if path.is_file():
        try:
            _check_weights_file(path, f'cached file {path}', sha256, size=size)
            return path
        except CheckpointError as e:
            _logger.warning('%s; downloading it again', e)
            try:  # (another process may have removed it, or replaced it already)
                path.unlink(missing_ok=True)
                digest_path(path).unlink(missing_ok=True)
            except OSError as error:
                raise _cache_write_error(fetch_url, cache, error, size) from error
    seconds = _download_timeout(timeout)  # a bad setting fails before anything is written
    _logger.info('Downloading %s to %s', fetch_url, path)
    tmp = _new_part(cache, name)
    try:
        cache.mkdir(parents=True, exist_ok=True)
        actual, length_known = _fetch(fetch_url, tmp, seconds, progress, size)
        _check_weights_file(tmp, fetch_url, sha256, actual, size=size)
        if sha256 is None and size is None and not length_known and checkpoint_format(tmp) == 'pickle':
            # torch's legacy format has no checksum and no length, and the server announced none: a connection
            # closed early is told from the end of the file only by reading it through
            try:
                load_checkpoint_file(tmp, verify=False)
            except CheckpointCorruptedError as e:
                raise DownloadError(f'download of {fetch_url} is incomplete or damaged: the server announced no '
                                    f'length, and what came does not read to its end ({e})') from None
        digest_path(path).unlink(missing_ok=True)
        os.replace(tmp, path)
        if sha256 is None:
            write_digest(path, actual)
    except OSError as error:  # the network's errors are DownloadErrors: this is the cache folder's
        raise _cache_write_error(fetch_url, cache, error, size) from error
    finally:
        try:  # (in a cache "folder" that is a file, this fails too: the error above is the one to see)
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
    return path


def _cache_write_error(url: str, cache: Path, error: OSError, size: Optional[int]) -> CheckpointError:
    import errno
    why = error.strerror or str(error)
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        why += f' (the file has {size} bytes)' if size is not None else ''
    where = f' ({error.filename or cache})'
    # "File exists" / "Not a directory" of mkdir: say which part of the cache folder's path is not a folder
    for part in (cache, *cache.parents):
        if part.is_symlink() and not part.exists():
            where = f' ({part} is a symbolic link to {os.readlink(part)}, which does not exist)'
            break
        if part.exists():
            if not part.is_dir():
                where = f' ({part} is a file, not a folder)'
            break
    return CheckpointError(
        f'could not write the download of {url} into the cache folder {cache}: {why}{where}. '
        'Give timm.create_model another cache_dir=... (or set TORCH_HOME) to a writable folder with room, or fetch '
        'the file by hand and pass pretrained_cfg_overlay=dict(file=...)')


# Members of a release archive that may hold weights, and the largest one unpacked (a guard against zip bombs).
_CHECKPOINT_SUFFIXES = ('.pth', '.pt', '.bin', '.ckpt', '.safetensors')
_MAX_MEMBER_BYTES = 16 << 30


def _unsafe_member(info: zipfile.ZipInfo) -> Optional[str]:
    """Why an archive member must not be unpacked (absolute path, '..', a drive, a link), or None."""
    name = info.filename.replace('\\', '/')
    if name.startswith('/') or (len(name) > 1 and name[1] == ':'):
        return 'an absolute path'
    if '..' in name.split('/'):
        return "a '..' component"
    if ((info.external_attr >> 16) & 0o170000) == 0o120000:
        return 'a symbolic link'
    return None


def _crc32_file(path: Path) -> int:
    crc = 0
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
            crc = zlib.crc32(chunk, crc)
    return crc


def _unpack_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path, label: str) -> None:
    """Stream ``info`` to ``target`` the way a download goes into the cache: through a temporary file of its writer,
    checked against the size and CRC-32 the archive records, moved into place only then, its sha256 written beside
    it (a legacy-format member has no CRCs of its own to check it by when it is loaded later)."""
    tmp = _new_part(target.parent, target.name)
    try:
        crc, digest, written = 0, hashlib.sha256(), 0
        with archive.open(info) as src, open(tmp, 'wb') as dst:
            for chunk in iter(lambda: src.read(1 << 20), b''):
                dst.write(chunk)
                crc, written = zlib.crc32(chunk, crc), written + len(chunk)
                digest.update(chunk)
                if written > info.file_size:
                    break  # zipfile stops at the recorded size; this does not rely on it
        # zipfile checks the CRC-32 of what it read, not that the data runs to the recorded size
        if written != info.file_size or crc != info.CRC:
            raise CheckpointCorruptedError(
                f'{label} is corrupted: {info.filename} unpacks to {written} bytes (CRC-32 {crc:08x}), the archive '
                f'records {info.file_size} bytes (CRC-32 {info.CRC:08x})')
        digest_path(target).unlink(missing_ok=True)  # never a stale digest beside the new file
        os.replace(tmp, target)
        write_digest(target, digest.hexdigest())
    finally:
        tmp.unlink(missing_ok=True)


def extract_checkpoint(path: Union[str, Path], member: Optional[str] = None,
                       out_dir: Optional[Union[str, Path]] = None) -> Path:
    """The checkpoint file a release archive holds, unpacked next to it; any other file is returned as it is.

    Some releases (Focus-DETR's, for one) publish ``name.zip`` holding a ``.pth``. A file saved by ``torch.save``
    is itself a zip (``<name>/data.pkl``) and is returned unchanged. Otherwise every member name is checked first
    (no absolute path, no ``..``, no link: the archive is refused whole), then the single member ending in
    ``.pth``/``.pt``/``.bin``/``.ckpt``/``.safetensors`` (or ``member``; ``model_final.pth`` wins among several)
    is streamed to ``<out_dir or the archive's folder>/<archive stem>/<member file name>`` through a temporary
    file of its writer, checked against the size and CRC-32 the archive records before it is moved into place with
    its sha256 beside it (so a later load checks it), and reused when already there with the right size and CRC-32.
    Temporary files of extractions that were killed midway are removed, as :func:`download_weights` does. The
    member is only copied, never loaded here.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f'checkpoint file {path} does not exist')
    if not zipfile.is_zipfile(path):
        return path
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
            names = [i.filename for i in infos]
            if any(n.count('/') == 1 and n.endswith('/data.pkl') for n in names):
                return path  # torch.save's own zip format
            unsafe = [(i.filename, why) for i in infos if (why := _unsafe_member(i))]
            if unsafe:
                shown = ', '.join(f'{n!r} ({why})' for n, why in unsafe[:5])
                raise CheckpointError(f'archive {path} was not unpacked: member names that would write outside its '
                                      f'folder: {shown}')
            files = [i for i in infos if not i.is_dir() and not i.filename.startswith('__MACOSX/')]
            if member is not None:
                chosen = [i for i in files if i.filename == member or i.filename.rsplit('/', 1)[-1] == member]
                if not chosen:
                    raise CheckpointError(f'archive {path} has no member {member!r}; it holds: {summarise_keys(names)}')
            else:
                chosen = [i for i in files if i.filename.lower().endswith(_CHECKPOINT_SUFFIXES)]
                if len(chosen) > 1:
                    final = [i for i in chosen if i.filename.rsplit('/', 1)[-1] == 'model_final.pth']
                    chosen = final if len(final) == 1 else chosen
                if not chosen:
                    raise CheckpointError(f'archive {path} holds no checkpoint ({", ".join(_CHECKPOINT_SUFFIXES)}); '
                                          f'its members: {summarise_keys(names)}')
                if len(chosen) > 1:
                    raise CheckpointError(f'archive {path} holds several checkpoints, pass member= one of: '
                                          f'{summarise_keys([i.filename for i in chosen])}')
            info = chosen[0]
            if info.file_size > _MAX_MEMBER_BYTES:
                raise CheckpointError(f'archive member {info.filename} of {path} unpacks to {info.file_size} bytes, '
                                      f'more than the {_MAX_MEMBER_BYTES} a checkpoint may have')
            target_dir = Path(out_dir) if out_dir is not None else path.parent / path.stem
            target = target_dir / info.filename.rsplit('/', 1)[-1]
            if target.is_file() and target.stat().st_size == info.file_size and _crc32_file(target) == info.CRC:
                return target  # (written before: nothing to write, also in a read-only folder)
            try:
                target_dir.mkdir(parents=True, exist_ok=True)
                _unpack_member(archive, info, target, f'archive {path}')
            except OSError as error:  # the archive's own faults are zipfile's errors: this is the folder's
                raise CheckpointError(
                    f'could not unpack {info.filename} of {path} into {target_dir}: {error.strerror or error} '
                    f'({error.filename or target_dir}). Pass out_dir=... a writable folder with room (or copy the '
                    'archive to one)') from error
            return target
    except (zipfile.BadZipFile, EOFError, zlib_error) as e:
        raise CheckpointError(f'archive {path} is truncated or corrupted: {e}') from e


class SkippedObject:
    """What a numpy object in a checkpoint reads as: nothing of it is built and no numpy code runs.

    Training checkpoints keep numpy arrays and scalars beside the weights (the training history, random states,
    best scores). :func:`load_checkpoint_file` maps the few numpy names that pickle such data (``_reconstruct``,
    ``ndarray``, ``dtype``, ``scalar``) to this inert class, so the unpickler builds placeholders instead of calling
    numpy; every other global still fails torch's weights-only check.
    """

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state) -> None:
        pass

    def __repr__(self) -> str:
        return '<numpy object, not loaded>'


# The globals that pickled numpy arrays, scalars and dtypes reference (numpy 1.x and 2.x module paths).
_NUMPY_DATA_GLOBALS = tuple(
    f'{module}.{name}'
    for module in ('numpy.core.multiarray', 'numpy._core.multiarray') for name in ('_reconstruct', 'scalar')
) + ('numpy.ndarray', 'numpy.dtype')


def _skipped_numpy_globals() -> List[Any]:
    return [(SkippedObject, name) for name in _NUMPY_DATA_GLOBALS]


def load_checkpoint_file(path: Union[str, Path], extra_globals: Sequence[Any] = (),
                         map_location: Any = 'cpu', verify: bool = True, skip_numpy: bool = True) -> Dict[str, Any]:
    """Read a checkpoint without executing pickled code and return what it holds.

    The file is first checked with :func:`~visionattn.integrity.verify_checkpoint` (its ``.sha256`` beside it,
    else zip CRC-32s or the safetensors header), so bytes changed since it was written fail here, naming the
    damaged member, instead of loading as wrong weights; ``verify=False`` only where the caller has just checked
    it (:func:`download_weights` does). ``.safetensors`` files go through safetensors; everything else through
    ``torch.load(weights_only=True)`` with :data:`SAFE_GLOBALS` (and ``extra_globals``, plain data classes a
    caller trusts) allowed. With ``skip_numpy`` (the default) numpy arrays and scalars beside the weights (an
    engine checkpoint's history of an older visionattn, an official checkpoint's ``best_acc``) read as
    :class:`SkippedObject` placeholders: only the tensors are loaded, and no numpy code runs. Errors name the file
    and say what is wrong with it.
    """
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f'checkpoint file {path} is a directory, not a file')
    if not path.is_file():
        raise CheckpointError(f'checkpoint file {path} does not exist')
    if path.stat().st_size == 0:
        raise CheckpointError(f'checkpoint file {path} is empty (0 bytes)')
    if verify:
        verify_checkpoint(path)
    # the reader by the file's first bytes, not its name (a download URL need not end in .safetensors)
    if checkpoint_format(path) == 'safetensors':
        try:
            return load_safetensors(str(path), device='cpu')
        except SafetensorError as e:
            raise CheckpointCorruptedError(f'checkpoint file {path} is truncated or corrupted: {e}') from e
    allowed = [*SAFE_GLOBALS, *extra_globals, *(_skipped_numpy_globals() if skip_numpy else ())]
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        if 'weights only load failed' in str(e).lower() and 'unsupported global' in str(e).lower():
            detail = next((line.strip() for line in str(e).splitlines() if 'Unsupported global' in line), str(e))
            raise CheckpointError(
                f'checkpoint file {path} holds objects that are not plain weights and was not loaded, because '
                f'loading them would run code from the file ({detail})') from e
        raise CheckpointCorruptedError(f'checkpoint file {path} is truncated or corrupted: {e}') from e
    # (SafetensorError: a .safetensors file cut inside its header, which the first bytes do not show as one)
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, SafetensorError) as e:
        raise CheckpointCorruptedError(f'checkpoint file {path} is truncated or corrupted: {e}') from e


def unwrap_state_dict(checkpoint: Dict[str, Any], prefixes: Iterable[str] = ('module.',)) -> Dict[str, torch.Tensor]:
    """Take the weights out of a training checkpoint: unwrap ``state_dict``/``model`` and strip ``module.``."""
    state_dict = checkpoint
    # Training checkpoints keep scalars (epoch, best accuracy) beside the wrapped weights, so descend into a
    # wrapper key whenever one holds a dict.
    while isinstance(state_dict, dict):
        key = next((k for k in _WRAPPER_KEYS if isinstance(state_dict.get(k), dict)), None)
        if key is None:
            break
        state_dict = state_dict[key]
    if not isinstance(state_dict, dict) or not any(isinstance(v, torch.Tensor) for v in state_dict.values()):
        found = sorted(checkpoint) if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise CheckpointError(f'found no weights in the checkpoint (top-level entries: {found})')
    out = {}
    for k, v in state_dict.items():
        for prefix in prefixes:
            if k.startswith(prefix):
                k = k[len(prefix):]
        out[k] = v
    return out


def summarise_keys(keys: List[str], limit: int = 12) -> str:
    """The first ``limit`` names and how many more: for messages about checkpoints with many entries."""
    shown = ', '.join(keys[:limit])
    return shown + (f', ... ({len(keys) - limit} more)' if len(keys) > limit else '')


def check_state_dict(
        state_dict: Dict[str, torch.Tensor],
        model: nn.Module,
        allow_adapted: Iterable[str] = (),
        source: str = 'checkpoint',
) -> None:
    """Raise :class:`CheckpointMismatchError` unless ``state_dict`` fits ``model`` key for key and shape for shape.

    Args:
        state_dict: Converted weights, in the model's layout.
        model: The model they are meant for.
        allow_adapted: Parameter-name prefixes timm adapts after conversion (a classifier for another number of
            classes, a first conv for other input channels); their absence or shape is not an error.
        source: Where the weights came from, for the message.
    """
    expected = model.state_dict()
    adapted = tuple(allow_adapted)
    missing = [k for k in expected if k not in state_dict and not k.startswith(adapted)]
    unexpected = [k for k in state_dict if k not in expected and not k.startswith(adapted)]
    mismatched = []
    for k, v in expected.items():
        if k not in state_dict or k.startswith(adapted):
            continue
        got = state_dict[k]
        if not isinstance(got, torch.Tensor):  # a numpy array read as a placeholder, a number, a string
            mismatched.append(f'{k}: checkpoint holds a {type(got).__name__}, not a tensor')
        elif tuple(got.shape) != tuple(v.shape):
            mismatched.append(f'{k}: checkpoint {tuple(got.shape)} vs model {tuple(v.shape)}')
        elif v.is_floating_point() and not (got.is_floating_point() or got.is_complex()):
            # integer or bool values would be cast into the weights without a word
            mismatched.append(f'{k}: checkpoint dtype {got.dtype} vs model {v.dtype}')
    if missing or unexpected or mismatched:
        lines = [f'{source} does not fit {type(model).__name__}; nothing was loaded.']
        if missing:
            lines.append(f'  missing keys ({len(missing)}): {summarise_keys(missing)}')
        if unexpected:
            lines.append(f'  unexpected keys ({len(unexpected)}): {summarise_keys(unexpected)}')
        if mismatched:
            lines.append(f'  shape mismatches ({len(mismatched)}): {summarise_keys(mismatched)}')
        raise CheckpointMismatchError('\n'.join(lines))


def _adapted_prefixes(model: nn.Module, pretrained_cfg: Dict[str, Any]) -> List[str]:
    """Prefixes of the tensors timm's ``load_pretrained`` will re-shape or drop after our conversion."""
    def names(key):
        value = pretrained_cfg.get(key) or ()
        return [value] if isinstance(value, str) else list(value)

    prefixes = []
    if getattr(model, 'num_classes', None) != pretrained_cfg.get('num_classes'):
        prefixes += names('classifier')
    source_chans = (pretrained_cfg.get('input_size') or (3,))[0]
    for name in names('first_conv'):
        if getattr(model.get_submodule(name), 'in_channels', source_chans) != source_chans:
            prefixes.append(name)
    return [p + '.' for p in prefixes]


def _keep_fitting_classifier(state_dict: Dict[str, torch.Tensor], model: nn.Module) -> None:
    """A fine-tuned checkpoint for this model's number of classes (a ``file`` or ``local-dir`` source) keeps its
    classifier: timm's loader drops the classifier whenever the model's class count differs from the pretrained
    cfg's (1000 for ImageNet weights), so where every classifier tensor of the checkpoint fits the model's, the cfg
    is told the checkpoint's class count (which it then describes truly)."""
    cfg = model.pretrained_cfg
    num_classes = getattr(model, 'num_classes', None)
    if not num_classes or num_classes == cfg.get('num_classes'):
        return
    names = cfg.get('classifier') or ()
    names = [names] if isinstance(names, str) else list(names)
    expected = model.state_dict()
    head = [k for k in expected if any(k.startswith(name + '.') for name in names)]
    if head and all(k in state_dict and tuple(state_dict[k].shape) == tuple(expected[k].shape) for k in head):
        cfg['num_classes'] = num_classes


_RATE_ARGS = ('drop_rate', 'drop_path_rate', 'attn_drop_rate', 'proj_drop_rate', 'pos_drop_rate')


def _check_build_args(variant: str, pretrained, kwargs: Dict[str, Any]) -> None:
    """Refuse the values a model would take silently or fail on deep inside (issue 21)."""
    if not isinstance(pretrained, bool):
        raise ValueError(f'{variant}: pretrained={pretrained!r} must be True or False')
    num_classes = kwargs.get('num_classes')
    if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, int)
                                    or num_classes < 0):
        raise ValueError(f'{variant}: num_classes={num_classes!r} must be an int >= 0 (0: no classifier)')
    for name in _RATE_ARGS:
        value = kwargs.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not 0.0 <= value <= 1.0):
            raise ValueError(f'{variant}: {name}={value!r} must be a number in [0, 1]')
    overlay = kwargs.get('pretrained_cfg_overlay') or {}
    if 'file' in overlay and not overlay['file']:
        raise ValueError(f'{variant}: pretrained_cfg_overlay file={overlay["file"]!r} is empty; give the path of a '
                         'checkpoint, or leave file out to download the default weights')


# Arguments of build_model that configure the build, not the architecture (what an export must not record).
_NOT_MODEL_ARGS = frozenset({
    'pretrained_cfg', 'pretrained_cfg_overlay', 'cache_dir', 'pretrained_model_args', 'pretrained_strict',
    'feature_cfg', 'kwargs_filter', 'model_cfg', 'pruned', 'features_only', 'out_indices', 'feature_cls', 'device',
    'dtype'})
_LOCAL_DIR_WEIGHTS = ('model.safetensors', 'pytorch_model.bin')  # timm's save_for_hf names, in its order


def _local_dir_weights(folder: Path) -> Path:
    """The weights file of a ``local-dir:`` folder (what ``timm.models.save_for_hf`` writes)."""
    for name in _LOCAL_DIR_WEIGHTS:
        if (folder / name).is_file():
            return folder / name
    raise CheckpointError(f'{folder} holds no weights: expected {" or ".join(_LOCAL_DIR_WEIGHTS)} (timm\'s '
                          'save_for_hf layout, as tools/publish.py writes it)')


def _offline_hint(variant: str, url: str, cache_dir: Optional[Union[str, Path]]) -> str:
    facts = weight_file_facts(url)
    known = (f', sha256 {facts["sha256"]}' if facts['sha256'] else '') + (
        f', {facts["size"]} bytes' if facts['size'] is not None else '')
    return (f'Without network access, fetch the file by hand on a machine that has it: {facts["url"]} (save it as '
            f'{facts["name"]}{known}). Then either pass pretrained_cfg_overlay=dict(file="/path/to/{facts["name"]}") '
            f'to timm.create_model("{variant}", pretrained=True, ...), or put it at {cache_path(url, cache_dir)} '
            '(create_model\'s cache_dir, else torch hub\'s checkpoints folder), where pretrained=True takes it '
            'without downloading.')


PUBLISH_HINT = ('This is a checkpoint of tools/train.py: the task model\'s weights under its own prefixes (e.g. '
                '"classifier."), beside the optimizer and the training history. Export the weights with python '
                'tools/publish.py CONFIG CHECKPOINT OUT_DIR and load timm.create_model("local-dir:OUT_DIR", '
                'pretrained=True)')


def is_engine_checkpoint(checkpoint: Any) -> bool:
    """Whether a loaded checkpoint is one that visionattn's tools/train.py (mmengine's Runner) wrote."""
    return isinstance(checkpoint, dict) and {'meta', 'state_dict', 'message_hub'} <= set(checkpoint)


def build_model(
        model_cls: Callable[..., nn.Module],
        variant: str,
        pretrained: bool = False,
        pretrained_filter_fn: Optional[Callable] = None,
        **kwargs,
) -> nn.Module:
    """timm's ``build_model_with_cfg`` with visionattn's download, safe load and strict conversion check.

    Weight sources in the pretrained cfg: ``file`` (a local path), a ``local-dir:`` folder (its
    ``model.safetensors``) or ``url`` go through :func:`download_weights` (into ``cache_dir`` when
    ``timm.create_model`` is given one) and :func:`load_checkpoint_file`; an ``hf_hub_id`` stays with timm, which
    reads safetensors from the hub. Either way ``pretrained_filter_fn`` converts the official layout and
    :func:`check_state_dict` vets the result before timm adapts the classifier and first conv and copies the
    weights. The model keeps the architecture arguments it was built with as ``_build_args`` (the family's own
    defaults for ``features_only`` included), so that ``tools/publish.py`` can rebuild it for an export.
    """
    _check_build_args(variant, pretrained, kwargs)
    weights, source, local_dir = None, f'the checkpoint of {variant}', False
    if pretrained:
        cfg = resolve_pretrained_cfg(
            variant,
            pretrained_cfg=kwargs.get('pretrained_cfg'),
            pretrained_cfg_overlay=kwargs.get('pretrained_cfg_overlay'),
        )
        local_dir = cfg.source == 'local-dir'
        if local_dir or (not cfg.hf_hub_id and not cfg.state_dict):
            if not (cfg.file or cfg.url):
                raise RuntimeError(f'{variant} has no pretrained weights; use pretrained=False for a random init')
            if local_dir:
                path = _local_dir_weights(Path(cfg.file))
            elif cfg.file:
                path = cfg.file
            else:
                try:
                    path = download_weights(cfg.url, cache_dir=kwargs.get('cache_dir'))
                except DownloadError as e:
                    name = f'{variant}.{cfg.tag}' if cfg.tag else variant
                    raise DownloadError(f'{e}\n{_offline_hint(name, cfg.url, kwargs.get("cache_dir"))}') from e
            # download_weights has verified what it returns; a local file is verified on load
            try:
                weights = load_checkpoint_file(path, verify=bool(cfg.file) or local_dir)
            except CheckpointCorruptedError as e:
                if cfg.file or local_dir:
                    raise
                # a cached download that checks out but does not read (a torch legacy file cut off by a server that
                # announced no length, by an older visionattn): out of the cache, so that the next call fetches it
                Path(path).unlink(missing_ok=True)
                digest_path(path).unlink(missing_ok=True)
                raise CheckpointCorruptedError(f'{e}\nIt was removed from the cache; the next call downloads it '
                                               'again.') from e
            source = f'checkpoint {path}'
            # timm deep-copies its pretrained cfg, so it gets a token that selects its state-dict path (also for a
            # local-dir source, which timm would otherwise read itself) and the filter below swaps the real weights
            # in.
            kwargs['pretrained_cfg_overlay'] = dict(kwargs.get('pretrained_cfg_overlay') or {}, state_dict={'': source},
                                                    **({'source': None} if local_dir else {}))

    def filter_and_check(state_dict: Dict[str, Any], model: nn.Module) -> Dict[str, torch.Tensor]:
        model.pretrained_cfg.pop('state_dict', None)  # the cfg keeps where the weights came from, not the weights
        if local_dir:
            model.pretrained_cfg['source'] = 'local-dir'
        state_dict = weights if weights is not None else state_dict
        raw = state_dict
        if pretrained_filter_fn is not None:
            state_dict = pretrained_filter_fn(state_dict, model)
        else:
            state_dict = unwrap_state_dict(state_dict)
        adapted = _adapted_prefixes(model, model.pretrained_cfg)
        try:
            check_state_dict(state_dict, model, adapted, source=source)
        except CheckpointMismatchError as e:
            if not is_engine_checkpoint(raw):
                raise
            raise CheckpointMismatchError(f'{e}\n  {PUBLISH_HINT}') from None
        _keep_fitting_classifier(state_dict, model)
        return state_dict

    model = build_model_with_cfg(model_cls, variant, pretrained, pretrained_filter_fn=filter_and_check, **kwargs)
    model._build_args = {k: v for k, v in kwargs.items() if k not in _NOT_MODEL_ARGS}
    return model
