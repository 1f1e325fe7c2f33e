"""The `slurm` tier's cluster: one real single-node Slurm (munged, slurmctld, slurmd) for the session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from slurm_cluster import PACKAGES, SlurmCluster, missing_binaries


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[SlurmCluster]:
    """Started once (about 2 s), stopped by pid at the end; skipped only where the binaries are absent."""
    missing = missing_binaries()
    if missing:
        pytest.skip(f"Slurm binaries not found: {', '.join(missing)}; .ci/run installs them "
                    f"(apt-get install -y {PACKAGES})")
    cluster = SlurmCluster()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.close()
