"""`ablate data fetch` refuses zip bombs, lying headers, escaping names and symlinks, and extracts atomically.

Real zips built in tmp_path, served over HTTP from 127.0.0.1 through the real download path; no mocks.
"""

from __future__ import annotations

import io
import os
import stat
import struct
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest

from ablation.data.fetch import fetch_dataset
from ablation.data.unzip import ZipLimits
from ablation.errors import UserError

Serve = Callable[[bytes], str]


@pytest.fixture
def serve(http_answer: Callable[[int, bytes], str]) -> Serve:
    """`serve(payload) -> url`: a local HTTP server answering every GET with `payload`."""
    return lambda payload: http_answer(200, payload)


def _zip(members: list[tuple[str | zipfile.ZipInfo, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members:
            zf.writestr(name, data)
    return buffer.getvalue()


def _info(payload: bytes, name: str) -> zipfile.ZipInfo:
    with zipfile.ZipFile(io.BytesIO(payload)) as zf:
        return zf.getinfo(name)


def _populated(dest: Path) -> dict[str, bytes]:
    """DEST as a user might have it: unrelated files plus an older copy of the dataset; returns a snapshot."""
    (dest / "notes").mkdir(parents=True)
    (dest / "notes" / "keep.txt").write_text("mine")
    (dest / "README.md").write_text("my folder")
    (dest / "dataset" / "train_photo").mkdir(parents=True)
    (dest / "dataset" / "train_photo" / "old.jpg").write_bytes(b"old")
    return _snapshot(dest)


def _snapshot(dest: Path) -> dict[str, bytes]:
    """Every path under DEST (files with their bytes, folders as b'/'), so any leftover or loss shows up."""
    return {str(p.relative_to(dest)): (b"/" if p.is_dir() else p.read_bytes()) for p in sorted(dest.rglob("*"))}


def _refused(url: str, dest: Path, limits: ZipLimits | None = None) -> str:
    kwargs = {} if limits is None else {"limits": limits}
    with pytest.raises(UserError) as err:
        fetch_dataset("animegan", dest, url=url, progress=False, **kwargs)
    assert len(err.value.lines) == 1
    return str(err.value)


def test_ratio_bomb_is_refused_with_the_default_caps(serve: Serve, tmp_path: Path) -> None:
    name = "dataset/train_photo/zeros.jpg"
    payload = _zip([("dataset/train_photo/0.jpg", os.urandom(4000)), (name, bytes(50 << 20))])
    info = _info(payload, name)
    url = serve(payload)
    before = _populated(tmp_path)
    ratio = f"{info.file_size / info.compress_size:.0f}:1"
    assert _refused(url, tmp_path) == (f"{url}: archive member {name}: expected a compression ratio of at most "
                                       f"100:1, got <{ratio} ({52428800} bytes from {info.compress_size})>")
    assert _snapshot(tmp_path) == before  # nothing extracted, older dataset and unrelated files untouched


def test_member_count_is_capped(serve: Serve, tmp_path: Path) -> None:
    url = serve(_zip([(f"dataset/train_photo/{i}.jpg", b"x") for i in range(51)]))
    before = _populated(tmp_path)
    assert _refused(url, tmp_path, ZipLimits(max_members=50)) == (
        f"{url}: archive members: expected at most 50, got 51")
    assert _snapshot(tmp_path) == before


def test_member_count_is_capped_when_the_end_record_lies(serve: Serve, tmp_path: Path) -> None:
    payload = bytearray(_zip([(f"dataset/train_photo/{i}.jpg", b"x") for i in range(51)]))
    end = payload.rfind(b"PK\x05\x06")
    payload[end + 8:end + 12] = struct.pack("<2H", 1, 1)  # zipfile walks the central directory, not this count
    url = serve(bytes(payload))
    before = _populated(tmp_path)
    assert _refused(url, tmp_path, ZipLimits(max_members=50)) == (
        f"{url}: archive members: expected at most 50, got 51")
    assert _snapshot(tmp_path) == before


def test_total_uncompressed_size_is_capped(serve: Serve, tmp_path: Path) -> None:
    payload = _zip([("dataset/train_photo/0.jpg", os.urandom(600_000)), ("dataset/train_photo/1.jpg",
                                                                          os.urandom(600_000))])
    url = serve(payload)
    before = _populated(tmp_path)
    assert _refused(url, tmp_path, ZipLimits(max_total_bytes=1 << 20)) == (
        f"{url}: archive uncompressed size: expected at most 1048576 bytes, got <1200000 bytes>")
    assert _snapshot(tmp_path) == before


def test_overall_ratio_is_capped_when_each_member_is_small(serve: Serve, tmp_path: Path) -> None:
    members: list[tuple[str | zipfile.ZipInfo, bytes]] = [(f"dataset/val/{i}.jpg", bytes(60_000)) for i in range(20)]
    payload = _zip(members)
    with zipfile.ZipFile(io.BytesIO(payload)) as zf:
        packed = sum(i.compress_size for i in zf.infolist())
    url = serve(payload)
    before = _populated(tmp_path)
    # each member is under the floor, so only the archive-wide ratio can catch it
    text = _refused(url, tmp_path, ZipLimits(ratio_floor_bytes=64_000))
    assert text == (f"{url}: archive: expected an overall compression ratio of at most 100:1, got "
                    f"<{1_200_000 / packed:.0f}:1 (1200000 bytes from {packed})>")
    assert _snapshot(tmp_path) == before


def _lie_about_size(payload: bytes, name: str, size: int, real: bytes) -> bytes:
    """Rewrite `name`'s declared size (local header and central directory) to `size`, with the CRC of the
    first `size` bytes, so that a reader trusting the header sees a small, valid, member."""
    out = bytearray(payload)
    crc = zlib.crc32(real[:size])
    local = _info(payload, name).header_offset
    struct.pack_into("<L", out, local + 14, crc)
    struct.pack_into("<L", out, local + 22, size)
    central = struct.unpack_from("<L", out, out.rfind(b"PK\x05\x06") + 16)[0]  # the end record's offset
    while out[central:central + 4] == b"PK\x01\x02":
        name_len = struct.unpack_from("<H", out, central + 28)[0]
        if out[central + 46:central + 46 + name_len] == name.encode():
            struct.pack_into("<L", out, central + 16, crc)
            struct.pack_into("<L", out, central + 24, size)
        central += 46 + name_len + sum(struct.unpack_from("<2H", out, central + 30))
    return bytes(out)


def test_member_writing_more_than_its_header_declares_is_stopped(serve: Serve, tmp_path: Path) -> None:
    name, real = "dataset/train_photo/liar.jpg", bytes(1 << 20)
    honest = _zip([("dataset/train_photo/0.jpg", os.urandom(4000)), (name, real)])
    payload = _lie_about_size(honest, name, 1000, real)
    assert _info(payload, name).file_size == 1000
    url = serve(payload)
    before = _populated(tmp_path)
    assert _refused(url, tmp_path) == (
        f"{url}: archive member {name}: expected at most 1000 bytes (its declared size), got <more>")
    assert _snapshot(tmp_path) == before  # the member extracted before it was thrown away too


def test_symlink_member_is_refused(serve: Serve, tmp_path: Path) -> None:
    link = zipfile.ZipInfo("dataset/train_photo/link.jpg")
    link.create_system = 3  # unix: the high 16 bits of external_attr are st_mode
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    url = serve(_zip([("dataset/train_photo/0.jpg", b"jpeg"), (link, b"/etc/passwd")]))
    before = _populated(tmp_path)
    assert _refused(url, tmp_path) == (
        f"{url}: archive member dataset/train_photo/link.jpg: expected a regular file or folder, got <symlink>")
    assert _snapshot(tmp_path) == before


@pytest.mark.parametrize(("member", "given"), [("dataset/../../evil.txt", "<escapes the folder>"),
                                               ("/tmp/evil.txt", "<absolute path>")])
def test_escaping_member_is_refused_and_leaves_nothing(serve: Serve, tmp_path: Path, member: str,
                                                       given: str) -> None:
    url = serve(_zip([("dataset/train_photo/0.jpg", b"jpeg"), (member, b"evil")]))
    dest = tmp_path / "dest"
    before = _populated(dest)
    assert _refused(url, dest) == f"{url}: archive member {member}: expected a path inside the archive, got {given}"
    assert _snapshot(dest) == before  # no staging folder, no .part, no marker left behind
    assert not (tmp_path / "evil.txt").exists()


def _deflated_dataset() -> tuple[bytes, bytes, bytes]:
    photo, style = os.urandom(200_000), os.urandom(150_000)
    payload = _zip([("dataset/", b""), ("dataset/train_photo/", b""), ("dataset/train_photo/0.jpg", photo),
                    ("dataset/Hayao/style/0.jpg", style), ("dataset/val/0.jpg", b"v" * 5000)])
    return payload, photo, style


def test_deflated_dataset_lands_beside_the_users_files(serve: Serve, tmp_path: Path) -> None:
    """The happy path through the bounded extractor: deflated members and folder entries land in place, and
    unrelated files in DEST are untouched."""
    payload, photo, style = _deflated_dataset()
    url = serve(payload)
    before = _populated(tmp_path)
    for name in ("dataset/train_photo/old.jpg", "dataset/train_photo", "dataset"):
        path = tmp_path / name
        path.unlink() if path.is_file() else path.rmdir()
        del before[name]
    root = fetch_dataset("animegan", tmp_path, url=url, progress=False)
    assert root == tmp_path / "dataset"
    after = _snapshot(tmp_path)
    assert after["dataset/train_photo/0.jpg"] == photo and after["dataset/Hayao/style/0.jpg"] == style
    assert after["dataset/val/0.jpg"] == b"v" * 5000
    assert before == {k: v for k, v in after.items() if not k.startswith("dataset") and k != ".complete"}


def test_an_existing_folder_of_the_archives_name_is_never_deleted(serve: Serve, tmp_path: Path) -> None:
    """Issue 24 item 2: a `dataset/` in DEST that the archive did not put there (the user's own style images, an
    older copy) was renamed aside and deleted. Now: one line, and DEST exactly as it was."""
    payload, _, _ = _deflated_dataset()
    url = serve(payload)
    before = _populated(tmp_path)
    (tmp_path / "dataset" / "my_style").mkdir()
    (tmp_path / "dataset" / "my_style" / "mine.png").write_bytes(b"my own work")
    before = _snapshot(tmp_path)
    line = _refused(url, tmp_path)
    assert line == (f"{tmp_path}: archive folder dataset: expected no dataset in DEST, or the same files (move or "
                    "rename yours, or fetch into another DEST), got <an existing entry with other content>")
    assert {k: v for k, v in _snapshot(tmp_path).items() if not k.endswith(".part")} == before


def test_the_same_dataset_already_in_place_is_kept(serve: Serve, tmp_path: Path) -> None:
    """A second fetch of the same archive (its marker lost) finds the same files and succeeds without moving
    or removing them."""
    payload, photo, _ = _deflated_dataset()
    url = serve(payload)
    fetch_dataset("animegan", tmp_path, url=url, progress=False)
    (tmp_path / ".complete").unlink()
    inode = (tmp_path / "dataset" / "train_photo" / "0.jpg").stat().st_ino
    assert fetch_dataset("animegan", tmp_path, url=url, progress=False) == tmp_path / "dataset"
    assert (tmp_path / "dataset" / "train_photo" / "0.jpg").stat().st_ino == inode  # the very file, kept
    assert (tmp_path / "dataset" / "train_photo" / "0.jpg").read_bytes() == photo
    assert not list(tmp_path.glob(".extract-*"))
