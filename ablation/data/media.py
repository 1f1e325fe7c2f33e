"""Reading and writing the user's own images and videos for `ablate stylize`.

Images: EXIF orientation applied on read (what a viewer shows is what gets stylized), an alpha channel split
off and put back unchanged. Videos: frames streamed through ffmpeg (imageio-ffmpeg's binary), never all in
memory; the output keeps the frame rate and the frame count, and the source's audio is copied.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
VIDEO_SUFFIXES = (".mp4", ".mov", ".webm", ".gif", ".mkv", ".avi")


def list_sources(paths: list[Path]) -> list[Path]:
    """Files as given, and every image or video under a given folder (recursively), in a stable order."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in
                            IMAGE_SUFFIXES + VIDEO_SUFFIXES)
        else:
            found.append(path)
    return found


def is_video(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_SUFFIXES


def read_image(path: Path, max_pixels: int | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """(uint8 [H, W, 3] RGB as displayed, uint8 [H, W] alpha or None). With `max_pixels`, a larger image is
    refused from its header, before a pixel is decoded (ValueError naming the limit)."""
    if max_pixels is not None:
        # PIL's decompression-bomb check set to the caller's cap, not PIL's default (89 MP warns, 179 MP fails):
        # Image.open refuses beyond twice the cap from the header, and the check below refuses beyond the cap
        Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        raw = Image.open(path)
    except Image.DecompressionBombError:
        raise ValueError(f"over twice the limit of {max_pixels} pixels (raise it with --max-pixels N)") from None
    with raw:
        if max_pixels is not None and raw.width * raw.height > max_pixels:
            raise ValueError(f"{raw.width}x{raw.height} = {raw.width * raw.height} pixels is over the limit of "
                             f"{max_pixels} (raise it with --max-pixels N)")
        image = ImageOps.exif_transpose(raw)
        alpha = np.asarray(image.getchannel("A")) if "A" in image.getbands() else None
        return np.asarray(image.convert("RGB")), alpha


def write_image(path: Path, rgb: np.ndarray, alpha: np.ndarray | None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(rgb)
    if alpha is not None:
        image.putalpha(Image.fromarray(alpha))
        if path.suffix.lower() in (".jpg", ".jpeg"):  # JPEG has no alpha: keep it in a PNG beside
            path = path.with_suffix(".png")
    image.save(path)


@dataclass(frozen=True)
class VideoInfo:
    fps: float
    size: tuple[int, int]  # (width, height) as displayed: a rotated clip's coded sides swapped
    frames: int
    duration_s: float
    has_audio: bool


def ffmpeg() -> str:
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def probe(path: Path) -> VideoInfo:
    """Frame rate, size, frame count, duration and whether there is an audio stream (ffmpeg's own report)."""
    import imageio_ffmpeg

    header = subprocess.run([ffmpeg(), "-hide_banner", "-i", str(path)], capture_output=True, text=True).stderr
    video = re.search(r"Stream #.*Video: .*?(\d{2,5})x(\d{2,5}).*?([\d.]+) (?:fps|tbr)", header)
    if video is None:
        raise ValueError(f"no video stream ({header.strip().splitlines()[-1] if header.strip() else 'ffmpeg'})")
    frames, seconds = imageio_ffmpeg.count_frames_and_secs(str(path))
    coded = (int(video[1]), int(video[2]))
    # a phone's portrait clip is coded landscape with a rotation to display it: ffmpeg rotates the decoded frames
    # (read_frames gets them upright), so the output must take the displayed size, or its rows are sheared
    size = coded[::-1] if display_rotation(header) % 180 == 90 else coded
    return VideoInfo(float(video[3]), size, frames, seconds, re.search(r"Stream #.*Audio:", header) is not None)


def display_rotation(header: str) -> int:
    """The first video stream's display rotation in degrees, 0..359, from ffmpeg's report: the display matrix
    side data (ffmpeg >= 5: `rotation of -90.00 degrees`) or the older `rotate : 90` stream tag."""
    stream = header[header.find("Video:"):] if "Video:" in header else ""
    stream = stream[:match.start()] if (match := re.search(r"\n\s*Stream #", stream)) else stream
    found = re.search(r"rotation of (-?[\d.]+) degrees", stream) or re.search(r"\brotate\s*:\s*(-?[\d.]+)", stream)
    return round(float(found[1])) % 360 if found else 0


def read_frames(path: Path) -> Iterator[np.ndarray]:
    """uint8 [H, W, 3] frames, one at a time."""
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    width, height = meta["size"]
    for frame in reader:
        yield np.frombuffer(frame, dtype=np.uint8).reshape(height, width, 3)


def frame_writer(path: Path, info: VideoInfo, source: Path, width: int) -> Generator[None, np.ndarray, None]:
    """A generator to `send` uint8 [H, W', 3] frames to (W' = `width`); closes the file on `close()`.

    The source's audio is copied (re-encoded to AAC where the container needs it); the frame rate is the
    source's. macro_block_size 1: no resize to a multiple of 16, the output has the input's size."""
    import imageio_ffmpeg

    suffix = path.suffix.lower()
    codec = {".webm": "libvpx-vp9", ".gif": "gif"}.get(suffix)
    audio = {"audio_path": str(source), "audio_codec": "libopus" if suffix == ".webm" else "aac"} \
        if info.has_audio and suffix != ".gif" else {}
    # yuv420p plays everywhere but needs even sides; an odd-sized H.264 output keeps full chroma instead
    even = width % 2 == 0 and info.size[1] % 2 == 0
    pix_fmt = "rgb8" if suffix == ".gif" else "yuv420p" if even or codec is not None else "yuv444p"
    writer = imageio_ffmpeg.write_frames(str(path), (width, info.size[1]), fps=info.fps, macro_block_size=1,
                                         codec=codec, pix_fmt_out=pix_fmt, quality=8 if codec is None else None,
                                         **audio)
    writer.send(None)
    return writer
