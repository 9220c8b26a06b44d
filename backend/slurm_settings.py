"""The SLURM executor's settings (the `[slurm]` table of the config file, CLIPLAB_SLURM__* variables) and
the rules for the values that end up in a batch script.

Every value written into an `#SBATCH` line is checked here against a strict pattern, so neither the admin's
file nor a user's request can add a line or a shell word to the script.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}$")  # partitions, accounts, QOS names
TIME_RE = re.compile(r"^(\d+-)?\d{1,3}(:\d{2}){0,2}$")  # SLURM's [D-]HH[:MM[:SS]] or minutes
SBATCH_OPTION_RE = re.compile(r"^--[a-z][a-z0-9-]*(=[A-Za-z0-9_.,:=/@%+-]+)?$")
PATH_RE = re.compile(r"^/[A-Za-z0-9_./+-]*$")  # no spaces, quotes, `%` (sbatch expands it) or newlines
NAME_RULE = "letters, digits and _ . + - (at most 64, starting with a letter or digit)"
TIME_RULE = "a SLURM time limit: minutes, HH:MM:SS or D-HH:MM:SS"


def check_name(value: str, what: str) -> str:
    if not NAME_RE.match(value):
        raise ValueError(f"{what} {value!r} is not a SLURM name: use {NAME_RULE}")
    return value


def check_time(value: str) -> str:
    if not TIME_RE.match(value):
        raise ValueError(f"time limit {value!r} must be {TIME_RULE}")
    return value


def check_path(value: Path, what: str) -> Path:
    if not PATH_RE.match(str(value)):
        raise ValueError(f"{what} {str(value)!r} must be an absolute path of letters, digits and _ . / + - "
                         "(it is written into #SBATCH lines, where spaces, quotes and % do not survive)")
    return value


class SlurmSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    partition: str | None = Field(None, description="Default partition; none: the cluster's default.")
    partitions: list[str] = Field(default_factory=list, description="Partitions users may pick; empty: only "
                                  "the default one.")
    account: str | None = Field(None, description="--account for every job.")
    qos: str | None = Field(None, description="Default --qos.")
    max_nodes: int = Field(1, ge=1, le=4096)
    max_gpus_per_node: int = Field(8, ge=0, le=64)
    cpus_per_task: int = Field(4, ge=1, le=1024, description="Default --cpus-per-task (data-loader workers).")
    time_limit: str | None = Field(None, description="Default --time; none: the partition's limit.")
    extra_sbatch: list[str] = Field(default_factory=list, description='More #SBATCH options, e.g. "--mem=64G".')
    python: str = Field(sys.executable, description="The Python (of the venv) on the nodes that has cliplab.")
    run_root: Path | None = Field(None, description="Shared folder for SLURM runs' directories; default the "
                                  "server's runs dir (which must then be on the shared file system).")
    env: dict[str, str] = Field(default_factory=dict, description="Extra environment for sbatch/squeue/... "
                                "and the jobs, e.g. SLURM_CONF.")
    bin_dir: Path | None = Field(None, description="Where sbatch, squeue, sacct, scancel, sinfo are; default PATH.")
    poll_s: float = Field(2.0, gt=0, description="How often squeue is asked about active jobs.")
    rdzv_port: int = Field(29500, ge=1024, le=65535, description="torchrun rendezvous port base (plus the "
                           "job id modulo 1000).")

    @field_validator("partition", "account", "qos")
    @classmethod
    def _name(cls, value: str | None) -> str | None:
        return None if value is None else check_name(value, "name")

    @field_validator("partitions")
    @classmethod
    def _names(cls, value: list[str]) -> list[str]:
        return [check_name(v, "partition") for v in value]

    @field_validator("time_limit")
    @classmethod
    def _time(cls, value: str | None) -> str | None:
        return None if value is None else check_time(value)

    @field_validator("extra_sbatch")
    @classmethod
    def _options(cls, value: list[str]) -> list[str]:
        out = []
        for line in value:
            option = line.strip().removeprefix("#SBATCH").strip()
            if not SBATCH_OPTION_RE.match(option):
                raise ValueError(f"extra_sbatch entry {line!r} must be one sbatch option like --mem=64G")
            out.append(option)
        return out

    @field_validator("run_root")
    @classmethod
    def _root(cls, value: Path | None) -> Path | None:
        return None if value is None else check_path(value, "run_root")

    @field_validator("python")
    @classmethod
    def _python(cls, value: str) -> str:
        check_path(Path(value), "python")
        return value

    def allowed_partitions(self) -> list[str]:
        names = list(self.partitions)
        if self.partition and self.partition not in names:
            names.insert(0, self.partition)
        return names


def read_config_file(path: Path) -> dict[str, Any]:
    """The settings in a TOML (.toml) or YAML file, as a dict; errors name the file."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ValueError(f"cannot read the config file {path}: {exc}") from None
    try:
        data = tomllib.loads(text) if path.suffix == ".toml" else yaml.safe_load(text)
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        raise ValueError(f"config file {path} is not valid {path.suffix.lstrip('.') or 'YAML'}: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} must hold a table of settings")
    return data
