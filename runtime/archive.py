"""Unpacking a function shipped as a ZIP, refusing archives that could escape or exhaust the disk."""

from __future__ import annotations

import hashlib
import shutil
import stat
import zipfile
from pathlib import Path, PurePosixPath

from runtime.faults import FunctionLoadError

MAX_TOTAL_BYTES = 50 * 1024 * 1024
MAX_FILES = 2000
CHUNK = 1 << 16


def unpack(archive: Path, into: Path, max_bytes: int = MAX_TOTAL_BYTES, max_files: int = MAX_FILES) -> Path:
    """Extract `archive` into a fresh directory under `into` named by its digest; FunctionLoadError if hostile."""
    data = archive.read_bytes()
    target = into / f"zip-{hashlib.sha256(data).hexdigest()[:16]}"
    if target.is_dir():
        return target  # the same archive was unpacked and checked before
    staging = into / f".{target.name}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        with zipfile.ZipFile(archive) as zipped:
            _extract_checked(zipped, archive, staging, max_bytes, max_files)
    except zipfile.BadZipFile as error:
        shutil.rmtree(staging, ignore_errors=True)
        raise FunctionLoadError(f"{archive}: not a valid ZIP archive ({error})") from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    staging.rename(target)
    return target


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
