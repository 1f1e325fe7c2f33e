"""What must be there before any training: every dataset folder, every non-random backbone's weights. A missing
one is an error in the study, said once, not a failed trial per cell (`ablate run`, `ablate worker`)."""

from __future__ import annotations

from ablation.errors import UserError, problem
from ablation.gan import build_backbone
from ablation.study.spec.study import Study


def preflight_backbones(study: Study) -> None:
    """Load every non-random backbone once before any training: a missing weights file (or a download that
    cannot happen offline) is an error in the study, not a failed trial per cell."""
    configs = [c.config.backbone for c in study.cells] or [study.base_config.backbone]
    seen = set()
    for backbone in configs:
        if backbone.weights == "random" or backbone.model_dump_json() in seen:
            continue
        seen.add(backbone.model_dump_json())
        try:
            build_backbone(backbone, 0)
        except UserError as exc:
            raise UserError(*(f"{study.path}: {line}" for line in exc.lines)) from None


def check_data_layout(study: Study) -> None:
    """Fail before any training when a dataset folder is missing, saying where and how to get it."""
    seen = set()
    for data in ([t.config.data for t in study.cells] if study.cells else [study.base_config.data]):
        if data.model_dump_json() in seen:
            continue
        seen.add(data.model_dump_json())
        for folder in (data.root / "train_photo", data.root / data.style / "style", data.root / "val"):
            if not folder.is_dir() or not any(folder.iterdir()):
                raise UserError(problem(study.path, "base.data.root", f"a dataset folder {folder} with images "
                                        "(get one with `ablate data fetch animegan DEST` or run with --demo)",
                                        str(data.root)))
