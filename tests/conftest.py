"""Shared fixtures. The live-server fixtures (a real `cliplab serve` on a free port) live in backend_fixtures.py."""

from tests.backend_fixtures import (  # noqa: F401 - re-exported as fixtures
    app_server,
    app_server_factory,
    demo_dataset,
    live_server,
    live_server_factory,
)
from tests.slurm_cluster import slurm_cluster  # noqa: F401,E402 - a private two-node SLURM, started once per session
