"""The evaluator's self-test (reference §4.4) on procedural data, plus its bookkeeping guarantees.

Sizes are chosen for a 2-core CPU: 32 evaluation photos and 64 style images (32 + 32 after the split) at
64 px; one Evaluator is built per module and every output set is scored once.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from ablation.config import EvalConfig
from ablation.data.demo import procedural_batch
from ablation.evaluation import registry
from ablation.evaluation.evaluator import Evaluator, prepare
from ablation.evaluation.features import EfficientNetEvaluator, RandomVGGEvaluator, available_efficientnet

N = 32
SEEDS = (1001, 1002, 1003)
KID_KEYS = ("eval/style/kid_rand", *(f"eval/style/kid_rand_{s}" for s in SEEDS))


def _noisy(images: np.ndarray, sigma: float, seed: int) -> np.ndarray:
    noise = np.random.default_rng(seed).normal(0.0, sigma, images.shape)
    return np.clip(np.rint(images + noise), 0, 255).astype(np.uint8)


def _blurred(images: np.ndarray, sigma: float) -> np.ndarray:
    return np.stack([cv2.GaussianBlur(image, (0, 0), sigma) for image in images])


def _output_sets(size: int) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """(style_ref, photos, named output sets): the style comes from another seed than the outputs."""
    _, style_ref = procedural_batch(2 * N, size, seed=1)
    photos, animes = procedural_batch(N, size, seed=2)
    sets = {"same": animes, "noise": _noisy(animes, 12.0, seed=3), "photos": photos, "blur": _blurred(animes, 1.5)}
    return style_ref, photos, sets


@pytest.fixture(scope="module")
def run64() -> dict[str, object]:
    style_ref, photos, sets = _output_sets(64)
    torch_state, np_state = torch.get_rng_state(), np.random.get_state()
    evaluator = Evaluator(EvalConfig(image_size=64), style_ref, photos, pseudo_targets=sets["same"])
    results = {name: evaluator.evaluate(outputs) for name, outputs in sets.items()}
    results["anchor"] = evaluator.evaluate(evaluator.s_anchor)
    rng_untouched = torch.equal(torch_state, torch.get_rng_state()) and all(
        np.array_equal(a, b) if isinstance(a, np.ndarray) else a == b
        for a, b in zip(np_state, np.random.get_state(), strict=True))
    return {"evaluator": evaluator, "results": results, "rng_untouched": rng_untouched}


def test_self_test_orderings_at_64px(run64: dict[str, object]) -> None:
    r = run64["results"]
    for key in (*KID_KEYS, "eval/style/gram_rand"):
        same, noise, photos, blur = (r[name][key] for name in ("same", "noise", "photos", "blur"))
        assert same < noise < photos, key
        assert same < blur, key
    assert abs(r["same"]["eval/style/kid_rand"]) < 0.05  # same style: KID sits at ≈ 0


def test_gap_closure_of_the_anchors(run64: dict[str, object]) -> None:
    r = run64["results"]
    gaps = [k for k in r["photos"] if k.endswith("_gap")]
    assert {"eval/style/kid_rand_gap", "eval/style/gram_rand_gap", "eval/style/stats_palette_gap"} <= set(gaps)
    for key in gaps:
        assert r["photos"][key] == pytest.approx(0.0, abs=1e-9), key  # the no-op anchor itself
        assert r["anchor"][key] == pytest.approx(1.0, abs=1e-9), key  # the reference split itself
    assert r["same"]["eval/style/kid_rand_gap"] > 0.9  # an exact imitation of the style closes the gap


def test_identity_outputs_keep_all_content(run64: dict[str, object]) -> None:
    identity = run64["results"]["photos"]
    assert identity["eval/content/ssim_luma_blur"] == pytest.approx(1.0)
    assert identity["eval/content/edge_f1"] == 1.0
    assert abs(identity["eval/content/kid_photo"]) < 0.05  # the "second FID": photos vs themselves
    assert run64["results"]["same"]["eval/content/kid_photo"] > 0.5


def test_pseudo_ground_truth_and_raw_statistics(run64: dict[str, object]) -> None:
    r = run64["results"]
    assert r["same"]["eval/content/pgt_psnr"] == 100.0 and r["same"]["eval/content/pgt_ssim"] == pytest.approx(1.0)
    assert r["photos"]["eval/content/pgt_psnr"] < r["same"]["eval/content/pgt_psnr"]
    # Anime is flatter and uses fewer colours than the photos it came from.
    assert r["same"]["eval/stats/flat"] > r["photos"]["eval/stats/flat"]
    assert r["same"]["eval/stats/palette"] < r["photos"]["eval/stats/palette"]
    assert all(isinstance(v, float) and np.isfinite(v) for v in r["noise"].values())


def test_evaluator_leaves_global_rng_alone(run64: dict[str, object]) -> None:
    assert run64["rng_untouched"]


def test_hashes_are_stable_and_logged(run64: dict[str, object]) -> None:
    evaluator: Evaluator = run64["evaluator"]
    info = evaluator.info()
    first, again, other = RandomVGGEvaluator(1001), RandomVGGEvaluator(1001), RandomVGGEvaluator(1002)
    assert first.weights_hash == again.weights_hash == info["eval/evaluator/rand_1001"]
    assert other.weights_hash != first.weights_hash
    assert info["eval/op/edges"].startswith("cv2.Canny(100, 200)")
    assert all(isinstance(v, str) for v in info.values())
    assert set(evaluator.anchors()) >= {"eval/anchor/noop/style/kid_rand", "eval/anchor/ref/style/kid_rand",
                                        "eval/anchor/noop/stats/flat"}


def test_every_emitted_key_is_registered(run64: dict[str, object]) -> None:
    """What evaluate() and anchors() return is what the registry (objectives, report) knows, name for name."""
    evaluator: Evaluator = run64["evaluator"]
    results: dict[str, dict[str, float]] = run64["results"]
    emitted = {key for result in results.values() for key in result} | set(evaluator.anchors())
    entries = {key: registry.lookup(key) for key in emitted}  # UnknownMetric names the stray key
    assert {f"eval/style/kid_rand_{s}" for s in SEEDS} <= emitted  # the per-seed family, one key per config seed
    assert {registry.resolve(k) for k in emitted if k.startswith("eval/anchor/")} == {registry.ANCHOR}
    # gaps come only from metrics with a registered gap floor (a metric whose anchors coincide has none)
    gaps = {k for k in emitted if k.endswith("_gap")}
    assert gaps and gaps <= {registry.gap_key(k) for k, m in registry.METRICS.items() if m.gap_floor is not None}
    assert {e.group for e in entries.values()} == {"style", "stats", "content", "anchor"}


def test_small_evaluator_without_targets_resizes_outputs() -> None:
    cfg = EvalConfig(image_size=32, max_images=8, evaluator_seeds=(1001,), kid_subsets=5)
    photos, animes = procedural_batch(12, 48, seed=5)
    evaluator = Evaluator(cfg, style_ref=torch.from_numpy(animes).permute(0, 3, 1, 2), photos=photos)
    assert len(evaluator.photos) == 8 and evaluator.photos.shape[-1] == 32  # capped and resized once
    result = evaluator.evaluate(photos)  # 48-px outputs: resized exactly like the photos
    assert not any(k.startswith("eval/content/pgt_") for k in result)
    assert result["eval/content/edge_f1"] == 1.0
    assert ("eval/style/kid_eff" in result) == available_efficientnet()
    with pytest.raises(ValueError):
        evaluator.evaluate(photos[:4])  # fewer outputs than evaluation photos


def test_prepare_crops_and_passes_through() -> None:
    images = np.random.default_rng(0).integers(0, 256, (2, 40, 32, 3), dtype=np.uint8)
    out = prepare(images, 32)
    assert out.shape == (2, 3, 32, 32) and out.dtype == torch.uint8
    assert torch.equal(out, torch.from_numpy(images[:, 4:36]).permute(0, 3, 1, 2))  # centre crop, no resampling


def test_efficientnet_is_optional() -> None:
    if available_efficientnet():
        feats = EfficientNetEvaluator().pooled(torch.zeros(2, 3, 64, 64, dtype=torch.uint8))
        assert feats.shape == (2, 1280)
    else:
        with pytest.raises(RuntimeError, match="efficientnet"):
            EfficientNetEvaluator()


def test_orderings_at_32px_for_photos_and_blur() -> None:
    # At 32 px relu3_3 maps are 8×8 and σ 12 noise is not reliably told apart from clean anime on every
    # evaluator seed (seen on some data seeds), so only the photo and blur orderings are asserted here.
    style_ref, photos, sets = _output_sets(32)
    evaluator = Evaluator(EvalConfig(image_size=32), style_ref, photos)
    r = {name: evaluator.evaluate(sets[name]) for name in ("same", "photos", "blur")}
    for key in KID_KEYS:
        assert r["same"][key] < r["photos"][key] and r["same"][key] < r["blur"][key], key
