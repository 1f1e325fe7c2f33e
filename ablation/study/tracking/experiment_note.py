"""The experiment's description in the MLflow UI (`mlflow.note.content`): the study's question, what varies,
and how to compare its runs there."""

from __future__ import annotations

from ablation.study.spec.study import Study

# MLflow 3 opens an experiment without a kind in its GenAI view (traces), where the runs table is hidden;
# "custom_model_development" is the UI's "model training" kind: it opens on the runs.
EXPERIMENT_KIND = "custom_model_development"


def experiment_note(study: Study) -> str:
    spec = study.spec
    if spec.method == "search" and spec.search is not None:
        varied = [f"- `{name}` (searched)" for name in spec.search.space]
    else:
        varied = [f"- `{path}`: {', '.join(str(v) for v in values)}" for path, values in spec.axes.items()]
        if spec.arms:
            varied.append("- arms: " + ", ".join(f"`{name}`" for name in spec.arms))
    objectives = ", ".join(f"`{o.metric}` ({o.direction})" for o in spec.objectives)
    params = [f"`{path}`" for path in spec.axes] or ["`ablate.cell_label`"]
    lines = [
        f"**Question.** {spec.question or '(not stated in the study file)'}",
        "",
        f"**Varied** ({len(spec.seeds)} seeds each: {', '.join(str(s) for s in spec.seeds)}):",
        *varied,
        "",
        f"**Objectives:** {objectives}.",
        "",
        "**Compare in this UI:** the study's parent run holds one child run per trial: expand it (the + beside "
        f"`{spec.name}`), then under Columns add the objectives {objectives} and the varied "
        f"{', '.join(params)}; or select the child runs and Compare, then the parallel-coordinates chart. "
        "The tag `ablate.outcome` says how each trial ended; `ablate report` writes the effects with "
        "confidence intervals over seeds.",
    ]
    return "\n".join(lines)


def runs_page(server_url: str, experiment_id: str) -> str:
    """The experiment's runs table in model-training mode. MLflow 3.17's UI decides GenAI vs model training from
    a global switch (default GenAI) before it reads the experiment's kind, so a link must say which."""
    return f"{server_url.rstrip('/')}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"
