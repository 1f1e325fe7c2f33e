"""Before a study trains: does each axis's varied term reach the networks at all?

A loss weight acts only through the gradient its term sends into G (or D). The probe trains each distinct level of
every axis (and every arm) for a few GAN steps after its init phase, with the study's first seed, and reads the
gradient shares the trainer logs (`balance/<phase>/grad/<term>`, gan/balance.py) at the first GAN step. The init
phase goes through the study's init cache, so the probe computes it once per seed and the study's trials continue
it instead of computing it again. An axis whose varied terms hold less than `VACUOUS_SHARE` of the gradient at
every level is flagged: its "no difference" would be true by construction.

    result = probe_study(study, trials_dir)   # ProbeResult: per-level shares and the flag lines
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from ablation.config import TrainConfig, with_overrides
from ablation.data.streams import Domains, load_domains
from ablation.gan import INIT_DIR, StopFlag, metric_name, train
from ablation.study.spec.study import Cell, Study, format_value

VACUOUS_SHARE = 1e-3  # below this at every level, a term cannot change the outcome
PROBE_GAN_STEPS = 2  # GAN steps trained after the init phase (the first one's shares are read)

# Which weighted terms a config field acts through: (phase, terms). A field missing here (a learning rate, an
# architecture choice) acts through every term and is not checked. "backbone" covers every backbone.* field.
FIELD_TERMS: dict[str, tuple[str, tuple[str, ...]]] = {
    "loss.style_weight": ("g", ("style",)),
    "loss.style_target": ("g", ("style",)),
    "loss.content_weight": ("g", ("content",)),
    "loss.color_weight": ("g", ("color",)),
    "loss.color_scale": ("g", ("color",)),
    "loss.color_count": ("g", ("color",)),
    "loss.g_adv_weight": ("g", ("adv",)),
    "loss.tv_weight": ("g", ("tv",)),
    "backbone": ("g", ("content", "style")),
    "loss.d_adv_weight": ("d", ("real", "fake", "gray", "smooth")),
    "loss.d_weights.real": ("d", ("real",)),
    "loss.d_weights.fake": ("d", ("fake",)),
    "loss.d_weights.gray": ("d", ("gray",)),
    "loss.d_weights.smooth": ("d", ("smooth",)),
    "loss.gp_weight": ("d", ("gp",)),
}
NETWORK = {"g": "G", "d": "D"}


@dataclass(frozen=True)
class Level:
    """One distinct level of one axis (or one arm against the baseline), as the probe trains it."""

    axis: str  # a dotted field path, or "arm <name>"
    label: str  # the level's value, or the arm's name
    config: TrainConfig
    terms: tuple[tuple[str, str], ...]  # (phase, term) the axis varies


@dataclass
class ProbeResult:
    shares: dict[str, dict[str, float]] = field(default_factory=dict)  # "axis=label" -> balance metric -> share
    flags: list[str] = field(default_factory=list)  # one line per vacuous axis or arm
    unchecked: list[str] = field(default_factory=list)  # axes whose fields map to no term

    def to_tag(self, limit: int) -> str:
        """JSON for the parent run's tag; the per-level shares are left out where they would not fit."""
        def short(metric: str) -> str:  # balance/g/grad/style -> g/style
            _, phase, _, term = metric.split("/")
            return f"{phase}/{term}"

        shares = {k: {short(m): float(f"{v:.3g}") for m, v in s.items()} for k, s in self.shares.items()}
        text = json.dumps({"flags": self.flags, "unchecked": self.unchecked, "shares": shares})
        return text if len(text) <= limit else json.dumps({"flags": self.flags, "unchecked": self.unchecked})


def terms_of(fields: list[str]) -> tuple[tuple[str, str], ...] | None:
    """The (phase, term) pairs the fields act through; None when one of them is not in FIELD_TERMS."""
    found: list[tuple[str, str]] = []
    for path in fields:
        entry = FIELD_TERMS.get(path) or FIELD_TERMS.get(path.split(".", 1)[0])
        if entry is None:
            return None
        found += [(entry[0], term) for term in entry[1] if (entry[0], term) not in found]
    return tuple(found)


