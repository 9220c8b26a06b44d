"""The typed run configuration, shared by the trainer and the backend.

Torch-free on purpose: the backend validates configs with these models without importing torch.

A config is a YAML file whose top-level sections mirror the classes below; every field has a default, so
`{}` is a valid config (the CPU demo). Overrides use dotted keys: `--set optim.lr=1e-4`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, field_validator, model_validator

from contract.datasets import DEFAULT_MAX_IMAGE_PIXELS


class ConfigError(ValueError):
    """A config that cannot be used; the message names the offending field(s)."""


class OverrideError(ConfigError):
    """An override that cannot apply to the config; `key` is its dotted key as given."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key


class Section(BaseModel):
    # Unknown keys are errors: a typo such as `optim.lerning_rate` must not be silently ignored.
    # Schemas build on first use: the server imports these models but validates a config only per request.
    # A number where text is expected is that text: YAML reads `name: 2024` as an int (`--set name=2024` a str).
    model_config = ConfigDict(extra="forbid", validate_assignment=True, defer_build=True, coerce_numbers_to_str=True)


class ModelConfig(Section):
    preset: str = Field("tiny-vit", description="Architecture preset (see trainer.available_models()).")
    pretrained: str | None = Field(
        None, description="Checkpoint to start from: OpenAI .pt, open_clip file, or a cliplab checkpoint dir."
    )
    freeze_image: bool = Field(False, description="Lock the image tower (LiT when the text tower trains).")
    freeze_text: bool = Field(False, description="Lock the text tower.")
    grad_checkpointing: bool = False
    compile: bool = Field(False, description="Wrap the model in torch.compile.")
    trim_text: bool = Field(True, description="Cut token batches to their longest caption (same features, faster).")

    @field_validator("preset")
    @classmethod
    def _known_preset(cls, v: str) -> str:
        from contract.presets import available_models, resolve_preset_name  # torch-free

        if resolve_preset_name(v) is None:
            raise ValueError(f"unknown model preset {v!r}; available: {', '.join(available_models())}")
        return v


class DataConfig(Section):
    train: str = Field("demo", description="train.csv, a shard pattern (dir/{000..009}.tar), or 'demo'.")
    val: str | None = Field("demo", description="val.csv, a shard pattern, 'demo', or null for no evaluation.")
    num_workers: int = Field(2, ge=0, le=256)
    train_crop_scale: tuple[float, float] = Field((0.9, 1.0), description="RandomResizedCrop scale range.")
    distinct_captions: bool = Field(
        False, description="Build batches whose captions are all different (class-style captions)."
    )
    cache: bool = Field(False, description="Keep decoded images in a memory-mapped uint8 cache (small datasets).")
    gpu_decode: bool = Field(False, description="Decode JPEGs on the GPU with torchvision when CUDA is present.")
    context_length: int = Field(77, ge=8, le=77)
    max_image_pixels: int | None = Field(
        DEFAULT_MAX_IMAGE_PIXELS, ge=1, description="Images with more pixels (width x height) are skipped as "
        "unreadable, naming their size; null: no limit. The default is Pillow's decompression-bomb limit.")

    @field_validator("train_crop_scale")
    @classmethod
    def _scale_in_unit_interval(cls, v: tuple[float, float]) -> tuple[float, float]:
        lo, hi = v
        if not (0.0 < lo <= hi <= 1.0):
            raise ValueError(f"must satisfy 0 < low <= high <= 1, got {list(v)}")
        return v


class LossConfig(Section):
    kind: Literal["clip", "siglip"] = "clip"
    local_loss: bool = Field(False, description="Each rank scores its own rows against all columns (open_clip).")
    gather_with_grad: bool = Field(True, description="Let gradients flow through the all-gather.")
    multi_positive: bool = Field(True, description="Identical captions and captions of the same image in a batch "
                                 "count as positives (not negatives) of each other.")


class OptimConfig(Section):
    lr: float = Field(5e-4, gt=0)
    weight_decay: float = Field(0.1, ge=0)
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = Field(1e-6, gt=0)
    grad_clip: float | None = Field(1.0, description="Max global grad norm; null disables clipping.")
    warmup_steps: int = Field(50, ge=0, le=1_000_000_000)
    schedule: Literal["cosine", "constant"] = "cosine"
    min_lr: float = Field(0.0, ge=0)


