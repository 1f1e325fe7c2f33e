"""The metric registry: every key a trial logs, with its direction, group, plotting and description.

Modelled on stylegan2-ada-pytorch's `metrics/metric_main.py`: one dict names every metric, and all who need
to know about one read it from here: the evaluator that emits it, the study validator that accepts it as an
objective, the report that plots it and explains it in a tooltip. A misspelt key then fails where it is
written (study validation, the evaluator's tests) instead of showing up after training as a missing column.

Keys are literal MLflow keys, except families with `{slot}`s, one member per value that only config or the
evaluator knows (`eval/style/kid_rand_{seed}` per evaluator seed); `resolve` maps a concrete key to its entry.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

Direction = Literal["minimize", "maximize"]
Group = Literal["style", "content", "stats", "anchor", "loss", "balance", "lr", "perf"]


@dataclass(frozen=True)
class Metric:
    direction: Direction | None  # None: no better side (an image statistic, a spread, a schedule value)
    group: Group
    description: str  # one line: the report's tooltip
    plotted: bool = True  # a curve in the report, when logged at two or more steps
    objective: bool = True  # a study may name it in `objectives`
    # Smallest |m(no-op) − m(ref)| for which `<key>_gap` is logged, in this metric's own units; below it the
    # anchors are not separated and any ratio is noise (reference §5.7). None: the metric has no gap.
    gap_floor: float | None = None
    # What moves this metric, and what it is blind to (the report's per-metric note): e.g. "punishes blur
    # hardest; low-level colour/texture statistics". Empty: not yet documented.
    responds_to: str = ""

    def __post_init__(self) -> None:
        if self.objective and self.direction is None:  # a study could not tell better from worse
            raise ValueError(f"{self.description!r}: an objective needs a direction")


def _diagnostic(direction: Direction | None, group: Group, description: str) -> Metric:
    """Logged for reading, never plotted or optimised: it is not comparable across trials as a result."""
    return Metric(direction, group, description, plotted=False, objective=False)


_GAP = "gap closure of {}: 0 = as far as the input photos (no-op), 1 = as close as the held-out style split"
KID_RAND_PER_SEED = "eval/style/kid_rand_{seed}"
ANCHOR = "eval/anchor/{which}/{metric}"
N_IMAGES = "eval/n_images"
CALIBRATION_SIZE = 128  # the side the random-VGG evaluators' orderings were calibrated at (reference §6)
EFFNET_SIZE = 224  # the side EfficientNet-Lite0 (kid_eff) sees, its ImageNet input size (features.py resizes to it)

# What each evaluation metric responds to and is blind to: reference §6 calibration (random features are
# low-level and punish blur hardest; EfficientNet is ImageNet-semantic and rates blur, noise and photos about
# equally; the statistics each see one property). The report prints these next to the numbers.
_EFF = ("ImageNet-semantic features of a pretrained classifier no loss uses: separates one cartoon style from "
        "another best; nearly blind to the difference between blur, noise and untouched photos (all about "
        "equally far from the style set)")
_RAND = ("low-level colour and texture statistics of random convolutions: punishes blur hardest (a blurred "
         "cartoon scores farther than a photo), then photos, then noise; blind to semantics")
_GRAM = ("second-order colour/texture correlations of random convolutions, set means only: punishes blur "
         "hardest like kid_rand; blind to layout, semantics and per-image variety")
_FLAT = ("share of flat pixels: rises as outputs flatten, collapses with noise or grain; blind to colour, "
         "palette and where edges are")
_PALETTE = ("number of colours: falls with colour quantisation, rises with noise and blur (blends between flat "
            "colours); blind to structure")
_SATURATION = "mean colour saturation: catches desaturated or oversaturated styles; blind to structure and texture"
_EDGES = ("Canny edge density: falls with blur, rises with outline clutter; barely moved by mild noise; blind to "
          "colour")


def _gap_note(base: str) -> str:
    return (f"as {base}, rescaled between the anchors (same blind spots); missing when the no-op anchor is not "
            "farther from the style set than the reference anchor by the metric's floor")


METRICS: dict[str, Metric] = {
    # --- style: distances of the outputs to the style reference split S_ref (evaluation §5.1-5.3) ---
    # The independent pretrained evaluator first: the primary style objective of every shipped study.
    "eval/style/kid_eff": Metric("minimize", "style", "KID of the outputs to the style set on ImageNet "
                                 "EfficientNet-Lite0 features (the independent pretrained evaluator)",
                                 gap_floor=1e-3, responds_to=_EFF),
    "eval/style/kid_rand": Metric("minimize", "style", "KID of the outputs to the style set on random-VGG "
                                  "features, mean over the evaluator seeds (secondary)", gap_floor=1e-3,
                                  responds_to=_RAND),
    "eval/style/gram_rand": Metric("minimize", "style", "relative Frobenius distance of the outputs' mean "
                                   "random-VGG Grams to the style set's (secondary)", gap_floor=1e-3,
                                   responds_to=_GRAM),
    # The floors of the statistics are in their own units: shares of pixels, or a bin count for the palette.
    "eval/style/stats_flat": Metric("minimize", "style", "W1 distance of the per-image flat-pixel share to "
                                    "the style set's", gap_floor=0.01, responds_to=_FLAT),
    "eval/style/stats_palette": Metric("minimize", "style", "W1 distance of the per-image palette size "
                                       "(bins covering 95% of pixels) to the style set's", gap_floor=0.5,
                                       responds_to=_PALETTE),
    "eval/style/stats_saturation": Metric("minimize", "style", "W1 distance of the per-image mean HSV "
                                          "saturation to the style set's", gap_floor=0.01, responds_to=_SATURATION),
    "eval/style/stats_edges": Metric("minimize", "style", "W1 distance of the per-image Canny edge density "
                                     "to the style set's", gap_floor=0.002, responds_to=_EDGES),
    "eval/style/kid_eff_gap": Metric("maximize", "style", _GAP.format("kid_eff"), responds_to=_gap_note("kid_eff")),
    "eval/style/kid_rand_gap": Metric("maximize", "style", _GAP.format("kid_rand"),
                                      responds_to=_gap_note("kid_rand")),
    "eval/style/gram_rand_gap": Metric("maximize", "style", _GAP.format("gram_rand"),
                                       responds_to=_gap_note("gram_rand")),
    "eval/style/stats_flat_gap": Metric("maximize", "style", _GAP.format("stats_flat"),
                                        responds_to=_gap_note("stats_flat")),
    "eval/style/stats_palette_gap": Metric("maximize", "style", _GAP.format("stats_palette"),
                                           responds_to=_gap_note("stats_palette")),
    "eval/style/stats_saturation_gap": Metric("maximize", "style", _GAP.format("stats_saturation"),
                                              responds_to=_gap_note("stats_saturation")),
    "eval/style/stats_edges_gap": Metric("maximize", "style", _GAP.format("stats_edges"),
                                         responds_to=_gap_note("stats_edges")),
    # --- content: faithfulness of each output to its own input photo (evaluation §5.4-5.6) ---
    "eval/content/ssim_luma_blur": Metric(
        "maximize", "content", "SSIM of output and input on luma blurred with sigma 2: structure kept, texture "
        "free; identity = 1", responds_to="large-scale luma structure: drops with moved or lost shapes and big "
        "tonal changes; blind to texture, hue and flattening inside regions"),
    "eval/content/edge_f1": Metric(
        "maximize", "content", "F1 of the output's Canny edges against the input's, one-to-one matching within "
        "2 px (BSDS convention); identity = 1", responds_to="the input's edges kept in place: drops with blur, "
        "invented or doubled edges; blind to colour and to what fills the regions"),
    "eval/content/kid_photo": Metric(
        "minimize", "content", "KID of the outputs to the input photos on the random-VGG features (the second of "
        "the two FIDs)", responds_to="low-level closeness to the photos: rises as outputs stylise, so it trades "
        "off against style; punishes blur hardest; blind to semantics"),
    "eval/content/pgt_psnr": Metric(
        "maximize", "content", "PSNR in dB against the demo stylizer's exact target (pseudo-ground truth, demo "
        "data only)", responds_to="pixel error against the known filter's output: punishes any shift or colour "
        "offset; blind to perceptual likeness; absent on real data"),
    "eval/content/pgt_ssim": Metric(
        "maximize", "content", "RGB SSIM against the demo stylizer's exact target (pseudo-ground truth, demo data "
        "only)", responds_to="local structure and contrast against the known filter's output: milder than PSNR "
        "on uniform colour offsets; blind to any likeness beyond that one filter; absent on real data"),
    # --- training losses: raw terms as computed, totals weighted (comparable only at equal loss settings) ---
    "loss/g/adv": Metric("minimize", "loss", "generator adversarial loss, raw term"),
    "loss/g/content": Metric("minimize", "loss", "generator content loss (backbone features of output vs "
                             "photo), raw term"),
    "loss/g/style": Metric("minimize", "loss", "generator style loss (backbone Grams of output vs anime), "
                           "raw term"),
    "loss/g/color": Metric("minimize", "loss", "generator colour loss (YUV of output vs photo), raw term"),
    "loss/g/tv": Metric("minimize", "loss", "generator total-variation loss, raw term (0 when tv_weight is 0)"),
    "loss/g/total": Metric("minimize", "loss", "generator loss that is optimised: the weighted sum of its terms"),
    "loss/d/real": Metric("minimize", "loss", "discriminator loss on anime images, raw term"),
    "loss/d/fake": Metric("minimize", "loss", "discriminator loss on generated images, raw term"),
    "loss/d/gray": Metric("minimize", "loss", "discriminator loss on grayscale anime, raw term"),
    "loss/d/smooth": Metric("minimize", "loss", "discriminator loss on edge-smoothed anime, raw term"),
    "loss/d/gp": Metric("minimize", "loss", "gradient penalty, already weighted by gp_weight (0 for GAN types "
                         "without one)"),
    "loss/d/total": Metric("minimize", "loss", "discriminator loss that is optimised: the weighted sum"),
    "loss/init/content": Metric("minimize", "loss", "content loss of the generator's init phase, raw term"),
    "loss/init/color": Metric("minimize", "loss", "colour loss of the init phase, raw term (only when "
                              "loss.init_color_weight > 0, a demo deviation)"),
    "loss/init/total": Metric("minimize", "loss", "init-phase loss that is optimised: content_weight x content "
                              "(+ init_color_weight x color)"),
    # --- loss balance (gan/balance.py): what each weighted term weighs in its network's loss and gradient ---
    "balance/{phase}/{kind}/{term}": _diagnostic(None, "balance", "share of one weighted term in its network's "
                                                 "loss (value: |w·L| over the sum) or gradient norm (grad: "
                                                 "‖∂(w·L)/∂θ‖ over the sum of every term's); phases init, g, d"),
    # --- throughput, over the steps since the previous log point ---
    "perf/step_s": Metric("minimize", "perf", "wall-clock seconds per training step", plotted=False),
    "perf/images_per_s": Metric("maximize", "perf", "training photos per second", plotted=False),
    # --- diagnostics: read in tables and artifacts; a spread or one seed's part is no result to optimise ---
    KID_RAND_PER_SEED: _diagnostic("minimize", "style", "kid_rand on the one random-VGG evaluator of this seed"),
    "eval/style/kid_rand_seed_sd": _diagnostic(None, "style", "sd of kid_rand over the evaluator seeds"),
    "eval/style/kid_rand_subset_sd": _diagnostic(None, "style", "KID subset sampling sd, mean over the "
                                                 "evaluator seeds (sampling noise only)"),
    # Raw statistics have no better side: what counts is closeness to the style set, i.e. eval/style/stats_*.
    "eval/stats/flat": _diagnostic(None, "stats", "mean share of flat pixels (|Sobel grad luma| < 8)"),
    "eval/stats/palette": _diagnostic(None, "stats", "mean palette size: 8x8x8 RGB bins covering 95% of pixels"),
    "eval/stats/saturation": _diagnostic(None, "stats", "mean HSV saturation"),
    "eval/stats/edges": _diagnostic(None, "stats", "mean share of Canny edge pixels"),
    # Equal for the outputs and both anchors (else 1.0 would not mean "like the style set"); the report warns
    # below 100, where KID is noisy (reference §4.5).
    N_IMAGES: _diagnostic(None, "stats", "images per scored set: the outputs, the no-op anchor (photos) and the "
                          "reference anchor (style split) each contribute this many"),
    # The anchors' own values (no-op = the photos, ref = the held-out style split): they give the gaps meaning.
    ANCHOR: _diagnostic(None, "anchor", "the metric scored on an anchor: noop = the input photos, ref = the "
                        "held-out style split"),
    "lr/init": _diagnostic(None, "lr", "learning rate of the init phase (a schedule, not a result)"),
    "lr/g": _diagnostic(None, "lr", "generator learning rate (a schedule, not a result)"),
    "lr/d": _diagnostic(None, "lr", "discriminator learning rate (a schedule, not a result)"),
}

# What a family's slot may hold. An anchor's `metric` is a style or statistics key without `eval/`, and
# `resolve` also requires that key to be registered, so an anchor exists only for a known metric.
_SLOTS = {"seed": r"\d+", "which": r"noop|ref", "metric": r"(?:style|stats|content)/\w+",
          "phase": r"init|g|d", "kind": r"grad|value", "term": r"[a-z_]+"}


def _pattern(family: str) -> re.Pattern[str]:
    parts = re.split(r"\{(\w+)\}", family)  # literal, slot, literal, ...
    return re.compile("".join(re.escape(p) if i % 2 == 0 else f"(?P<{p}>{_SLOTS[p]})" for i, p in enumerate(parts)))


_FAMILIES = {key: _pattern(key) for key in METRICS if "{" in key}


class UnknownMetric(KeyError):
    """A key that is not in the registry; its message lists the valid names."""

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key

    def __str__(self) -> str:  # KeyError would print the repr of the key alone
        return f"unknown metric {self.key!r}: expected one of {', '.join(METRICS)}"


def resolve(key: str) -> str:
    """A logged key -> its registry key: itself, or the family it is a member of."""
    if key in METRICS:
        return key
    for family, pattern in _FAMILIES.items():
        match = pattern.fullmatch(key)
        if match and ("metric" not in match.groupdict() or find("eval/" + match["metric"]) is not None):
            return family
    raise UnknownMetric(key)


def lookup(key: str) -> Metric:
    """The entry of a logged key (a family's entry for `eval/style/kid_rand_1001`); UnknownMetric if none."""
    return METRICS[resolve(key)]


def find(key: str) -> Metric | None:
    """`lookup` for callers to whom an unregistered key is an answer, not an error."""
    try:
        return lookup(key)
    except UnknownMetric:
        return None


def objective_names() -> list[str]:
    """The keys a study may name in `objectives`, in registry order."""
    return [key for key, metric in METRICS.items() if metric.objective]


def plotted(key: str) -> bool:
    """Whether the report draws the key as a curve; an unregistered key is not drawn."""
    metric = find(key)
    return metric is not None and metric.plotted


def tooltip(key: str) -> str:
    """The report's one-line explanation of a key, with its better side; empty for an unregistered key."""
    metric = find(key)
    if metric is None:
        return ""
    better = {"minimize": " (lower is better)", "maximize": " (higher is better)", None: ""}[metric.direction]
    responds = f". Responds to: {metric.responds_to}" if metric.responds_to else ""
    return metric.description + better + responds


def gap_key(key: str) -> str:
    """The gap-closure key of a metric with a `gap_floor`."""
    return f"{key}_gap"


def anchor_key(which: Literal["noop", "ref"], key: str) -> str:
    """`eval/style/kid_rand` on the no-op anchor -> `eval/anchor/noop/style/kid_rand`."""
    return ANCHOR.format(which=which, metric=key.removeprefix("eval/"))
