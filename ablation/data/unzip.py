"""Bounded, atomic zip extraction for `ablate data fetch`.

A downloaded archive is untrusted: before anything is written its member count, total uncompressed size and
compression ratios are capped (a zip bomb is refused in one line), names that escape the folder and
symlinks are refused, and while extracting the bytes actually inflated are counted against each member's
declared size, because the header that declares it can lie. Members land in a temporary folder inside DEST
(same filesystem) and only a complete tree is renamed into place, so a failure leaves DEST as it was. An entry
of DEST with the archive's top folder name is never replaced: the same files are kept as they are, other content
is refused in one line (it may be the user's own folder; only the staging folder it created is ever removed).
"""

from __future__ import annotations

import errno
import filecmp
import os
import re
import shutil
import stat
import struct
import tempfile
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from ablation.errors import UserError, problem

CHUNK = 1 << 20

# The AnimeGAN dataset is ~0.5 GB of JPEGs in ~20k members; the caps leave room for a larger --url dataset.
MAX_MEMBERS = 100_000  # ~5x the AnimeGAN dataset's file count
MAX_TOTAL_BYTES = 8 << 30  # ~16x its extracted size; stops a bomb well before it fills a disk
MAX_RATIO = 100.0  # JPEG/PNG barely deflate (~1:1), raw bitmaps ~10:1; bombs sit near deflate's ~1000:1
RATIO_FLOOR_BYTES = 1 << 20  # a member (or archive) smaller than this cannot hurt, whatever its ratio


@dataclass(frozen=True)
class ZipLimits:
    """Caps checked against the archive's central directory before extraction, and again while writing."""

    max_members: int = MAX_MEMBERS
    max_total_bytes: int = MAX_TOTAL_BYTES
    max_ratio: float = MAX_RATIO  # uncompressed:compressed, per member and for the whole archive
    ratio_floor_bytes: int = RATIO_FLOOR_BYTES


DEFAULT_LIMITS = ZipLimits()


class BadArchive(UserError):
    """The archive itself is refused (corrupt, hostile or over a cap): re-downloading it would not help."""


def _end_record_count(archive: Path) -> int | None:
    """Member count from the end-of-central-directory record, read before `zipfile` loads every entry
    into memory; None when absent (zipfile then reports the broken archive)."""
    with open(archive, "rb") as handle:
        size = handle.seek(0, os.SEEK_END)
        handle.seek(max(0, size - 22 - 0xFFFF))  # the record (22 bytes) sits before a comment of <64 KiB
        tail = handle.read()
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or at + 22 > len(tail):
        return None
    count = struct.unpack_from("<H", tail, at + 10)[0]
    if count == 0xFFFF and at >= 20 and tail[at - 20:at - 16] == b"PK\x06\x07":  # zip64: real count elsewhere
        with open(archive, "rb") as handle:
            handle.seek(struct.unpack_from("<Q", tail, at - 12)[0])
            record = handle.read(56)
        return struct.unpack_from("<Q", record, 32)[0] if record[:4] == b"PK\x06\x06" else None
    return count


def _check_name(info: zipfile.ZipInfo, source: str) -> None:
    name = info.filename
    if name.startswith(("/", "\\")) or re.match(r"[A-Za-z]:", name):
        raise BadArchive(problem(source, f"archive member {name}", "a path inside the archive", "<absolute path>"))
    if ".." in PurePosixPath(name.replace("\\", "/")).parts:
        raise BadArchive(problem(source, f"archive member {name}", "a path inside the archive",
                                 "<escapes the folder>"))
    kind = stat.S_IFMT(info.external_attr >> 16)  # the unix file type, when the creator stored one
    if kind and kind not in (stat.S_IFREG, stat.S_IFDIR):  # a symlink could point the next write outside DEST
        given = "<symlink>" if kind == stat.S_IFLNK else "<special file>"
        raise BadArchive(problem(source, f"archive member {name}", "a regular file or folder", given))
    if info.flag_bits & 0x1:
        raise BadArchive(problem(source, f"archive member {name}", "an unencrypted member", "<encrypted>"))


def _ratio(size: int, packed: int) -> str:
    return f"{size / max(packed, 1):.0f}:1 ({size} bytes from {packed})"


