"""The evaluator's self-test (reference §4.4) on procedural data, plus its bookkeeping guarantees.

Sizes are chosen for a 2-core CPU: 32 evaluation photos and 64 style images (32 + 32 after the split) at
64 px; one Evaluator (EfficientNet-Lite0 and three random VGGs) is built per module and every output set is
scored once. The feature extractors themselves are tested in test_features.py.
"""

from __future__ import annotations

import sys

import cv2
import numpy as np
import pytest
import torch

from ablation.config import EvalConfig
from ablation.data.demo import procedural_batch
from ablation.evaluation import metrics as M
from ablation.evaluation import registry
from ablation.evaluation.evaluator import Evaluator, prepare
from ablation.evaluation.features import RandomVGGEvaluator

N = 32
SEEDS = (1001, 1002, 1003)
PER_SEED = tuple(f"eval/style/kid_rand_{s}" for s in SEEDS)
KID_KEYS = ("eval/style/kid_rand", *PER_SEED)
OTHERS = ("noise", "photos", "blur", "other")


def _noisy(images: np.ndarray, sigma: float, seed: int) -> np.ndarray:
    noise = np.random.default_rng(seed).normal(0.0, sigma, images.shape)
    return np.clip(np.rint(images + noise), 0, 255).astype(np.uint8)


def _blurred(images: np.ndarray, sigma: float) -> np.ndarray:
    return np.stack([cv2.GaussianBlur(image, (0, 0), sigma) for image in images])


def _comic(photos: np.ndarray) -> np.ndarray:
    """Another cartoon style (reference §6 "comic"): bilateral-flattened, desaturated, black threshold lines."""
    out = []
    for photo in photos:
        flat = photo
        for _ in range(3):
            flat = cv2.bilateralFilter(flat, 5, 40, 5)
        lines = cv2.adaptiveThreshold(cv2.cvtColor(flat, cv2.COLOR_RGB2GRAY), 255, cv2.ADAPTIVE_THRESH_MEAN_C,
                                      cv2.THRESH_BINARY, 7, 4) == 0
        hsv = cv2.cvtColor(flat, cv2.COLOR_RGB2HSV).astype(np.float32)
        hsv[..., 1] *= 0.45
        comic = cv2.cvtColor(np.clip(hsv, 0, 255).astype(np.uint8), cv2.COLOR_HSV2RGB)
        comic[lines] = 0
        out.append(comic)
    return np.stack(out)


def _output_sets(size: int) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """(style_ref, photos, named output sets): the style comes from another seed than the outputs."""
    _, style_ref = procedural_batch(2 * N, size, seed=1)
    photos, animes = procedural_batch(N, size, seed=2)
    sets = {"same": animes, "noise": _noisy(animes, 12.0, seed=3), "photos": photos, "blur": _blurred(animes, 1.5),
            "other": _comic(photos)}
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


@pytest.mark.slow
def test_self_test_orderings_at_64px(run64: dict[str, object]) -> None:
    r = run64["results"]
    # The pretrained evaluator (reference §4.4): the same style is closer than anything else; among the others
    # no order is asserted (it rates blur, noise and photos about equally, §6).
    assert all(r["same"]["eval/style/kid_eff"] < r[name]["eval/style/kid_eff"] for name in OTHERS)
    assert abs(r["same"]["eval/style/kid_eff"]) < 0.1
    # The logged random-VGG metrics (means over the three evaluators): the full calibrated order.
    for key in ("eval/style/kid_rand", "eval/style/gram_rand"):
        same, noise, photos, blur, other = (r[name][key] for name in ("same", *OTHERS))
        assert same < noise < photos, key
        assert same < blur and same < other, key
    # One random evaluator at n = 32 and 64 px: only the large gaps are reliable. σ 12 noise is not told apart
    # from clean anime by every draw on every data seed (seen for 1003 here), nor noise from photos (1001).
    for key in PER_SEED:
        assert all(r["same"][key] < r[name][key] for name in ("photos", "blur", "other")), key
    assert abs(r["same"]["eval/style/kid_rand"]) < 0.05  # same style: KID sits at ≈ 0


