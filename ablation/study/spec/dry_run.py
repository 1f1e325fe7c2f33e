"""What a study will run, before it runs: one line per cell with the backbone weights it resolved to
(`ablate run STUDY --dry-run`)."""

from __future__ import annotations

from ablation.config import TrainConfig
from ablation.gan import init_key, shareable
from ablation.study.spec.study import Study
from ablation.study.work.grid import planned_arrays


def dry_run_lines(study: Study, fuse: int | None = 1) -> list[str]:
    """`fuse`: the trials per array, None where only a worker can measure it (`--fuse auto` on CUDA)."""
    spec = study.spec
    if spec.method == "search":
        assert spec.search is not None
        return [f"study {spec.name}: Optuna {spec.search.sampler} search, {spec.search.n_trials} trials "
                f"x {len(spec.seeds)} seed(s), objectives "
                + ", ".join(f"{o.direction} {o.metric}" for o in spec.objectives),
                *(f"  {name}: {param.model_dump(exclude_none=True, exclude_defaults=True)}"
                  for name, param in spec.search.space.items())]
    lines = [f"study {spec.name}: {len(study.cells)} cells x {len(spec.seeds)} seeds = {len(study.trials)} trials"]
    seeds = ",".join(str(s) for s in spec.seeds)
    width = max(len(cell.label) for cell in study.cells)
    for cell in study.cells:  # one line per cell: what the arm resolved to, incl. the backbone's weights
        lines.append(f"  {cell.label:<{width}}  backbone={backbone_text(cell.config)}  cell={cell.key}  seeds={seeds}")
    lines += shared_init_lines(study) + offline_lines(study)
    if fuse is None:
        lines.append("arrays (--fuse auto): each worker measures how many trials fit its GPU when it claims them")
    elif fuse > 1:  # which trials one worker trains together (several workers claim the same way, in turns)
        arrays = planned_arrays(study, fuse)
        lines.append(f"arrays (--fuse {fuse}): {len(arrays)} of up to {fuse} trials")
        lines += [f"  array {i + 1}: " + ", ".join(s.run_name for s in members) for i, members in enumerate(arrays)]
    return lines


def shared_init_lines(study: Study) -> list[str]:
    """Trials with the same init identity run one init phase (gan/init_cache.py): computed once, continued by
    the others."""
    groups: dict[str, list[str]] = {}
    for trial in study.trials:
        if shareable(trial.config):
            groups.setdefault(init_key(trial.config), []).append(trial.run_name)
    shared = [names for names in groups.values() if len(names) > 1]
    if not shared:
        return ["init phases: none shared (each trial computes its own)"]
    saved = sum(len(names) - 1 for names in shared)
    lines = [f"init phases: {len(groups)} distinct for {sum(len(n) for n in groups.values())} trials; {saved} "
             "trials continue a shared one instead of computing it (stored under <trials dir>/_init)"]
    return lines + ["  shared: " + ", ".join(names) for names in shared]


def offline_lines(study: Study) -> list[str]:
    """What an offline (--demo) run could not run as written: ImageNet weights, and the arms that need them."""
    if not study.offline_random:
        return []
    lines = ["backbone.weights random instead of imagenet: no ImageNet weights on disk and a demo downloads "
             "nothing, so pretrained vs random is not tested"]
    return lines + [f"arm {arm} not run: without ImageNet weights it is {same}" for arm, same in study.merged]


def backbone_text(config: TrainConfig) -> str:
    """`mobilenet_v2 width 1 imagenet`: the arch, its width where it has one, and the resolved weights."""
    backbone = config.backbone
    width = f" width {backbone.width:g}" if backbone.arch == "mobilenet_v2" else ""
    if backbone.weights == "random":
        seed = f"seed {backbone.seed}" if backbone.seed is not None else "trial seed"
        return f"{backbone.arch}{width} random ({seed})"
    return f"{backbone.arch}{width} {backbone.weights}"
