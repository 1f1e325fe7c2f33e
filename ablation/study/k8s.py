"""`ablate k8s-manifest STUDY --workers N`: a Kubernetes Indexed Job of N `ablate worker` pods.

Preemption and eviction are not failures: a podFailurePolicy rule ignores pods with the DisruptionTarget condition
(the index is started again, not charged), and each index has its own small backoff. The pod gets SIGTERM first, and
the worker checkpoints and gives its trial back within the grace period. PostgreSQL and the MLflow server are named
by a Secret; checkpoints live on a ReadWriteMany volume every pod mounts.
"""

from __future__ import annotations

from typing import Any

import yaml

TRIALS_MOUNT = "/shared"


def indexed_job(study_name: str, study_file: str, workers: int, image: str, secret: str, claim: str,
                gpus_per_worker: int = 0, worker_args: tuple[str, ...] = (), backoff_per_index: int = 3,
                grace_s: int = 300) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": "worker",
        "image": image,
        "command": ["ablate", "worker", study_file, "--quiet", *worker_args],
        "env": [{"name": "ABLATE_TRIALS_DIR", "value": f"{TRIALS_MOUNT}/trials"}],
        # ABLATE_STORAGE (postgresql://...) and MLFLOW_TRACKING_URI: passwords stay out of the manifest
        "envFrom": [{"secretRef": {"name": secret}}],
        "volumeMounts": [{"name": "shared", "mountPath": TRIALS_MOUNT}],
    }
    if gpus_per_worker:
        container["resources"] = {"limits": {"nvidia.com/gpu": gpus_per_worker}}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": f"ablate-{study_name}".lower().replace("_", "-")[:63],
                     "labels": {"app.kubernetes.io/name": "ablate", "ablate/study": study_name[:63]}},
        "spec": {
            "completionMode": "Indexed",
            "completions": workers,
            "parallelism": workers,
            "backoffLimitPerIndex": backoff_per_index,
            "podFailurePolicy": {"rules": [
                {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
            ]},
            "template": {
                "metadata": {"labels": {"app.kubernetes.io/name": "ablate"}},
                "spec": {
                    "restartPolicy": "Never",  # required by podFailurePolicy; the Job starts a new pod
                    "terminationGracePeriodSeconds": grace_s,  # SIGTERM -> checkpoint -> trial given back
                    "containers": [container],
                    "volumes": [{"name": "shared", "persistentVolumeClaim": {"claimName": claim}}],
                },
            },
        },
    }


def manifest_text(job: dict[str, Any]) -> str:
    return yaml.safe_dump(job, sort_keys=False)
