"""The study spec: what a study runs. schema (the study YAML, its cells and trials), queued (the config a
trial was queued with, and whether a study file still agrees with the queue), checks (what is refused or
warned before any training), dry_run (`ablate run --dry-run`).
"""