def check_members(members: list[zipfile.ZipInfo], source: str, limits: ZipLimits) -> None:
    """Refuse the archive from its declared sizes alone, before a byte is written."""
    if len(members) > limits.max_members:
        raise BadArchive(problem(source, "archive members", f"at most {limits.max_members}", len(members)))
    for info in members:
        _check_name(info, source)
    total = sum(info.file_size for info in members)
    if total > limits.max_total_bytes:
        raise BadArchive(problem(source, "archive uncompressed size", f"at most {limits.max_total_bytes} bytes",
                                 f"<{total} bytes>"))
    for info in members:
        if info.file_size > limits.ratio_floor_bytes and info.file_size > limits.max_ratio * info.compress_size:
            raise BadArchive(problem(source, f"archive member {info.filename}",
                                     f"a compression ratio of at most {limits.max_ratio:g}:1",
                                     f"<{_ratio(info.file_size, info.compress_size)}>"))
    packed = sum(info.compress_size for info in members)
    if total > limits.ratio_floor_bytes and total > limits.max_ratio * packed:  # many small bombs
        raise BadArchive(problem(source, "archive", f"an overall compression ratio of at most {limits.max_ratio:g}:1",
                                 f"<{_ratio(total, packed)}>"))


def _raw(raw: BinaryIO, info: zipfile.ZipInfo) -> Iterator[bytes]:
    """The member's compressed bytes, located through its local header (whose sizes are not trusted)."""
    raw.seek(info.header_offset)
    header = raw.read(30)
    if len(header) < 30 or header[:4] != b"PK\x03\x04":
        raise zipfile.BadZipFile("bad local file header")
    raw.seek(sum(struct.unpack_from("<2H", header, 26)), os.SEEK_CUR)  # skip name and extra field
    left = info.compress_size
    while left:
        block = raw.read(min(CHUNK, left))
        if not block:
            raise zipfile.BadZipFile("archive ends inside the member")
        left -= len(block)
        yield block


def _inflate(zf: zipfile.ZipFile, raw: BinaryIO, info: zipfile.ZipInfo) -> Iterator[bytes]:
    """The member's bytes in blocks. Deflate output is bounded to one byte past the declared size however much
    the stream would inflate to, so the caller sees a lie without inflating the rest."""
    if info.compress_type == zipfile.ZIP_STORED:
        yield from _raw(raw, info)
    elif info.compress_type == zipfile.ZIP_DEFLATED:
        inflater, produced = zlib.decompressobj(-zlib.MAX_WBITS), 0
        blocks = _raw(raw, info)
        while not inflater.eof:
            feed = inflater.unconsumed_tail or next(blocks, b"")
            # max_length bounds memory and lets a lie show as a single byte over the declared size
            data = inflater.decompress(feed, min(CHUNK, info.file_size - produced + 1))
            if not data and not feed:
                break  # compressed data exhausted before the stream's end: the size/CRC checks report it
            produced += len(data)
            yield data
    else:  # bzip2/lzma: zipfile's reader stops at the declared size itself
        with zf.open(info) as member:
            yield from iter(lambda: member.read(CHUNK), b"")


def _write_member(zf: zipfile.ZipFile, raw: BinaryIO, info: zipfile.ZipInfo, target: Path, source: str,
                  budget: int) -> int:
    """Write one file member, counting what is really inflated; returns the bytes written. `budget` is what
    the archive-wide cap still allows."""
    name, written, crc = info.filename, 0, 0
    try:
        with open(target, "wb") as out:
            for data in _inflate(zf, raw, info):
                written += len(data)
                if written > info.file_size:  # the header lied: stop before writing the excess
                    raise BadArchive(problem(source, f"archive member {name}",
                                             f"at most {info.file_size} bytes (its declared size)", "<more>"))
                if written > budget:
                    raise BadArchive(problem(source, "archive uncompressed size",
                                             f"at most {budget} more bytes (the cap)", "<more>"))
                crc = zlib.crc32(data, crc)
                out.write(data)
    except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
        raise BadArchive(problem(source, f"archive member {name}", "valid compressed data", f"<{exc}>")) from None
    if written != info.file_size or crc != info.CRC:
        raise BadArchive(problem(source, f"archive member {name}", "a matching CRC", "<corrupt>"))
    return written


