"""A portrait phone clip (coded landscape with a display rotation) comes out upright at its displayed size, not
sheared with its sides swapped (issue 24 item 4). The clip is made by imageio-ffmpeg's own ffmpeg."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
from test_stylize import run, trial_folder

imageio_ffmpeg = pytest.importorskip("imageio_ffmpeg")

WIDTH, HEIGHT, FRAMES = 48, 32, 6  # coded landscape; displayed 32 wide and 48 high


def _pattern(index: int) -> np.ndarray:
    """Large flat blocks (they survive H.264) that differ left/right and top/bottom, so a shear or a wrong
    orientation cannot match."""
    frame = np.zeros((HEIGHT, WIDTH, 3), dtype=np.uint8)
    frame[:, : WIDTH // 3] = (220, 40, 40)
    frame[: HEIGHT // 2, WIDTH // 3:] = (40, 200, 60)
    frame[HEIGHT // 2:, 2 * WIDTH // 3:] = (30, 30, 210)
    frame[HEIGHT // 2:, WIDTH // 3: 2 * WIDTH // 3] = 10 * index
    return frame


def _portrait_clip(folder: Path) -> Path:
    plain, rotated = folder / "plain.mp4", folder / "portrait.mp4"
    writer = imageio_ffmpeg.write_frames(str(plain), (WIDTH, HEIGHT), fps=6, macro_block_size=1)
    writer.send(None)
    for index in range(FRAMES):
        writer.send(_pattern(index))
    writer.close()
    # what a phone writes: the coded frames as shot, a display matrix saying to turn them by 90 degrees
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-display_rotation", "90", "-i", str(plain),
                    "-c", "copy", str(rotated)], check=True)
    return rotated


def _frames(path: Path) -> list[np.ndarray]:
    from ablation.data.media import read_frames

    return list(read_frames(path))


@pytest.mark.slow  # an ablate subprocess and three ffmpeg runs
def test_portrait_clip_comes_out_upright(tmp_path: Path) -> None:
    from ablation.data.media import probe

    trial = trial_folder(tmp_path)
    clip = _portrait_clip(tmp_path)
    upright = _frames(clip)
    assert upright[0].shape == (WIDTH, HEIGHT, 3)  # ffmpeg hands the frames over turned upright
    assert probe(clip).size == (HEIGHT, WIDTH)  # (width, height) as displayed
    out = run(str(clip), "--model", str(trial / "generator.pt"), "--out", "out", "--side-by-side", "--device",
              "cpu", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    result = tmp_path / "out" / "portrait.mp4"
    info = probe(result)
    assert (info.size, info.frames) == ((2 * HEIGHT, WIDTH), FRAMES)
    written = _frames(result)
    for source, pair in zip(upright, written, strict=True):
        # the left half is the input frame: within the codec's loss of it, not a sheared copy
        error = np.abs(pair[:, :HEIGHT].astype(float) - source.astype(float)).mean()
        assert error < 12, error