class TrainConfig(Section):
    batch_size: int = Field(64, ge=1, le=1_000_000, description="Per-device batch of one micro-step.")
    accum_steps: int = Field(1, ge=1, le=100_000, description="Micro-batches per optimizer step (loss over the whole batch).")
    steps: int = Field(600, ge=1, le=1_000_000_000, description="Optimizer steps in total.")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field("auto", description="auto = bf16 on CUDA, fp32 on CPU.")
    seed: int = Field(0, ge=-(2**63), le=2**63 - 1, description="Any 64-bit integer.")
    log_every: int = Field(10, ge=1, le=1_000_000_000, description="Read metrics back from the device every N steps.")
    device: str = Field("auto", description="auto, cpu, cuda, cuda:1 ...")
    system_every_s: float = Field(5.0, ge=0, le=86_400, description="Report CPU, memory and GPU use every N "
                                  "seconds from a background thread (`system` events); 0 turns it off.")


class EvalConfig(Section):
    every: int = Field(100, ge=1, le=1_000_000_000, description="Evaluate every N steps (and at the end).")
    batch_size: int = Field(64, ge=2, le=1_000_000, description="In-batch accuracy/similarity depend on this; it is recorded.")
    max_samples: int | None = Field(None, ge=2, le=1_000_000_000_000, description="Evaluate on the first N val pairs (unreadable ones among them are skipped, not replaced).")
    matrix_size: int = Field(16, ge=2, le=64, description="K for the K x K similarity-matrix snapshot (K different "
                             "val images, each with its first caption).")
    zeroshot: bool = Field(True, description="Zero-shot top-1/5 when the val set has labels.")
    recall_at: list[Annotated[int, Field(ge=1)]] = Field(default_factory=lambda: [1, 5, 10],
                                                        description="K of the R@K retrieval metrics, 1 or more.")


class CheckpointConfig(Section):
    every: int = Field(200, ge=1, le=1_000_000_000, description="Save every N steps (and at the end).")
    keep_last: int = Field(2, ge=1, le=10_000)
    best_metric: str | None = Field("val/loss", description="Eval metric that selects `best`; null disables.")
    best_mode: Literal["min", "max"] = Field("min", description="min for val/loss, max for the other metrics.")
    wise_ft_alpha: float | None = Field(
        None, ge=0, le=1, description="Also write a WiSE-FT checkpoint: alpha*finetuned + (1-alpha)*initial."
    )


MAX_TAGS = 32
MAX_TAG_LENGTH = 64
# One tag rule for configs and the API (backend/models.py adds "repeats dropped"): 1-64 characters after trimming.
Tag = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_TAG_LENGTH)]


def lower_is_better(metric: str) -> bool:
    """A metric's direction, by its name: losses go down, the rest (accuracy, R@K, similarity) up. The server's
    best values follow it too."""
    return "loss" in metric.rsplit("/", 1)[-1]


def eval_metric_names(recall_at: list[int] | tuple[int, ...] = (1, 5, 10)) -> list[str]:
    """The val/* metrics an evaluation reports (zero-shot ones only when the val set has labels and classes)."""
    ks = sorted(set(recall_at))
    return (["val/loss", "val/acc", "val/similarity"] + [f"val/i2t_R@{k}" for k in ks]
            + [f"val/t2i_R@{k}" for k in ks] + ["val/zeroshot_top1", "val/zeroshot_top5"])


