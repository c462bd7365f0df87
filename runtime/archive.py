"""Unpacking a function shipped as a ZIP, refusing archives that could escape or exhaust the disk."""

from __future__ import annotations

import hashlib
import io
import shutil
import stat
import tempfile
import zipfile
from pathlib import Path, PurePosixPath

from runtime.faults import FunctionLoadError

MAX_TOTAL_BYTES = 50 * 1024 * 1024
MAX_FILES = 2000
CHUNK = 1 << 16


def unpack(archive: Path, into: Path, max_bytes: int = MAX_TOTAL_BYTES, max_files: int = MAX_FILES) -> Path:
    """Extract `archive` into a directory under `into` named by its digest; FunctionLoadError if hostile.

    Many processes may unpack the same archive at once (one worker per host): each extracts into a
    private staging directory and renames it into place; whoever comes second finds the target there
    (same digest, same content) and drops its own copy.
    """
    data = archive.read_bytes()
    target = into / f"zip-{hashlib.sha256(data).hexdigest()[:16]}"
    if target.is_dir():
        return target  # the same archive was unpacked and checked before
    into.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=into))
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zipped:  # the bytes digested, even if the file changes now
            _extract_checked(zipped, archive, staging, max_bytes, max_files)
        _move_into_place(staging, target)
    except zipfile.BadZipFile as error:
        raise FunctionLoadError(f"{archive}: not a valid ZIP archive ({error})") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _move_into_place(staging: Path, target: Path) -> None:
    try:
        staging.rename(target)  # atomic: a reader sees the whole directory or none
    except OSError:
        if not target.is_dir():  # not "another process was first": a real failure
            raise


def _extract_checked(zipped: zipfile.ZipFile, archive: Path, staging: Path, max_bytes: int, max_files: int) -> None:
    members = zipped.infolist()
    if len(members) > max_files:
        raise FunctionLoadError(f"{archive}: refused, {len(members)} entries (at most {max_files})")
    total = 0
    for member in members:
        name = PurePosixPath(member.filename)
        if name.is_absolute() or ".." in name.parts or "\\" in member.filename or ":" in member.filename:
            raise FunctionLoadError(f"{archive}: refused, entry {member.filename!r} points outside the archive")
        if stat.S_ISLNK(member.external_attr >> 16):
            raise FunctionLoadError(f"{archive}: refused, entry {member.filename!r} is a symbolic link")
        destination = staging.joinpath(*name.parts)
        if member.is_dir():
            destination.mkdir(parents=True, exist_ok=True)
            continue
        destination.parent.mkdir(parents=True, exist_ok=True)
        # Count what is really written: a header's declared size can lie (zip bombs).
        with zipped.open(member) as source, open(destination, "wb") as sink:
            while chunk := source.read(CHUNK):
                total += len(chunk)
                if total > max_bytes:
                    raise FunctionLoadError(f"{archive}: refused, unpacks to more than {max_bytes:,} bytes")
                sink.write(chunk)
