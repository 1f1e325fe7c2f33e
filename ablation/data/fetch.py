"""`ablate data fetch`: download a public dataset release into a folder the user chose.

Resumable (HTTP Range on a `.part` file), verified (SHA-256 when known, zip CRCs always), extracted within
caps against zip bombs and atomically (ablation/data/unzip.py), and marked `.complete` so a second fetch
does nothing. Standard library networking only.
The AnimeGAN data is research-only (animegan.md §10): this project never re-hosts or ships it.
"""

from __future__ import annotations

import hashlib
import re
import sys
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from ablation.data.unzip import DEFAULT_LIMITS, BadArchive, ZipLimits, extract_zip
from ablation.errors import UserError, problem

CHUNK = 1 << 20
TIMEOUT_S = 30


@dataclass(frozen=True)
class DatasetSource:
    url: str
    sha256: str | None  # None: not published; the zip's own CRCs are still checked
    size: int | None  # bytes, when published: a download of another size is refused
    licence_note: str
    archive: bool = True  # a zip to extract; False: one file, kept as downloaded


DATASETS: dict[str, DatasetSource] = {
    "animegan": DatasetSource(
        url="https://github.com/TachibanaYoshino/AnimeGAN/releases/download/dataset-1/dataset.zip",
        sha256=None,
        size=None,
        licence_note=("AnimeGAN dataset (TachibanaYoshino/AnimeGAN release dataset-1): no dataset licence; the "
                      "style frames are copyrighted film stills. Non-commercial research/teaching use only - do "
                      "not commit, package, re-host or redistribute it."),
    ),
    # the caffe VGG19 the original AnimeGAN trains with (its README's vgg19.npy); convert it with
    # `ablate weights convert caffe-vgg19 DEST/vgg19.npy OUT.pt`
    "vgg19": DatasetSource(
        url="https://github.com/TachibanaYoshino/AnimeGAN/releases/download/vgg16%2F19.npy/vgg19.npy",
        sha256=None,
        size=None,
        licence_note=("VGG19 caffe weights (Simonyan & Zisserman, CC BY 4.0) as converted by machrisaa/"
                      "tensorflow-vgg and re-published with AnimeGAN; a pickled .npy: convert only this file."),
        archive=False,
    ),
}

MARKER = ".complete"


def _say(text: str, progress: bool) -> None:
    if progress:
        print(text, file=sys.stderr)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _offline(url: str, dest: Path, reason: object) -> UserError:
    return UserError(f"could not reach {url} ({reason}); you are offline? download it by hand into {dest} "
                     f"or use --demo")


def _download(url: str, part: Path, dest: Path, progress: bool) -> None:
    """Fetch `url` into `part`, continuing from its current length with a Range request."""
    offset = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "ablate-fetch"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        response = urllib.request.urlopen(request, timeout=TIMEOUT_S)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:  # the .part already holds every byte
            return
        raise UserError(problem(url, "HTTP status", "200 or 206", f"<{exc.code} {exc.reason}>")) from None
    except (urllib.error.URLError, OSError) as exc:
        raise _offline(url, dest, getattr(exc, "reason", exc)) from None
    with response:
        if response.status == 206:
            match = re.match(r"bytes (\d+)-", response.headers.get("Content-Range", ""))
            if not match or int(match.group(1)) != offset:
                raise UserError(problem(url, "Content-Range", f"bytes {offset}-", response.headers.get(
                    "Content-Range", "<none>")))
            mode = "ab"
        else:  # 200: the server ignored the Range header, so start over
            offset, mode = 0, "wb"
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length and length.isdigit() else None
        bar = None
        if progress:
            from rich.progress import DownloadColumn, Progress, TransferSpeedColumn

            bar = Progress(*Progress.get_default_columns(), DownloadColumn(), TransferSpeedColumn())
            bar.start()
            task = bar.add_task(f"downloading {part.name[:-5]}", total=total, completed=offset)
        try:
            with open(part, mode) as handle:
                for block in iter(lambda: response.read(CHUNK), b""):
                    handle.write(block)
                    if bar is not None:
                        bar.advance(task, len(block))
        except (urllib.error.URLError, OSError) as exc:  # keep the .part: the next fetch resumes from it
            raise _offline(url, dest, f"interrupted: {exc}") from None
        finally:
            if bar is not None:
                bar.stop()
    if total is not None and part.stat().st_size != total:
        raise _offline(url, dest, f"interrupted at {part.stat().st_size} of {total} bytes; run again to resume")


def _dataset_root(dest: Path) -> Path:
    """The folder holding train_photo/: dest itself or a single top-level folder of the archive."""
    if (dest / "train_photo").is_dir():
        return dest
    found = sorted(p.parent for p in dest.glob("*/train_photo") if p.is_dir())
    return found[0] if found else dest


def fetch_dataset(name: str, dest: Path, url: str | None = None, sha256: str | None = None,
                  progress: bool = True, limits: ZipLimits = DEFAULT_LIMITS) -> Path:
    """Download, verify and extract dataset `name` into `dest`; returns the dataset root (holds train_photo/).
    `limits` caps what the archive may expand to (tests pass small ones)."""
    if name not in DATASETS:
        raise UserError(problem("ablate data fetch", "name", f"one of {', '.join(sorted(DATASETS))}", name))
    source = DATASETS[name]
    url = url or source.url
    expected = (sha256 or source.sha256 or "").lower() or None
    dest = Path(dest)
    marker = dest / MARKER
    if marker.exists():
        done = marker.read_text().strip()
        if expected is None or done == expected:
            return _dataset_root(dest)
    _say(f"licence: {source.licence_note}", progress)
    dest.mkdir(parents=True, exist_ok=True)
    filename = Path(urlparse(url).path).name or f"{name}.zip"
    part = dest / f"{filename}.part"
    _download(url, part, dest, progress)

    got = _sha256(part)
    if expected and got != expected:
        part.unlink()  # a corrupt or different file: resuming it would never succeed
        raise UserError(problem(url, "sha256", expected, got))
    if source.size is not None and part.stat().st_size != source.size:
        size = part.stat().st_size
        part.unlink()
        raise UserError(problem(url, "size", f"{source.size} bytes", f"<{size} bytes>"))
    if not source.archive:  # one file: it is the result
        target = dest / filename
        if target.exists():  # never overwrite what the user has
            raise UserError(problem(target, "dest", "no file of that name (move it away first)", "<exists>"))
        part.rename(target)
        marker.write_text(got + "\n")
        _say(f"sha256 {got}; {target} ({target.stat().st_size} bytes)", progress)
        return dest
    try:
        extract_zip(part, dest, url, limits)  # CRCs are checked while extracting
    except zipfile.BadZipFile as exc:
        part.unlink()
        raise UserError(problem(url, "archive", "a valid zip file", f"<{exc}>")) from None
    except BadArchive:
        part.unlink()  # corrupt, hostile or over a cap: resuming or retrying it would never succeed
        raise
    part.unlink()  # the extracted tree is what is used; the marker keeps the archive's hash
    marker.write_text(got + "\n")
    root = _dataset_root(dest)
    _say(f"sha256 {got}; dataset root {root}", progress)
    return root