class RunConfig(Section):
    name: str = Field("demo", min_length=1, max_length=200)
    tags: list[Tag] = Field(default_factory=list, max_length=MAX_TAGS,
                            description=f"At most {MAX_TAGS} labels of 1-{MAX_TAG_LENGTH} characters.")
    output_dir: str = Field("runs", description="Parent of run directories when --run-dir is not given.")
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)

    @model_validator(mode="after")
    def _towers_not_both_frozen(self) -> "RunConfig":
        if self.model.freeze_image and self.model.freeze_text:
            raise ValueError("model.freeze_image and model.freeze_text cannot both be true: nothing would train")
        return self

    @model_validator(mode="after")
    def _best_metric_is_an_eval_metric(self) -> "RunConfig":
        metric = self.checkpoint.best_metric
        if metric is None:
            return self
        known = eval_metric_names(self.eval.recall_at)
        if metric not in known:
            raise ValueError(f"checkpoint.best_metric {metric!r} is not an eval metric; one of {', '.join(known)} "
                             "(or null for no best checkpoint)")
        wanted = "min" if lower_is_better(metric) else "max"
        if self.checkpoint.best_mode != wanted:
            raise ValueError(f"checkpoint.best_mode {self.checkpoint.best_mode!r} with checkpoint.best_metric "
                             f"{metric!r}: {metric} is better when {'lower' if wanted == 'min' else 'higher'}, so "
                             f"`best` would keep the worst evaluation; set checkpoint.best_mode to {wanted!r}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def _format_validation_error(err: ValidationError, source: str, overridden: set[str] = frozenset()) -> str:
    lines = [f"invalid config{f' in {source}' if source else ''}{' with --set overrides' if overridden else ''}:"]
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"]) or "(top level)"
        origin = " (from --set)" if any(where == k or where.startswith(k + ".") for k in overridden) else ""
        lines.append(f"  {where}{origin}: {plain_message(e)}")
    return "\n".join(lines)


def config_errors(data: Any) -> list[dict[str, str]]:
    """Validate a config mapping; returns [{"field": "optim.lr", "message": ...}], empty when valid."""
    try:
        RunConfig.model_validate(data)
    except ValidationError as err:
        return [
            {"field": ".".join(str(p) for p in e["loc"]) or "(top level)", "message": plain_message(e)}
            for e in err.errors()
        ]
    return []


_TYPE_WORDS = {"float": "a number", "int": "a whole number", "bool": "true or false", "string": "text",
               "dict": "a section of settings", "list": "a list"}


def plain_message(error: Any) -> str:
    """What a person reads under a form field or after `cliplab train`: "must be a number, got 'abc'" rather
    than pydantic's "Input should be a valid number, unable to parse string as a number"."""
    kind, ctx, given = error["type"], error.get("ctx") or {}, error.get("input")
    for prefix, words in _TYPE_WORDS.items():
        if kind in (f"{prefix}_type", f"{prefix}_parsing", f"{prefix}_from_float"):
            return f"must be {words}, got {given!r:.80}"
    if kind == "string_too_short":
        return "must not be empty" if ctx.get("min_length") == 1 else f"needs at least {ctx['min_length']} characters"
    if kind == "string_too_long":
        return f"must be at most {ctx['max_length']} characters"
    if kind == "too_long":
        return f"must have at most {ctx['max_length']} items"
    if kind == "extra_forbidden":
        return "is not a setting (a typo?); " + _settings_hint(error["loc"][:-1])
    if kind == "missing":
        return "is required"
    bounds = {"greater_than": "greater than", "greater_than_equal": "at least", "less_than": "less than",
              "less_than_equal": "at most"}
    if kind in bounds:
        limit = next(iter(ctx.values()))
        return f"must be {bounds[kind]} {limit}, got {given!r:.80}"
    if kind == "value_error":
        return str(ctx.get("error", error["msg"]))
    return error["msg"].replace("Input should be", "must be", 1)


def _settings_hint(section: tuple) -> str:
    """"optim has: lr, betas, ..." for the section at `section` (a location), or what the top level has."""
    model: Any = RunConfig
    for key in section:
        field = getattr(model, "model_fields", {}).get(key)
        model = getattr(field, "annotation", None) if field else None
    names = list(getattr(model, "model_fields", {}))
    where = ".".join(map(str, section)) or "the top level"
    return f"{where} has: {', '.join(names)}" if names else "see the config reference"


# A checkpoint's weights and optimizer state take their shapes from these settings, so a resume keeps them.
RESUME_FIXED_FIELDS = ("model.preset", "model.freeze_image", "model.freeze_text", "loss.kind")


def resume_change_errors(saved: RunConfig, wanted: RunConfig) -> list[dict[str, str]]:
    """Field errors for each setting that `wanted` changes from the `saved` run's config and a resume from
    that run's checkpoint cannot follow (a different model does not fit its weights, a frozen tower or
    another loss does not fit its optimizer state)."""
    from contract.presets import resolve_preset_name  # torch-free

    errors = []
    for field in RESUME_FIXED_FIELDS:
        section, name = field.split(".")
        before, after = getattr(getattr(saved, section), name), getattr(getattr(wanted, section), name)
        if field == "model.preset" and resolve_preset_name(before) == resolve_preset_name(after):
            continue  # another spelling of the same architecture
        if before != after:
            errors.append({"field": field, "message": f"a resume keeps the run's {before!r}, which its checkpoint "
                                                      f"was trained with; start a new run (or clone this one) for {after!r}"})
    return errors


class _NoAliasLoader(yaml.SafeLoader):
    """SafeLoader without aliases: `[&a [1,1], [*a,*a], ...]` nests references that a few kilobytes of an
    override (a sweep sent to the server) expand into billions of values once copied or serialised. A value
    set on the command line or in a sweep has no use for them; config files keep them (yaml.safe_load)."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            raise yaml.composer.ComposerError(None, None, "aliases (*name) are not allowed in a value set here",
                                              self.peek_event().start_mark)
        return super().compose_node(parent, index)


def parse_override(item: str) -> tuple[list[str], Any]:
    """`optim.lr=1e-4` -> (["optim", "lr"], 1e-4); the value is parsed as YAML (numbers, bools, lists, null)."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like key.path=value")
    key, raw = item.split("=", 1)
    path = [p for p in key.strip().split(".") if p]
    if not path:
        raise ConfigError(f"override {item!r} has an empty key")
    try:
        value = yaml.load(raw, Loader=_NoAliasLoader) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {item!r}: value is not valid YAML ({exc})") from exc
    return path, value


