"""Shared fixtures. The live-server fixtures (a real `cliplab serve` on a free port) live in backend_fixtures.py."""

import pytest

from tests.backend_fixtures import (  # noqa: F401 - re-exported as fixtures
    app_server,
    app_server_factory,
    demo_dataset,
    live_server,
    live_server_factory,
)
from tests.slurm_cluster import slurm_cluster  # noqa: F401,E402 - a private two-node SLURM, started once per session


@pytest.fixture(autouse=True)
def _pillow_pixel_limit_restored():
    """A `cliplab` command run in-process (main(), prepare's run) takes over Pillow's decompression-bomb check
    for its process (dataset.images.own_pixel_check); put pytest's back after each test."""
    from PIL import Image

    limit = Image.MAX_IMAGE_PIXELS
    yield
    Image.MAX_IMAGE_PIXELS = limit
