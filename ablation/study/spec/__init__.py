"""The study spec: what a study runs. schema (the study YAML's fields), study (a study file expanded into cells
and trials; `resolve_study`), queued (the config a trial was queued with, and whether a study file still agrees
with the queue), checks (what is refused or warned before any training), preflight (data and backbones present
before training), dry_run (`ablate run --dry-run`).
"""