def probe_levels(study: Study) -> tuple[list[Level], list[str]]:
    """Every level of every axis with the other axes at their baseline; every arm against the baseline arm (an
    arm's levels are the baseline and itself: an arm that silences a term the baseline uses does act)."""
    spec = study.spec
    if spec.method != "grid" or not study.cells:
        return [], []
    baseline = {**{axis: values[0] for axis, values in spec.axes.items()},
                **({"arm": next(iter(spec.arms))} if spec.arms else {}), **(spec.baseline or {})}
    by_varied = {tuple(cell.varied): cell for cell in study.cells}
    order = (["arm"] if spec.arms else []) + list(spec.axes)

    def cell_at(axis: str, value: object) -> Cell | None:  # None: an arm merged into another (offline demo)
        return by_varied.get(tuple((a, value if a == axis else baseline[a]) for a in order))

    levels: list[Level] = []
    unchecked: list[str] = []
    for axis in order:
        names = [a for a in spec.arms if a != baseline["arm"]] if axis == "arm" else spec.axes[axis]
        for value in names:
            fields = list(spec.arms[value]) if axis == "arm" else [axis]
            terms, name = terms_of(fields), f"arm {value}" if axis == "arm" else axis
            if terms is None:
                unchecked += [name] if name not in unchecked else []
                continue
            pairs = [(baseline["arm"], cell_at(axis, baseline["arm"])), (value, cell_at(axis, value))] \
                if axis == "arm" else [(value, cell_at(axis, value))]
            levels += [Level(name, format_value(label), cell.config, terms) for label, cell in pairs
                       if cell is not None]
    return levels, unchecked


def _first_gan_shares(config: TrainConfig, init_cache: Path, domains: Domains) -> dict[str, float]:
    """Train one level into a scratch folder until PROBE_GAN_STEPS GAN steps are done; G's and D's gradient
    shares at its first GAN step."""
    config = with_overrides(config, {"eval.enabled": False})  # the evaluator is not needed to read shares
    stop = StopFlag()
    rows: list[tuple[int, dict[str, float]]] = []
    init_steps = [0]

    def log(metrics: dict[str, float], step: int) -> None:
        rows.append((step, metrics))

    def progress(step: int, steps: int) -> None:
        init_steps[0] = config.schedule.init_epochs * (steps // config.schedule.epochs)
        if step >= min(init_steps[0] + PROBE_GAN_STEPS, steps):
            stop.set()

    with tempfile.TemporaryDirectory(prefix="ablate-probe-") as scratch:
        train(config, Path(scratch) / "run", log, domains=domains, stop=stop, progress=progress,
              init_cache=init_cache)
    shares: dict[str, float] = {}
    for step, metrics in rows:  # the first GAN step's row of each network's shares
        if step <= init_steps[0]:
            continue
        for key, value in metrics.items():
            if key.startswith(("balance/g/grad/", "balance/d/grad/")) and key not in shares:
                shares[key] = float(value)
    return shares


def flag_lines(levels: list[Level], shares: dict[str, dict[str, float]]) -> list[str]:
    """One line per axis whose every varied term stays under VACUOUS_SHARE at every level it was probed at."""
    lines: list[str] = []
    for axis in dict.fromkeys(level.axis for level in levels):
        mine = [level for level in levels if level.axis == axis]
        highest: dict[tuple[str, str], float] = {}
        for level in mine:
            for phase, term in level.terms:
                share = shares.get(f"{axis}={level.label}", {}).get(metric_name(phase, "grad", term))
                if share is None:  # not measured (a term this objective lacks): say nothing about it
                    continue
                highest[(phase, term)] = max(highest.get((phase, term), 0.0), share)
        if highest and all(share < VACUOUS_SHARE for share in highest.values()):
            parts = " and ".join(f"the {term} term is {share:.2g} of {NETWORK[phase]}'s gradient"
                                 for (phase, term), share in highest.items())
            where = "at every level" if len(mine) > 1 else f"at {mine[0].label}"
            what = "arm" if axis.startswith("arm ") else "axis"
            lines.append(f"{axis}: {parts} {where} (probe, first GAN step); this {what} cannot change the outcome")
    return lines


def probe_study(study: Study, trials_dir: Path) -> ProbeResult:
    """Probe every level of every axis (and arm); the init phases go through `trials_dir`'s init cache."""
    levels, unchecked = probe_levels(study)
    result = ProbeResult(unchecked=unchecked)
    if not levels:
        return result
    seed = study.spec.seeds[0]
    domains = load_domains(levels[0].config.data)
    measured: dict[str, dict[str, float]] = {}  # by cell config: an arm and an axis level may be one cell
    for level in levels:
        config = level.config.model_copy(update={"seed": seed})
        key = config.model_dump_json()
        if key not in measured:
            if config.data != levels[0].config.data:
                domains = load_domains(config.data)
            measured[key] = _first_gan_shares(config, trials_dir / INIT_DIR, domains)
        result.shares[f"{level.axis}={level.label}"] = measured[key]
    result.flags = flag_lines(levels, result.shares)
    return result
