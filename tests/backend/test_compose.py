"""docker-compose.yml validates with Debian's docker-compose (no daemon needed) and says what it should."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow  # docker-compose reads the files in a subprocess


def _compose(*args: str) -> str:
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.skip("docker-compose is not installed (apt-get install docker-compose)")
    r = subprocess.run([exe, "-f", str(REPO / "docker-compose.yml"), *args], cwd=REPO, capture_output=True,
                       text=True, timeout=120, env={"PATH": "/usr/bin:/bin:/usr/local/bin"})
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_compose_file_validates_with_gpus_reserved_a_data_volume_and_optional_postgres():
    config = yaml.safe_load(_compose("config"))
    app = config["services"]["cliplab"]
    assert app["build"]["context"] == str(REPO)
    assert app["command"][:2] == ["cliplab", "serve"] and "0.0.0.0" in app["command"]
    assert any(v.startswith("cliplab-data:/data") for v in app["volumes"])
    assert "cliplab-data" in config["volumes"]
    devices = app["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]
    assert config["services"]["postgres"]["profiles"] == ["postgres"]
    services = _compose("--profile", "postgres", "--profile", "cpu", "config", "--services").split()
    assert {"cliplab", "cliplab-cpu", "postgres"} <= set(services)


def test_dockerfile_copies_what_exists_and_starts_the_server():
    text = (REPO / "Dockerfile").read_text()
    for src in re.findall(r"^COPY\s+(.+?)\s+\S+$", text, flags=re.M):
        for item in src.split():
            assert (REPO / item).exists(), f"Dockerfile copies {item}, which is missing"
    assert 'CMD ["cliplab", "serve", "--host", "0.0.0.0"' in text
    assert "USER cliplab" in text
