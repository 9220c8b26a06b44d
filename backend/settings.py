"""Server settings: environment variables (CLIPLAB_*) and `cliplab serve` flags, typed and validated."""

from __future__ import annotations

import ipaddress
import os
import secrets
import socket
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict

from backend.slurm_settings import SlurmSettings, read_config_file
from contract.config import default_data_dir

LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1", "[::1]")
TOKEN_FILE = "token"
# One per module in services/executors (its `_FACTORIES` builds them); named here so the settings check a
# name without importing the executors, which build themselves from these settings.
EXECUTOR_NAMES = ("local", "slurm")
# The run ends a notification may announce (services/notify.py); lost is not an end, but a user wants to know.
NOTIFY_STATUSES = ("finished", "failed", "stopped", "lost")
WILDCARD_HOSTS = ("0.0.0.0", "::", "[::]", "")


def shown_url(url: str) -> str:
    """A webhook as logs and answers show it: scheme and host, never the path or credentials (a Slack or
    Discord webhook's path is its secret)."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:  # a port that is not a number: the URL is refused, and shown without it
        port = ""
    return f"{parts.scheme or '?'}://{f'[{host}]' if ':' in host else host}{port}/…"


def _known_names(value: list[str], allowed: tuple[str, ...], what: str, quantity: str) -> list[str]:
    """`value` without repeats, or ValueError naming the first entry not in `allowed`."""
    unknown = [v for v in value if v not in allowed]
    if unknown:
        raise ValueError(f"unknown {what} {unknown[0]!r}; {quantity} of {', '.join(allowed)}")
    return list(dict.fromkeys(value))


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CLIPLAB_", extra="ignore", populate_by_name=True,
                                      env_nested_delimiter="__")

    config_file: Path | None = Field(None, description="A TOML or YAML file of these settings (env and flags win).")

    data_dir: Path = Field(default_factory=default_data_dir, description="Datasets, runs, database, token.")
    database_url: str | None = Field(
        None,
        validation_alias=AliasChoices("DATABASE_URL", "CLIPLAB_DATABASE_URL"),
        description="SQLAlchemy URL; default sqlite:///<data_dir>/cliplab.db.",
    )
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    token: str | None = Field(None, description="Access token; required (generated if unset) off loopback.")
    public_url: str | None = Field(None, description=(
        "The URL this server is reached at: what trainers POST to (default http://127.0.0.1:<port>) and the base of "
        "the run links in notifications (default http://<host>:<port>; set it when bound to 0.0.0.0)."))
    allowed_hosts: list[str] = Field(default_factory=lambda: ["*"], description="Host headers accepted off loopback.")
    cors_origins: list[str] = Field(default_factory=list, description="Extra origins allowed to call the API.")

    max_cpu_runs: int = Field(1, ge=0, description="CPU runs (gpus=0) allowed at once; 0 keeps them queued.")
    gpus: list[int] | None = Field(None, description="GPU indices the launcher may hand out; default: nvidia-smi.")
    stop_grace_s: float = Field(30.0, gt=0, description="SIGTERM to SIGKILL delay when stopping a run.")
    lost_after_s: float = Field(120.0, gt=0, description="A running run silent this long becomes `lost`.")
    poll_s: float = Field(0.5, gt=0, description="Launcher tick: start queued runs, reap exits, stop timeouts.")
    tail_every_s: float = Field(5.0, gt=0, description="Backfill events.jsonl lines the HTTP push missed.")
    max_body_bytes: int = Field(16 * 2**20, ge=1024, description="Largest request body accepted (413 above).")
    max_events_per_batch: int = Field(10_000, ge=1)
    max_seq_ahead: int = Field(1_000_000, ge=1, description=(
        "An event seq more than this past the run's highest stored seq is refused (409): no trainer jumps so far."))
    max_series_per_run: int = Field(10_000, ge=1, description=(
        "Distinct metric names a run may chart; the values of further names stay in their events only (a name "
        "made per step, f\"loss_{step}\", would otherwise grow every run list without bound)."))
    readable_dirs: list[Path] = Field(default_factory=list, description=(
        "Folders besides the data dir that runs may read (data.train/val, model.pretrained, resume) and "
        "dataset previews may serve images from; JSON list, e.g. CLIPLAB_READABLE_DIRS='[\"/data\"]'."))

    notify_urls: list[str] = Field(default_factory=list, description=(
        "Webhooks POSTed a JSON message (Slack/Mattermost/Discord-compatible) when a run ends; JSON list, e.g. "
        "CLIPLAB_NOTIFY_URLS='[\"https://hooks.slack.com/services/...\"]'."))
    notify_on: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["failed", "lost", "finished"], min_length=1,
        description="Which run ends are announced: finished, failed, stopped, lost (comma-separated).")
    notify_timeout_s: float = Field(5.0, gt=0, le=60, description="How long one webhook POST may take.")

    executors: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["local"], min_length=1,
                                 description="Where runs may train: local, slurm; the first is the default.")
    slurm: SlurmSettings = Field(default_factory=SlurmSettings, description="The SLURM executor's settings.")

    @field_validator("executors", "notify_on", mode="before")
    @classmethod
    def _comma_list(cls, value: Any) -> Any:  # CLIPLAB_EXECUTORS=slurm,local
        return [v.strip() for v in value.split(",") if v.strip()] if isinstance(value, str) else value

    @field_validator("notify_on")
    @classmethod
    def _known_run_ends(cls, value: list[str]) -> list[str]:
        return _known_names(value, NOTIFY_STATUSES, "run end", "any")

    @field_validator("public_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        parts = urlsplit(value) if value else None
        if parts is not None and (parts.scheme not in ("http", "https") or not parts.hostname):
            raise ValueError(f"{value!r} is not an http(s) URL with a host: give the address trainers and "
                             "notification readers reach this server at, e.g. http://gpu-box.lab:8000")
        return value

    @field_validator("notify_urls")
    @classmethod
    def _webhook_urls(cls, value: list[str]) -> list[str]:
        for index, url in enumerate(value):
            problem = webhook_url_problem(url)
            if problem:
                raise ValueError(f"entry {index} ({shown_url(url)}): {problem}")
        return value

    @field_validator("executors")
    @classmethod
    def _known_executors(cls, value: list[str]) -> list[str]:
        return _known_names(value, EXECUTOR_NAMES, "executor", "one")

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
                                   env_settings: PydanticBaseSettingsSource, dotenv_settings: PydanticBaseSettingsSource,
                                   file_secret_settings: PydanticBaseSettingsSource) -> tuple:
        """Flags (init) over environment over the config file."""
        return init_settings, env_settings, _ConfigFileSource(settings_cls, init_settings)

    @property
    def default_executor(self) -> str:
        return self.executors[0]

    def slurm_run_root(self) -> Path:
        """Where SLURM runs keep their run directories: a folder the nodes see too."""
        return self.slurm.run_root or self.runs_dir

    @property
    def runs_dir(self) -> Path:
        return self.data_dir / "runs"

    @property
    def datasets_dir(self) -> Path:
        return self.data_dir / "datasets"

    @property
    def readable_roots(self) -> list[Path]:
        """The data dir and the admin's readable folders, resolved: the only places runs read from."""
        return [p.expanduser().resolve() for p in (self.data_dir, *self.readable_dirs)]

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'cliplab.db'}"

    @property
    def server_url(self) -> str:
        return (self.public_url or f"http://127.0.0.1:{self.port}").rstrip("/")

    @property
    def link_url(self) -> str:
        """The base of the links people follow (notifications): the public URL, else the address as served (a
        wildcard bind, which no browser can open, as this machine's name)."""
        if self.public_url:
            return self.public_url.rstrip("/")
        host = socket.getfqdn() if self.host in WILDCARD_HOSTS else self.host
        host = f"[{host}]" if ":" in host and not host.startswith("[") else host
        return f"http://{host}:{self.port}"

    @property
    def is_loopback(self) -> bool:
        return is_loopback_host(self.host)