@pytest.mark.slow
def test_gap_closure_of_the_anchors(run64: dict[str, object]) -> None:
    r = run64["results"]
    gaps = [k for k in r["photos"] if k.endswith("_gap")]
    assert {"eval/style/kid_eff_gap", "eval/style/kid_rand_gap", "eval/style/gram_rand_gap",
            "eval/style/stats_palette_gap"} <= set(gaps)
    for key in gaps:
        assert r["photos"][key] == pytest.approx(0.0, abs=1e-9), key  # the no-op anchor itself
        assert r["anchor"][key] == pytest.approx(1.0, abs=1e-9), key  # the reference split itself
    assert r["same"]["eval/style/kid_rand_gap"] > 0.9  # an exact imitation of the style closes the gap
    assert r["same"]["eval/style/kid_eff_gap"] > 0.9


@pytest.mark.slow
def test_identity_outputs_keep_all_content(run64: dict[str, object]) -> None:
    identity = run64["results"]["photos"]
    assert identity["eval/content/ssim_luma_blur"] == pytest.approx(1.0)
    assert identity["eval/content/edge_f1"] == 1.0
    assert abs(identity["eval/content/kid_photo"]) < 0.05  # the "second FID": photos vs themselves
    assert run64["results"]["same"]["eval/content/kid_photo"] > 0.5


@pytest.mark.slow
def test_pseudo_ground_truth_and_raw_statistics(run64: dict[str, object]) -> None:
    r = run64["results"]
    assert r["same"]["eval/content/pgt_psnr"] == 100.0 and r["same"]["eval/content/pgt_ssim"] == pytest.approx(1.0)
    assert r["photos"]["eval/content/pgt_psnr"] < r["same"]["eval/content/pgt_psnr"]
    # Anime is flatter and uses fewer colours than the photos it came from.
    assert r["same"]["eval/stats/flat"] > r["photos"]["eval/stats/flat"]
    assert r["same"]["eval/stats/palette"] < r["photos"]["eval/stats/palette"]
    assert all(isinstance(v, float) and np.isfinite(v) for v in r["noise"].values())


@pytest.mark.slow
def test_evaluator_leaves_global_rng_alone(run64: dict[str, object]) -> None:
    assert run64["rng_untouched"]


@pytest.mark.slow
def test_hashes_are_stable_and_logged(run64: dict[str, object]) -> None:
    evaluator: Evaluator = run64["evaluator"]
    info = evaluator.info()
    first, again, other = RandomVGGEvaluator(1001), RandomVGGEvaluator(1001), RandomVGGEvaluator(1002)
    assert first.weights_hash == again.weights_hash == info["eval/evaluator/rand_1001"]
    assert other.weights_hash != first.weights_hash
    assert info["eval/evaluator/eff"] == evaluator.effnet.weights_hash and info["eval/n/outputs"] == str(N)
    assert info["eval/evaluator/rand_salt"].startswith("ablate/")
    assert info["eval/op/edges"].startswith("cv2.Canny(100, 200)")
    assert all(isinstance(v, str) for v in info.values())
    assert set(evaluator.anchors()) >= {"eval/anchor/noop/style/kid_rand", "eval/anchor/ref/style/kid_rand",
                                        "eval/anchor/noop/stats/flat"}


@pytest.mark.slow
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
    photos, _ = procedural_batch(12, 48, seed=5)
    _, animes = procedural_batch(16, 48, seed=6)
    evaluator = Evaluator(cfg, style_ref=torch.from_numpy(animes).permute(0, 3, 1, 2), photos=photos)
    assert len(evaluator.photos) == 8 and evaluator.photos.shape[-1] == 32  # capped and resized once
    result = evaluator.evaluate(photos)  # 48-px outputs: resized exactly like the photos
    assert not any(k.startswith("eval/content/pgt_") for k in result)
    assert result["eval/content/edge_f1"] == 1.0
    assert "eval/style/kid_eff" in result and result["eval/n_images"] == 8.0
    with pytest.raises(ValueError):
        evaluator.evaluate(photos[:4])  # fewer outputs than evaluation photos
    switched_off = Evaluator(cfg.model_copy(update={"efficientnet": False}), animes, photos)
    assert switched_off.effnet is None and "eval/style/kid_eff" not in switched_off.evaluate(photos)


