"""Files of arrays that are written atomically and read back checked, never unpickled.

One home for what the model file, the training checkpoint and the `Ratings` folder share: a
write goes to a temporary name beside its target, is flushed to disk and renamed over it, so a
crash or an error leaves the old file (or folder) or the new one, never a part; a read checks
the format marker and version before anything else is trusted.
"""

import contextlib
import errno
import os
import shutil
import tempfile
import zipfile
import zlib
from pathlib import Path

import numpy as np

__all__ = ["atomic_folder", "check_header", "header", "read_npz", "write_npz"]


def header(fmt, version):
    """The members that mark a file's format and version."""
    return {"fastcofi_format": np.array(fmt), "format_version": np.array(version, dtype=np.int64)}


def check_header(path, arrays, fmt, versions, error, what):
    """The file's format version, after checking its marker; ``error(path, message)`` else."""
    marker = arrays.get("fastcofi_format")
    if marker is None:
        raise error(path, f"not a {what}: an .npz without the 'fastcofi_format' marker "
                          f"(it holds {sorted(arrays)[:8]})")
    if marker.dtype.kind != "U" or marker.ndim != 0 or str(marker) != fmt:
        raise error(path, f"not a {what}: the format marker is {marker!r}, expected {fmt!r}")
    version = arrays.get("format_version")
    if version is None or version.dtype.kind not in "iu" or version.ndim != 0:
        raise error(path, f"the member 'format_version' is missing or not a 0-d integer; "
                          f"expected the {what}'s format version")
    version = int(version)
    if version not in versions:
        newer = "a newer" if version > max(versions) else "an unknown"
        raise error(path, f"{newer} {what} format version {version}; this fastcofi reads "
                          f"versions {', '.join(map(str, versions))} (upgrade fastcofi to load it)")
    return version


def _new_file_mode(path):
    """Keep the mode of a file being replaced; else the mode open() would give (0o666 - umask)."""
    try:
        return path.stat().st_mode & 0o7777
    except OSError:
        umask = os.umask(0o022)
        os.umask(umask)
        return 0o666 & ~umask


def _fsync_dir(folder):
    """Make the rename durable where the platform allows opening a directory."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_npz(path, arrays, what):
    """Write ``arrays`` to the ``.npz`` file ``path`` (used exactly as given) atomically."""
    path = Path(os.fspath(path))
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, f"is a directory; expected a {what} path", str(path))
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise FileNotFoundError(
            errno.ENOENT, f"the folder to write the {what} in does not exist", str(folder)
        )
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _new_file_mode(path))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(folder)


@contextlib.contextmanager
def atomic_folder(folder):
    """Yield a temporary folder beside ``folder`` to fill; on success it replaces ``folder``."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        yield tmp
        if folder.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{folder.name}.old.", dir=folder.parent))
            os.replace(folder, old / "previous")
            os.replace(tmp, folder)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_dir(folder.parent)


def read_npz(path, error, what):
    """Every member of an ``.npz`` as a dict of arrays; ``error(path, message)`` for anything
    unreadable (not a zip, a failed CRC, a pickled member, a truncated stream)."""
    path = Path(os.fspath(path))
    if not path.exists():
        raise FileNotFoundError(errno.ENOENT, f"no such {what}", str(path))
    if path.is_dir():
        raise error(path, f"is a directory; expected a fastcofi {what} (.npz)")
    with open(path, "rb") as f:
        head = f.read(4)
        if not head:
            raise error(path, f"the file is empty; expected a fastcofi {what} (.npz)")
        if head != b"PK\x03\x04":
            raise error(path, f"not a fastcofi {what}: expected an .npz (zip) archive, "
                              f"found a file starting with {head!r}")
        f.seek(0)
        try:
            # numpy reads each member's bytes without reaching the end of its stream, where
            # zipfile checks the CRC: check every member first so corruption cannot pass.
            with zipfile.ZipFile(f) as archive:
                bad = archive.testzip()
            if bad is not None:
                raise error(path, f"corrupted {what}: the member {bad!r} fails its CRC check")
            f.seek(0)
            arrays = {}
            with np.load(f, allow_pickle=False) as npz:
                for name in list(npz.files):
                    try:
                        value = npz[name]
                    except ValueError as exc:
                        if "pickle" in str(exc).lower():
                            raise error(
                                path, f"member {name!r} holds Python objects (a pickle); a "
                                f"fastcofi {what} holds plain arrays only, and pickles are "
                                "never loaded"
                            ) from None
                        raise
                    if not isinstance(value, np.ndarray):
                        raise error(path, f"not a fastcofi {what}: the member {name!r} is not "
                                          "a .npy array")
                    arrays[name] = value
        except error:
            raise
        except (zipfile.BadZipFile, EOFError, ValueError, OSError, zlib.error, KeyError,
                TypeError, RuntimeError, NotImplementedError, MemoryError) as exc:
            raise error(
                path, f"corrupted or truncated {what}: cannot read it as .npz ({exc})"
            ) from None
    return arrays