class _ConfigFileSource(PydanticBaseSettingsSource):
    """Settings from the file named by the `config_file` flag or CLIPLAB_CONFIG_FILE."""

    def __init__(self, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource):
        super().__init__(settings_cls)
        given = getattr(init_settings, "init_kwargs", {}).get("config_file")
        self.path = given or os.environ.get("CLIPLAB_CONFIG_FILE")

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        return read_config_file(Path(self.path)) if self.path else {}


def is_loopback_host(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def webhook_url_problem(url: str) -> str | None:
    """Why `url` cannot be a notification webhook (None when it can): an http(s) URL with a host."""
    try:
        parts = urlsplit(url)
        _ = parts.port  # a port that is not a number raises here
    except ValueError as exc:
        return f"not a URL ({exc})"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "not an http(s) URL with a host, e.g. https://hooks.slack.com/services/..."
    return None


def resolve_access_token(settings: Settings) -> tuple[str | None, bool]:
    """The token every request must carry, or None when the server may run open (loopback, none set).

    Off loopback without CLIPLAB_TOKEN, a token is generated once and kept in <data_dir>/token (mode 0600)
    so restarts keep it. Returns (token, newly_generated).
    """
    if settings.token:
        return settings.token, False
    if settings.is_loopback:
        return None, False
    path = settings.data_dir / TOKEN_FILE
    if path.is_file() and path.read_text().strip():
        return path.read_text().strip(), False
    token = secrets.token_urlsafe(24)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token, True
