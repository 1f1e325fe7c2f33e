"""The pixel convention: uint8 <-> [-1, 1] is exact on every value, out-of-range floats clamp, files list sorted."""

from __future__ import annotations

from pathlib import Path

import torch

from ablation.data.images import list_images, to_signed, to_uint8


def test_uint8_round_trips_exactly_on_all_256_values() -> None:
    every_value_u8 = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16).expand(2, 3, -1, -1)
    signed = to_signed(every_value_u8)
    assert signed.dtype == torch.float32 and signed.shape == (2, 3, 16, 16)
    assert signed.min() == -1.0 and signed.max() == 1.0
    back_u8 = to_uint8(signed)
    assert back_u8.dtype == torch.uint8 and torch.equal(back_u8, every_value_u8)
    # a bf16 generator output (autocast) holds 8 significant bits: within one level, never wrapped around
    from_bf16_u8 = to_uint8(signed.bfloat16())
    assert (from_bf16_u8.int() - every_value_u8.int()).abs().max() <= 1


def test_to_signed_matches_the_original_formula_bit_for_bit() -> None:
    photo_u8 = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    assert torch.equal(to_signed(photo_u8), photo_u8.float() / 127.5 - 1)


def test_to_uint8_clamps_and_rounds_to_nearest() -> None:
    fake_anime = torch.tensor([-3.0, -1.0, 0.0, 0.999, 1.0, 7.5]).view(1, 1, 2, 3)
    # 0 -> 127.5 rounds half to even: 128; out-of-range values saturate instead of wrapping around
    assert to_uint8(fake_anime).flatten().tolist() == [0, 0, 128, 255, 255, 255]


def test_list_images_sorted_case_insensitive_and_missing_folder(tmp_path: Path) -> None:
    for name in ("b.PNG", "a.jpeg", "c.webp", "notes.txt", "d.gif"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "sub.png").mkdir()  # a folder named like an image is not an image
    assert [p.name for p in list_images(tmp_path)] == ["a.jpeg", "b.PNG", "c.webp"]
    assert list_images(tmp_path / "missing") == []