def _write_members(zf: zipfile.ZipFile, archive: Path, tree: Path, dest: Path, source: str,
                   limits: ZipLimits) -> None:
    budget = limits.max_total_bytes
    with open(archive, "rb") as raw:
        for info in zf.infolist():
            target = tree / info.filename
            if not target.resolve().is_relative_to(tree):  # belt and braces after _check_name
                raise BadArchive(problem(source, f"archive member {info.filename}", "a path inside the archive",
                                         "<escapes the folder>"))
            try:
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                budget -= _write_member(zf, raw, info, target, source, budget)
            except OSError as exc:  # disk full, permissions, or a file and a folder of the same name
                raise UserError(problem(dest, f"archive member {info.filename}", "a path it can write",
                                        f"<{exc.strerror or exc}>")) from None


def _same_tree(ours: Path, theirs: Path) -> bool:
    """Whether `theirs` holds exactly the files of `ours`, byte for byte (the dataset fetched before)."""
    if ours.is_dir() != theirs.is_dir() or theirs.is_symlink():
        return False
    if not ours.is_dir():
        return filecmp.cmp(ours, theirs, shallow=False)
    names = {p.relative_to(ours) for p in ours.rglob("*")}
    if names != {p.relative_to(theirs) for p in theirs.rglob("*")}:
        return False
    return all(filecmp.cmp(ours / name, theirs / name, shallow=False) for name in names if (ours / name).is_file())


def _check_targets(tree: Path, dest: Path) -> list[Path]:
    """The top-level entries of `tree` to move into `dest`. One already there with the same files is kept (and
    not moved again); one with other content is refused: it may be the user's own folder, and this extractor
    deletes nothing it did not create."""
    moves = []
    for entry in sorted(tree.iterdir()):
        target = dest / entry.name
        if not os.path.lexists(target):
            moves.append(entry)
        elif not _same_tree(entry, target):
            raise UserError(problem(dest, f"archive folder {entry.name}", f"no {entry.name} in DEST, or the same "
                                    "files (move or rename yours, or fetch into another DEST)",
                                    "<an existing entry with other content>"))
    return moves


def _move_into_place(moves: list[Path], dest: Path) -> None:
    """Rename each entry into `dest` (atomic within one filesystem); a failure moves back those already moved,
    so DEST is as it was. os.rename of a folder never replaces a non-empty one; a file that appeared since the
    check is not replaced either."""
    done: list[tuple[Path, Path]] = []
    try:
        for entry in moves:
            target = dest / entry.name
            if os.path.lexists(target):  # created meanwhile: never replaced
                raise FileExistsError(errno.EEXIST, "appeared during extraction", str(target))
            os.rename(entry, target)
            done.append((entry, target))
    except OSError:
        for origin, now in reversed(done):
            os.rename(now, origin)
        raise


def extract_zip(archive: Path, dest: Path, source: str, limits: ZipLimits = DEFAULT_LIMITS) -> None:
    """Extract `archive` into `dest` (which must exist) within `limits`; `source` names it in errors.

    Raises BadArchive when the archive is refused, zipfile.BadZipFile when it is no zip at all, and
    UserError when DEST cannot be written (the archive itself may be fine)."""
    count = _end_record_count(archive)
    if count is not None and count > limits.max_members:
        raise BadArchive(problem(source, "archive members", f"at most {limits.max_members}", count))
    with zipfile.ZipFile(archive) as zf:
        check_members(zf.infolist(), source, limits)
        # staging holds only what this extraction wrote: removing it never removes anything of the user's
        staging = Path(tempfile.mkdtemp(prefix=".extract-", dir=dest)).resolve()
        tree = staging / "tree"
        try:
            tree.mkdir()
            _write_members(zf, archive, tree, dest, source, limits)
            _move_into_place(_check_targets(tree, dest), dest)
        except OSError as exc:  # a rename into DEST failed (and was undone)
            raise UserError(problem(dest, "extraction", "a writable folder", f"<{exc}>")) from None
        finally:
            shutil.rmtree(staging, ignore_errors=True)