def _is_text_field(path: list[str]) -> bool:
    """Whether the config field at `path` holds text (str or str | None), so `--set name=2024` stays a string."""
    model: Any = RunConfig
    for part in path:
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return False
        model = field.annotation
    return model in (str, str | None)


def parse_cli_override(item: str) -> tuple[list[str], Any]:
    """parse_override, except that a text field takes the text as written (`--set name=2024`)."""
    path, value = parse_override(item)
    if value is not None and not isinstance(value, str) and _is_text_field(path):
        value = item.split("=", 1)[1].strip()
    return path, value


def apply_overrides(data: dict[str, Any], overrides: list[str] | dict[str, Any]) -> dict[str, Any]:
    """Return a copy of `data` with dotted-key overrides applied (a list of `k=v` or a {dotted: value} dict)."""
    out = yaml.safe_load(yaml.safe_dump(data)) or {}
    items = overrides.items() if isinstance(overrides, dict) else (parse_cli_override(o) for o in overrides)
    for key, value in items:
        path = key.split(".") if isinstance(key, str) else key
        node = out
        for part in path[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise OverrideError(".".join(path), f"override {'.'.join(path)}: {part!r} is not a section")
            node = child
        node[path[-1]] = value
    return out


SECTIONS = frozenset(name for name, field in RunConfig.model_fields.items()
                    if isinstance(field.annotation, type) and issubclass(field.annotation, Section))


def load_config(
    path: str | os.PathLike | None = None,
    overrides: list[str] | dict[str, Any] | None = None,
) -> RunConfig:
    """Load a YAML config (a file, a bundled config's name, or the defaults when path is None), apply
    overrides, validate.

    Raises ConfigError naming the file and every bad field.
    """
    source = str(path) if path else ""
    data: Any = {}
    if path is not None:
        p = find_config(path)
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{p} is not valid YAML: {exc}") from exc
        except RecursionError:  # PyYAML composes nodes recursively
            raise ConfigError(f"{p} is nested too deeply to be a config (sections hold plain values)") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{p}: the top level must be a mapping of sections, got {type(data).__name__}")
        # `model:` with nothing under it (all its keys commented out, say) is YAML's null: the section's defaults
        data = {key: value for key, value in data.items() if value is not None or key not in SECTIONS}
    overridden: set[str] = set()
    if overrides:
        data = apply_overrides(data, overrides)
        keys = overrides if isinstance(overrides, dict) else [o.split("=", 1)[0].strip() for o in overrides]
        overridden = {k if isinstance(k, str) else ".".join(k) for k in keys}
    try:
        return RunConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, source, overridden)) from None


def default_data_dir() -> Path:
    """Where datasets, run directories and the database live unless told otherwise."""
    return Path(os.environ.get("CLIPLAB_DATA_DIR") or Path.home() / ".cliplab").expanduser()


def bundled_config_dir() -> Path:
    """The example configs shipped with the package (cpu-demo.yaml, vit-b-32-finetune.yaml, ...)."""
    return Path(__file__).parent / "configs"


def bundled_configs() -> dict[str, Path]:
    """The bundled configs by name (the file name without .yaml), in name order: `cliplab configs`,
    `cliplab train <name>` and the API's /api/configs all list them from here."""
    return {p.stem: p for p in sorted(bundled_config_dir().glob("*.yaml"))}


def find_config(spec: str | os.PathLike) -> Path:
    """The config file `spec` names: an existing file, else a bundled config by name (`cpu-demo`, or
    `cpu-demo.yaml` with no folder), from any working directory. Raises ConfigError listing the bundled ones."""
    path = Path(spec).expanduser()
    if path.is_file():
        return path
    bundled = bundled_configs()
    name = path.name.removesuffix(".yaml")
    if str(spec) == path.name and name in bundled:
        return bundled[name]
    raise ConfigError(f"config file not found: {path}; bundled configs by name: {', '.join(bundled)} "
                      "(`cliplab configs` shows them)")