def test_kid_eff_is_never_silently_dropped(monkeypatch: pytest.MonkeyPatch) -> None:
    """A dependency, not an optional extra: a broken install fails loudly instead of logging no kid_eff."""
    monkeypatch.setitem(sys.modules, "efficientnet_lite_pytorch", None)  # import now raises ImportError
    photos, animes = procedural_batch(4, 32, seed=7)
    with pytest.raises(RuntimeError, match="eval.efficientnet: false"):
        Evaluator(EvalConfig(image_size=32, evaluator_seeds=(1001,)), animes, photos)


def test_anchors_and_outputs_are_scored_on_equal_n(monkeypatch: pytest.MonkeyPatch) -> None:
    """12 photos, 16 style images (8 + 8): outputs, no-op and reference anchor all contribute 8 to KID."""
    sizes: list[tuple[int, int]] = []
    kid = M.kid

    def recording_kid(x: np.ndarray, y: np.ndarray, subsets: int, subset_size: int, seed: int) -> tuple[float, float]:
        sizes.append((len(x), len(y)))
        return kid(x, y, subsets, subset_size, seed)

    monkeypatch.setattr(M, "kid", recording_kid)
    photos, _ = procedural_batch(12, 32, seed=8)
    _, animes = procedural_batch(16, 32, seed=9)
    evaluator = Evaluator(EvalConfig(image_size=32, evaluator_seeds=(1001,)), animes, photos)
    result = evaluator.evaluate(photos)
    assert len(evaluator.photos) == len(evaluator.s_anchor) == 8 and len(evaluator.s_ref) == 8
    # per scored set (no-op, reference anchor, outputs): kid_rand and kid_eff, plus kid_photo for the outputs
    assert sizes == [(8, 8)] * 7
    assert result["eval/n_images"] == 8.0 and registry.lookup("eval/n_images").objective is False


def test_inverted_anchors_give_no_gap_and_say_why() -> None:
    """The no-op photos closer to the style set than the reference split: a gap would flip sign, so none."""
    photos, animes = procedural_batch(8, 32, seed=10)  # photos of the same scenes as the style set
    _, style = procedural_batch(8, 32, seed=11)
    junk = np.random.default_rng(12).integers(0, 256, style.shape, dtype=np.uint8)
    style_ref = np.stack([image for pair in zip(style, junk, strict=True) for image in pair])  # S_anchor = junk
    evaluator = Evaluator(EvalConfig(image_size=32, evaluator_seeds=(1001,), efficientnet=False), style_ref, photos)
    anchors = evaluator.anchors()
    noop, ref = anchors["eval/anchor/noop/style/kid_rand"], anchors["eval/anchor/ref/style/kid_rand"]
    assert noop < ref  # inverted, and still logged for the report
    # outputs of pure noise: as far from the style as the reference anchor, far beyond the photos
    moved_away = evaluator.evaluate(np.random.default_rng(13).integers(0, 256, photos.shape, dtype=np.uint8))
    assert moved_away["eval/style/kid_rand"] > noop
    assert "eval/style/kid_rand_gap" not in moved_away  # the old sign-blind ratio gave them a gap near +1
    assert evaluator.info()["eval/gap/style/kid_rand"] == (
        f"anchors inverted: no-op {noop:.4g} is closer to the style set than the reference {ref:.4g}")


def test_prepare_crops_and_passes_through() -> None:
    images = np.random.default_rng(0).integers(0, 256, (2, 40, 32, 3), dtype=np.uint8)
    out = prepare(images, 32)
    assert out.shape == (2, 3, 32, 32) and out.dtype == torch.uint8
    assert torch.equal(out, torch.from_numpy(images[:, 4:36]).permute(0, 3, 1, 2))  # centre crop, no resampling


def test_orderings_at_32px_for_photos_and_blur() -> None:
    # At 32 px relu3_3 maps are 8×8 and σ 12 noise is not reliably told apart from clean anime on every
    # evaluator seed (seen on some data seeds), so only the photo and blur orderings are asserted here.
    # EfficientNet is off here: it sees every set at 224² whatever the size, and the 64-px test covers it.
    style_ref, photos, sets = _output_sets(32)
    evaluator = Evaluator(EvalConfig(image_size=32, efficientnet=False), style_ref, photos)
    r = {name: evaluator.evaluate(sets[name]) for name in ("same", "photos", "blur")}
    for key in KID_KEYS:
        assert r["same"][key] < r["photos"][key] and r["same"][key] < r["blur"][key], key
