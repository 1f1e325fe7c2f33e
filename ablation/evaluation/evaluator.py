"""Per-trial offline evaluation: "how anime, how faithful" with metrics no training loss can game (reference §4-5).

`Evaluator` is built once per trial from the held-out style split and the held-out evaluation photos. The
style split is cut deterministically into two interleaved halves, S_ref = style[0::2] (what outputs are
compared with) and S_anchor = style[1::2] (the reference anchor of gap closure); interleaving keeps both halves
alike when the style set is ordered by source. Given a separate `style_anchor` (real data: the held-out split,
with `style_ref` every style image G trains on), S_ref is all of `style_ref` and S_anchor is cut from the anchor
set, so n is no longer bounded by half the held-out split. The outputs, the no-op anchor (the photos) and
S_anchor are all cut to the same n images (`n_images`, logged as `eval/n_images`): KID, Gram means and the W1
statistics all depend on the sample size, so only at equal n does a gap of 1.0 mean "like the style set". On
construction it computes, per evaluator:

- the S_ref features and one global RMS scale from them (one scalar per evaluator, never per dimension: dead
  random channels would blow up a per-dimension standardisation, reference §4.3);
- the two anchors' metric values: no-op = the input photos scored as outputs, reference = S_anchor.

Evaluators: ImageNet EfficientNet-Lite0 (`kid_eff`, the independent pretrained one, on unless
`eval.efficientnet` is false) and the random VGGs of `eval.evaluator_seeds` (`kid_rand`, `gram_rand`, secondary).

`evaluate(outputs)` then returns flat MLflow keys (`eval/style/*`, `eval/stats/*`, `eval/content/*`), every one
an entry of `ablation.evaluation.registry` (its tests check each key emitted here against it).
Images are uint8: torch tensors [N, 3, H, W] or numpy arrays [N, H, W, 3]; all are centre-cropped to a
square and resized to `cfg.image_size` once, and each set is capped at `cfg.max_images`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ablation.config import EvalConfig
from ablation.evaluation import metrics as M
from ablation.evaluation.features import EfficientNetEvaluator, RandomVGGEvaluator
from ablation.evaluation.registry import KID_RAND_PER_SEED, METRICS, N_IMAGES, anchor_key, gap_key
from ablation.evaluation.seeds import EVALUATOR_SALT

STAT_NAMES = ("flat", "palette", "saturation", "edges")
CPU = torch.device("cpu")  # the default device: a module constant, not a call in every signature
SPLIT_RULE = ("style_ref[0::2] = S_ref (compared with), style_ref[1::2][:n] = S_anchor (reference anchor), "
              "photos[:n] (no-op anchor and outputs), n = min(photos, len(style_ref) // 2, max_images)")
# With a separate anchor (real data, gan/member.build_evaluator): the reference is every style image G trains on,
# so n is bounded by the held-out split alone (Hayao: 179), not by half of it (89).
ANCHOR_RULE = ("style_ref = S_ref (compared with: the style images G trains on), style_anchor[:n] = S_anchor "
               "(reference anchor: the held-out style split), photos[:n] (no-op anchor and outputs), "
               "n = min(photos, len(style_anchor), max_images)")
RESIZE_CHUNK = 256  # images resized at once: a whole style set in float would take gigabytes

Images = torch.Tensor | np.ndarray


def prepare(images: Images, size: int, cap: int | None = None) -> torch.Tensor:
    """uint8 [N, 3, H, W] tensor or [N, H, W, 3] array -> uint8 [min(N, cap), 3, size, size] CPU tensor.

    Centre crop to a square, then antialiased bilinear resize; images already at `size` pass through
    bit-exact, so identity outputs score exactly like their inputs.
    """
    if isinstance(images, np.ndarray):
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"expected a uint8 [N, H, W, 3] array, got {images.dtype} {images.shape}")
        t = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
    else:
        t = images.detach().cpu()
        if t.dtype != torch.uint8 or t.ndim != 4 or t.shape[1] != 3:
            raise ValueError(f"expected a uint8 [N, 3, H, W] tensor, got {t.dtype} {tuple(t.shape)}")
    t = t[:cap] if cap is not None else t
    h, w = t.shape[-2:]
    side = min(h, w)
    t = t[..., (h - side) // 2:(h - side) // 2 + side, (w - side) // 2:(w - side) // 2 + side]
    if side != size:
        t = torch.cat([F.interpolate(c.float(), size=(size, size), mode="bilinear", align_corners=False,
                                     antialias=True).round().clamp(0, 255).to(torch.uint8)
                       for c in t.split(RESIZE_CHUNK)])
    return t.contiguous()


def _hwc(images: torch.Tensor) -> np.ndarray:
    return images.permute(0, 2, 3, 1).contiguous().numpy()


@dataclass
class _Scored:
    """One image set seen through every evaluator: scaled pooled features (per evaluator) and metrics."""

    feats: list[np.ndarray]
    metrics: dict[str, float]  # MLflow keys: eval/style/* and eval/stats/*


class Evaluator:
    """Scores generator outputs against a fixed style reference and their own input photos."""

    def __init__(self, cfg: EvalConfig, style_ref: Images, photos: Images, pseudo_targets: Images | None = None,
                 device: torch.device = CPU, style_anchor: Images | None = None) -> None:
        self.cfg = cfg
        size, cap = cfg.image_size, cfg.max_images
        photos_t = prepare(photos, size, cap)
        if len(photos_t) < 2:
            raise ValueError(f"photos: expected at least 2 images, got {len(photos_t)}")
        ref, anchor = self._split(prepare(style_ref, size), style_anchor, cap)
        # One n for the outputs (one per photo) and both anchors; S_ref is never smaller than n.
        self.n_images = min(len(photos_t), len(anchor))
        self.s_ref, self.s_anchor = ref, anchor[:self.n_images]
        self.split_rule = SPLIT_RULE if style_anchor is None else ANCHOR_RULE
        self.photos = photos_t[:self.n_images]
        self._photos_hwc = _hwc(self.photos)
        self._targets_hwc: np.ndarray | None = None
        if pseudo_targets is not None:
            targets = prepare(pseudo_targets, size, cap)
            if len(targets) != len(photos_t):
                raise ValueError(f"pseudo_targets: expected one per photo ({len(photos_t)}), got {len(targets)}")
            self._targets_hwc = _hwc(targets[:self.n_images])

        self.vggs = [RandomVGGEvaluator(seed, device) for seed in cfg.evaluator_seeds]
        self.effnet = EfficientNetEvaluator(device) if cfg.efficientnet else None
        # Reference side, computed once: scaled S_ref features, S_ref mean Grams, S_ref per-image statistics.
        self.scales: list[float] = []
        self._ref_feats: list[np.ndarray] = []
        self._ref_grams: list[list[torch.Tensor]] = []
        for vgg in self.vggs:
            feats, grams = vgg.pooled_and_grams(self.s_ref)
            self.scales.append(self._rms(feats))
            self._ref_feats.append(feats / self.scales[-1])
            self._ref_grams.append(grams)
        if self.effnet is not None:
            feats = self.effnet.pooled(self.s_ref)
            self.eff_scale = self._rms(feats)
            self._ref_eff = feats / self.eff_scale
        self._ref_stats = M.cartoon_stats(_hwc(self.s_ref))
        # Anchors: same evaluators, same reference, so the gaps of §5.7 are exact.
        noop = self._score(self.photos)
        self._photo_feats = noop.feats
        self.anchor_noop = noop.metrics
        self.anchor_ref = self._score(self.s_anchor).metrics
        # the identity mapping against the pseudo-ground truth: an output must beat this to be more than a copy
        self.anchor_identity = self._pseudo_target_scores(self._photos_hwc)
        # Why a metric's gap is missing (inverted or unseparated anchors), fixed by the anchors: logged in info().
        self.gap_reasons: dict[str, str] = {}
        for key, noop_value in self.anchor_noop.items():
            if (floor := self._floor(key)) is not None:
                # scored at the no-op value: the reason then depends on the anchors alone
                _, reason = M.gap_closure_reason(noop_value, self.anchor_ref[key], noop_value, floor)
                if reason:
                    self.gap_reasons[key] = reason

    def _split(self, style: torch.Tensor, style_anchor: Images | None, cap: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(S_ref, the reference anchor's pool): two interleaved halves of `style` (S_ref capped like the
        outputs), or, given a separate anchor set, all of `style` against it."""
        if style_anchor is None:
            if len(style) < 4:
                raise ValueError(f"style_ref: expected at least 4 images (two halves of >= 2), got {len(style)}")
            return style[0::2][:cap], style[1::2]
        anchor = prepare(style_anchor, self.cfg.image_size)
        if len(style) < 2 or len(anchor) < 2:
            raise ValueError(f"style_ref, style_anchor: expected at least 2 images each, got {len(style)}, "
                             f"{len(anchor)}")
        return style, anchor

    @staticmethod
    def _floor(key: str) -> float | None:
        return METRICS[key].gap_floor if key in METRICS else None  # per-seed family members have none

    @staticmethod
    def _rms(feats: np.ndarray) -> float:
        rms = float(np.sqrt(np.mean(feats ** 2)))
        return rms if rms > 0 else 1.0  # an all-zero evaluator output would otherwise divide by zero

    def _kid(self, x: np.ndarray, y: np.ndarray, seed: int) -> tuple[float, float]:
        return M.kid(x, y, self.cfg.kid_subsets, self.cfg.kid_subset_size, seed)

    def _score(self, images: torch.Tensor) -> _Scored:
        """Style metrics of an image set scored as if it were the outputs (distances to S_ref)."""
        feats: list[np.ndarray] = []
        kids, subset_sds, grams = [], [], []
        for vgg, scale, ref_feats, ref_grams in zip(self.vggs, self.scales, self._ref_feats, self._ref_grams,
                                                        strict=True):
            pooled, mean_grams = vgg.pooled_and_grams(images)
            feats.append(pooled / scale)
            mean, sd = self._kid(feats[-1], ref_feats, vgg.seed)
            kids.append(mean)
            subset_sds.append(sd)
            grams.append(M.relative_gram_distance(mean_grams, ref_grams))
        out = {
            "eval/style/kid_rand": float(np.mean(kids)),
            "eval/style/kid_rand_seed_sd": float(np.std(kids, ddof=1)) if len(kids) > 1 else 0.0,
            "eval/style/kid_rand_subset_sd": float(np.mean(subset_sds)),
            "eval/style/gram_rand": float(np.mean(grams)),
        }
        for seed, value in zip(self.cfg.evaluator_seeds, kids, strict=True):
            out[KID_RAND_PER_SEED.format(seed=seed)] = value  # the self-test checks each seed's ordering
        if self.effnet is not None:
            out["eval/style/kid_eff"] = self._kid(self.effnet.pooled(images) / self.eff_scale, self._ref_eff, 0)[0]
        stats = M.cartoon_stats(_hwc(images))
        for name in STAT_NAMES:
            out[f"eval/style/stats_{name}"] = M.wasserstein_1d(stats[name], self._ref_stats[name])
            out[f"eval/stats/{name}"] = float(stats[name].mean())
        return _Scored(feats, out)

    def _check_outputs(self, outputs: Images) -> torch.Tensor:
        out = prepare(outputs, self.cfg.image_size, len(self.photos))
        if len(out) != len(self.photos):
            raise ValueError(f"outputs: expected one per evaluation photo (at least {len(self.photos)}), "
                             f"got {len(out)}")
        return out

    def evaluate(self, outputs: Images) -> dict[str, float]:
        """outputs[i] = G(photos[i]) -> flat MLflow metric keys (see the module docstring); only the first
        `n_images` outputs are scored, so passing one per held-out photo is fine."""
        out = self._check_outputs(outputs)
        scored = self._score(out)
        result = dict(scored.metrics)
        result[N_IMAGES] = float(self.n_images)
        for key, value in scored.metrics.items():
            if (floor := self._floor(key)) is not None:
                gap = M.gap_closure(self.anchor_noop[key], self.anchor_ref[key], value, floor)
                if gap is not None:  # missing, not a sign-flipped or huge ratio; the anchors say why
                    result[gap_key(key)] = gap
        out_hwc = _hwc(out)
        pairs = list(zip(out_hwc, self._photos_hwc, strict=True))
        result["eval/content/ssim_luma_blur"] = float(np.mean([M.ssim_luma_blur(o, i) for o, i in pairs]))
        result["eval/content/edge_f1"] = float(np.mean([M.edge_f1(o, i) for o, i in pairs]))
        # The "two FIDs" protocol (§5.6): the same features, distance to the input photos instead of S_ref.
        result["eval/content/kid_photo"] = float(np.mean([
            self._kid(f, p, vgg.seed)[0]
            for f, p, vgg in zip(scored.feats, self._photo_feats, self.vggs, strict=True)]))
        result.update(self._pseudo_target_scores(out_hwc))
        return result

    def _pseudo_target_scores(self, images_hwc: np.ndarray) -> dict[str, float]:
        if self._targets_hwc is None:
            return {}
        targets = list(zip(images_hwc, self._targets_hwc, strict=True))
        return {"eval/content/pgt_psnr": float(np.mean([M.psnr(o, t) for o, t in targets])),
                "eval/content/pgt_ssim": float(np.mean([M.ssim_rgb(o, t) for o, t in targets]))}

    def anchors(self) -> dict[str, float]:
        """The anchors' own style metrics, `eval/anchor/{noop,ref}/style/kid_rand` for `eval/style/kid_rand`:
        log once to interpret the gaps."""
        return {anchor_key(which, key): value
                for which, values in (("noop", {**self.anchor_noop, **self.anchor_identity}), ("ref", self.anchor_ref))
                for key, value in values.items()}

    def info(self) -> dict[str, str]:
        """What produced the numbers (evaluator hashes, scales, operators, set sizes): log as tags/params."""
        info = {f"eval/evaluator/rand_{v.seed}": v.weights_hash for v in self.vggs}
        info.update({f"eval/scale/rand_{v.seed}": f"{s:.6g}" for v, s in zip(self.vggs, self.scales, strict=True)})
        info["eval/evaluator/rand_arch"] = RandomVGGEvaluator.name
        info["eval/evaluator/rand_salt"] = EVALUATOR_SALT  # weights: torch.Generator(sha256(salt:seed)[:8])
        if self.effnet is not None:
            info["eval/evaluator/eff"] = self.effnet.weights_hash
            info["eval/scale/eff"] = f"{self.eff_scale:.6g}"
        info.update({f"eval/op/{k}": v for k, v in M.operator_constants().items()})
        info["eval/op/split"] = self.split_rule
        info.update({f"eval/gap/{key.removeprefix('eval/')}": why for key, why in self.gap_reasons.items()})
        info["eval/op/kid"] = (f"cubic kernel, {self.cfg.kid_subsets} subsets x "
                               f"min({self.cfg.kid_subset_size}, n), float64, features / global RMS of S_ref")
        info.update({"eval/n/photos": str(len(self.photos)), "eval/n/style_ref": str(len(self.s_ref)),
                     "eval/n/outputs": str(self.n_images),
                     "eval/n/style_anchor": str(len(self.s_anchor)), "eval/n/size": str(self.cfg.image_size)})
        return info
