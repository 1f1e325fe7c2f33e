"""`ablate stylize` on a folder of mixed images and an mp4 with audio: sizes, EXIF orientation, alpha, frame
count, frame rate, duration and audio kept; an unreadable file is one line and the others go on."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ablation.config import TrainConfig, to_yaml, with_overrides
from ablation.gan.generator import build_generator
from ablation.gan.inference import load_generator, stylize

imageio_ffmpeg = pytest.importorskip("imageio_ffmpeg")

FPS, FRAMES = 6, 12


def trial_folder(root: Path) -> Path:
    """What a trial leaves: generator.pt and config.yaml (a v2 generator, so the config must be read)."""
    folder = root / "trial"
    folder.mkdir()
    torch.manual_seed(0)
    torch.save(build_generator("v2").state_dict(), folder / "generator.pt")
    (folder / "config.yaml").write_text(to_yaml(with_overrides(TrainConfig(), {"model.generator": "v2"})))
    return folder


def pixels(seed: int, height: int, width: int, channels: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, channels), dtype=np.uint8)


def write_inputs(root: Path) -> Path:
    folder = root / "inputs"
    (folder / "nested").mkdir(parents=True)
    Image.fromarray(pixels(1, 29, 37)).save(folder / "odd.png")
    Image.fromarray(pixels(2, 24, 40)).save(folder / "nested" / "photo.jpg", quality=95)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 20x30 (HxW), shown rotated 90 degrees: 30x20
    Image.fromarray(pixels(3, 20, 30)).save(folder / "rotated.jpg", exif=exif, quality=95)
    Image.fromarray(pixels(4, 17, 33, 4), mode="RGBA").save(folder / "alpha.png")
    (folder / "broken.png").write_bytes(b"not an image at all")
    return folder


def write_clip(path: Path) -> None:
    """12 frames at 6 fps (2 s) with a 2 s 440 Hz tone."""
    tone = path.with_suffix(".wav")
    with wave.open(str(tone), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(8000)
        samples = (np.sin(2 * math.pi * 440 * np.arange(16000) / 8000) * 8000).astype(np.int16)
        handle.writeframes(samples.tobytes())
    writer = imageio_ffmpeg.write_frames(str(path), (48, 32), fps=FPS, macro_block_size=1, audio_path=str(tone),
                                         audio_codec="aac")
    writer.send(None)
    for i in range(FRAMES):
        writer.send(pixels(10 + i, 32, 48))
    writer.close()


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ablation.cli", "stylize", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=600, env=dict(os.environ, PYTHONUNBUFFERED="1"))


def test_stylize_images_and_a_video(tmp_path: Path) -> None:
    from ablation.data.media import probe

    trial = trial_folder(tmp_path)
    inputs = write_inputs(tmp_path)
    write_clip(tmp_path / "clip.mp4")
    out = run(str(inputs), str(tmp_path / "clip.mp4"), "--model", str(trial / "generator.pt"), "--out", "out",
              "--device", "cpu", cwd=tmp_path)
    assert out.returncode == 1, out.stderr  # one source failed
    assert "generator v2" in out.stdout
    problems = [line for line in out.stderr.splitlines() if line.startswith("ablate stylize:")]
    assert len(problems) == 1 and "broken.png: skipped (" in problems[0], out.stderr
    result = tmp_path / "out"
    # the output is G's, at the input's size: equal to the library call on the same pixels
    generator = load_generator(trial / "generator.pt", with_overrides(TrainConfig(), {"model.generator": "v2"}),
                               torch.device("cpu"))
    odd = np.asarray(Image.open(result / "odd.png"))
    expected = stylize(generator, torch.from_numpy(pixels(1, 29, 37)).permute(2, 0, 1)[None], torch.device("cpu"))
    assert odd.shape == (29, 37, 3) and np.array_equal(odd, expected[0].permute(1, 2, 0).numpy())
    assert np.asarray(Image.open(result / "nested" / "photo.jpg")).shape == (24, 40, 3)
    assert np.asarray(Image.open(result / "rotated.jpg")).shape == (30, 20, 3)  # as displayed
    with_alpha = np.asarray(Image.open(result / "alpha.png"))
    assert with_alpha.shape == (17, 33, 4) and np.array_equal(with_alpha[..., 3], pixels(4, 17, 33, 4)[..., 3])
    video = probe(result / "clip.mp4")
    assert (video.frames, video.fps, video.size, video.has_audio) == (FRAMES, FPS, (48, 32), True)
    assert video.duration_s == pytest.approx(FRAMES / FPS, abs=0.1)


def test_side_by_side_and_a_bad_model_reference(tmp_path: Path) -> None:
    trial = trial_folder(tmp_path)
    Image.fromarray(pixels(5, 16, 24)).save(tmp_path / "one.png")
    out = run("one.png", "--model", str(trial / "generator.pt"), "--out", "sbs", "--side-by-side", "--device",
              "cpu", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    pair = np.asarray(Image.open(tmp_path / "sbs" / "one.png"))
    assert pair.shape == (16, 48, 3) and np.array_equal(pair[:, :24], pixels(5, 16, 24))  # input | output
    bad = run("one.png", "--model", "no-such-thing", "--out", "x", cwd=tmp_path)
    assert bad.returncode != 0 and "Traceback" not in bad.stderr
    assert "--model: expected a generator .pt file, an MLflow run id" in bad.stderr
