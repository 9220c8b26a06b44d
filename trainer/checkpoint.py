"""Read CLIP weights in every common layout, write ours, export to open_clip, and `load()` a model.

Readable layouts (`read_checkpoint`):
- OpenAI TorchScript archives (the released `ViT-B-32.pt` etc.): their `state_dict()`.
- Plain state dicts saved with `torch.save`: fp16 or fp32, with OpenAI's scalar keys `input_resolution`,
  `context_length`, `vocab_size`, an optional `module.` prefix, or wrapped in {"state_dict": ...} / {"model": ...}.
- open_clip checkpoints (.bin / .pt / .pth / .safetensors): for these architectures its key names are OpenAI's.
- Ours: a directory holding `model.safetensors` + `model.json` (the ModelArgs); the ModelArgs are also in the
  safetensors metadata so a lone file still explains itself. A run directory, its checkpoints/ folder and
  the checkpoints/latest and checkpoints/best pointer files mean the step directory they name. A directory
  holding SHA256SUMS (trainer.integrity; every one cliplab writes) is checked against it before it is read.
Any other file is rejected as "not a checkpoint" before a reader sees it; a damaged one as "truncated or corrupt".

Loading never drops weights silently: anything missing, unexpected or mis-shaped raises `CheckpointError`
listing the keys, unless the caller asks for a partial load (`strict=False`), which returns a `LoadReport`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import pickle
import re
import warnings
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from contract.presets import HEAD_WIDTH, OPEN_CLIP_NAMES, PRESETS, ModelArgs, available_models, resolve_preset_name
from contract.run_dir import CHECKPOINTS_DIR, LATEST, POINTERS, pointer_name, resolve_pointer, step_of
from trainer.integrity import ManifestError, manifest_problems
from trainer.model import CLIP, build_model

log = logging.getLogger(__name__)

FORMAT = "cliplab.model"
FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
ARGS_FILE = "model.json"
OPEN_CLIP_WEIGHTS = "open_clip_model.safetensors"
OPEN_CLIP_CONFIG = "open_clip_config.json"
# Entries that describe the architecture rather than hold weights (OpenAI's JIT scalars, old open_clip's mask).
_DERIVED_KEYS = ("input_resolution", "context_length", "vocab_size", "attn_mask")
ACCEPTED = (f"a cliplab checkpoint directory ({WEIGHTS_FILE} + {ARGS_FILE}), a run directory, its checkpoints/ "
            "folder or checkpoints/latest|best, a .safetensors file, a torch.save file (.pt/.pth/.bin) or an "
            "OpenAI TorchScript archive")


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the model; the message names the file and keys."""


@dataclass
class LoadReport:
    """What a (possibly partial) load did: keys copied, and the ones it could not use."""

    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # in the model, absent from the checkpoint
    unexpected: list[str] = field(default_factory=list)  # in the checkpoint, absent from the model
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)  # key, ckpt, model

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def describe(self) -> str:
        parts = []
        if self.missing:
            parts.append(f"{len(self.missing)} missing keys {_show(self.missing)}")
        if self.unexpected:
            parts.append(f"{len(self.unexpected)} unexpected keys {_show(self.unexpected)}")
        if self.mismatched:
            shown = [f"{k}: checkpoint {tuple(c)} vs model {tuple(m)}" for k, c, m in self.mismatched]
            parts.append(f"{len(self.mismatched)} mis-shaped keys {_show(shown)}")
        return "; ".join(parts) or f"all {len(self.loaded)} keys loaded"


def _show(items: list[str], limit: int = 12) -> str:
    more = f" ... and {len(items) - limit} more" if len(items) > limit else ""
    return "[" + ", ".join(items[:limit]) + more + "]"


@dataclass
class Checkpoint:
    """A state dict as read from disk, with the architecture when the file records it."""

    state_dict: dict[str, torch.Tensor]
    args: ModelArgs | None
    path: Path
    format: str  # "cliplab", "openai-jit", "torch", "safetensors"


# ---------------------------------------------------------------------------------------------------- reading


def read_checkpoint(path: str | os.PathLike, *, verify: bool = True) -> Checkpoint:
    """Read any supported layout into a clean OpenAI-named state dict (see the module docstring).

    A cliplab directory's weights are checked against its SHA256SUMS first when it has one (CheckpointError
    naming the damaged file); `verify=False` is for a caller that checked the whole directory already."""
    path = Path(path).expanduser()
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.is_dir() or path.name == ARGS_FILE:
        return _read_directory(path if path.is_dir() else path.parent, verify)
    if path.name == WEIGHTS_FILE and (path.parent / ARGS_FILE).is_file():
        return _read_directory(path.parent, verify)
    step_dir = _pointer_target(path)
    if step_dir is not None:
        return _read_directory(step_dir, verify)
    if verify and path.name == WEIGHTS_FILE:  # our weights read alone (their model.json gone): still checked
        _verify_weights(path.parent, [WEIGHTS_FILE])
    if path.stat().st_size and not _has_checkpoint_signature(path):
        raise CheckpointError(f"{path} is not a checkpoint ({_describe_start(path)}); expected {ACCEPTED}")
    state_dict, args, fmt = _read_file(path)
    state_dict = _clean_state_dict(state_dict, path)
    if args is None:  # shapes cannot tell the activation; an open_clip config beside the weights can
        args = _args_with_open_clip_activation(state_dict, path.parent / OPEN_CLIP_CONFIG)
    return Checkpoint(state_dict, args, path, fmt)


def _args_with_open_clip_activation(state_dict: dict[str, torch.Tensor], config: Path) -> ModelArgs | None:
    """The architecture inferred from the shapes, with the activation `config` (an open_clip_config.json, as
    export_open_clip and the Hugging Face hub lay it out) names; None without a readable config. open_clip
    builds nn.GELU unless its model config says quick_gelu, so an absent key means GELU (LAION's models)."""
    if not config.is_file():
        return None
    try:
        meta = json.loads(config.read_text())
        model_cfg = meta.get("model_cfg", meta)  # the hub's file wraps it; open_clip's own configs do not
        quick_gelu = bool(model_cfg.get("quick_gelu", False))
    except (OSError, ValueError, AttributeError) as exc:
        log.warning("ignoring %s: not a readable open_clip config (%s)", config, exc)
        return None
    try:
        args = model_args_from_state_dict(state_dict)
    except CheckpointError:
        return None  # not a CLIP layout: load_model reports it with the keys
    return dataclasses.replace(args, quick_gelu=quick_gelu)


def _pointer_target(path: Path) -> Path | None:
    """The step directory a checkpoints/latest or checkpoints/best file names; None if `path` is no pointer."""
    name = pointer_name(path) if path.name in POINTERS else None
    if name is None:
        return None
    target = resolve_pointer(path)
    if target is None:
        present = sorted(p.name for p in path.parent.iterdir() if step_of(p.name) is not None and p.is_dir())
        other = f"; it holds {', '.join(present)}: load one of those by path" if present else ""
        raise CheckpointError(f"{path} points to the step directory {name}, which is not in {path.parent} "
                              f"(pruned or not copied?){other}")
    return target


def _has_checkpoint_signature(path: Path) -> bool:
    """Whether the file starts like a format _read_file reads; a cut file keeps its start, other files do not."""
    with open(path, "rb") as f:
        head = f.read(9)
    if head[:1] == b"\x80":  # a pickle (protocol 2+): torch.save's legacy format
        return True
    if head[:4] == b"PK\x03\x04":  # a zip: torch.save's format and TorchScript archives, which hold data.pkl
        if not zipfile.is_zipfile(path):
            return True  # a cut zip has lost its directory: let the reader call it truncated
        with zipfile.ZipFile(path) as z:
            return any(n.endswith("data.pkl") for n in z.namelist())
    return _is_safetensors(path)


def _describe_start(path: Path) -> str:
    """What kind of file this is, in words: never its bytes (the path may name any file the user can read)."""
    with open(path, "rb") as f:
        head = f.read(40)
    if head.startswith(b"PK\x03\x04"):
        return "a zip archive without torch's data.pkl"
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return "a binary file of another format"
    return "a text file"


def _read_directory(directory: Path, verify: bool = True) -> Checkpoint:
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        # A run directory (or its checkpoints/ folder) means its latest checkpoint.
        for base in (directory / CHECKPOINTS_DIR, directory):
            target = _pointer_target(base / LATEST)  # a `latest` naming a removed step says so
            if target is not None and (target / WEIGHTS_FILE).is_file():
                return _read_directory(target, verify)
        for name in (OPEN_CLIP_WEIGHTS, "open_clip_pytorch_model.bin"):
            if (directory / name).is_file():
                return read_checkpoint(directory / name)
        raise CheckpointError(
            f"{directory} holds no weights: expected {WEIGHTS_FILE} (+ {ARGS_FILE}), a run directory with "
            f"checkpoints/latest, or {OPEN_CLIP_WEIGHTS}"
        )
    if verify:
        _verify_weights(directory, [WEIGHTS_FILE, ARGS_FILE])
    state_dict, args, _ = _read_file(weights)
    args_file = directory / ARGS_FILE
    if args_file.is_file():
        args = _args_from_json(args_file)
    return Checkpoint(_clean_state_dict(state_dict, weights), args, weights, "cliplab")


def verify_checkpoint_dir(directory: Path, names: list[str] | None = None) -> bool:
    """Check the files `directory`'s SHA256SUMS lists (only `names` among them, when given); False when it has
    no manifest (an older cliplab's or a hand-made directory: read unchecked). Raises CheckpointError naming
    each file that is missing or fails its checksum."""
    try:
        problems = manifest_problems(directory, names)
    except ManifestError as exc:
        raise CheckpointError(f"checkpoint {directory} is damaged: {exc}") from None
    if problems:
        raise CheckpointError(f"checkpoint {directory} is damaged: {'; '.join(problems)}")
    return problems is not None


def _verify_weights(directory: Path, names: list[str]) -> None:
    """verify_checkpoint_dir for the files a weights load reads (train_state.pt is the resume's to check), the
    error naming the other checkpoints beside a damaged step directory."""
    try:
        verify_checkpoint_dir(directory, names)
    except CheckpointError as exc:
        raise CheckpointError(f"{exc}{_other_checkpoints(directory)}") from None


def _other_checkpoints(directory: Path) -> str:
    """"; other checkpoints in <folder>: step_..." for the error about a damaged step directory."""
    if step_of(directory.name) is None:
        return ""
    others = sorted((step, p.name) for p in directory.parent.iterdir()
                    if (step := step_of(p.name)) is not None and p != directory and (p / WEIGHTS_FILE).is_file())
    return (f"; other checkpoints in {directory.parent}: {', '.join(n for _, n in others)} (load one by path)"
            if others else "")


def _args_from_json(path: Path) -> ModelArgs:
    try:
        meta = json.loads(path.read_text())
        version = int(meta.get("format_version", 0))
        if meta.get("format") != FORMAT or version < 1:
            raise ValueError(f"format must be {FORMAT!r} version >= 1, got {meta.get('format')!r} v{version}")
        if version > FORMAT_VERSION:
            raise ValueError(f"format version {version} is newer than this cliplab reads ({FORMAT_VERSION})")
        return ModelArgs.from_dict(meta["model_args"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{path}: not a valid cliplab model description ({exc})") from exc


def _read_file(path: Path) -> tuple[Any, ModelArgs | None, str]:
    try:
        if _is_safetensors(path):
            return (*_read_safetensors(path), "safetensors")
        if _is_torchscript(path):
            # OpenAI's released .pt files are TorchScript archives, which only jit.load reads.
            with warnings.catch_warnings():  # jit.load is deprecated, yet it is the only reader of these files
                warnings.simplefilter("ignore", FutureWarning)
                archive = torch.jit.load(str(path), map_location="cpu")
            return archive.state_dict(), None, "openai-jit"
        return torch.load(path, map_location="cpu", weights_only=True), None, "torch"
    except CheckpointError:
        raise
    except Exception as exc:  # torch and safetensors raise many types for damaged files
        if (refusal := weights_only_refusal(path, exc)) is not None:
            raise refusal from None
        hint = " (truncated or corrupt?)" if path.stat().st_size else " (the file is empty)"
        raise CheckpointError(f"cannot read checkpoint {path}{hint}: {type(exc).__name__}: {exc}") from exc


def weights_only_refusal(path: Path, exc: Exception) -> CheckpointError | None:
    """The error for a torch.save file that torch.load(weights_only=True) refused for holding Python objects
    besides tensors (None for any other failure). Unpickling such objects can run any code; torch's own
    message suggests turning weights_only off, which is not advice to pass on for a file from anywhere."""
    if not (isinstance(exc, pickle.UnpicklingError) and "weights only load failed" in str(exc).lower()):
        return None
    found = re.search(r"GLOBAL ([\w.]+)", str(exc))
    what = f" ({found.group(1)})" if found else ""
    return CheckpointError(f"{path} holds Python objects other than tensors{what}, which cliplab does not unpickle: "
                           "loading them could run code. If you trust the file, re-save only its tensors (a state "
                           "dict) with torch.save, or convert it to .safetensors")


def _is_safetensors(path: Path) -> bool:
    if path.suffix == ".safetensors":
        return True
    with open(path, "rb") as f:
        head = f.read(9)  # 8-byte little-endian header length, then the JSON header
    return len(head) == 9 and head[8:9] == b"{"


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(n.endswith("/constants.pkl") or "/code/" in n for n in z.namelist())


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], ModelArgs | None]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt", device="cpu") as f:
        meta = f.metadata() or {}
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    args = None
    if meta.get("format") == FORMAT and "model_args" in meta:
        try:
            args = ModelArgs.from_dict(json.loads(meta["model_args"]))
        except ValueError as exc:
            raise CheckpointError(f"{path}: the model_args in its metadata are invalid ({exc})") from exc
    return tensors, args


def _clean_state_dict(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """Unwrap {"state_dict": ...}/{"model": ...}, strip `module.`/`_orig_mod.`, drop derived scalars."""
    while isinstance(obj, Mapping) and not _looks_like_state_dict(obj):
        inner = next((obj[k] for k in ("state_dict", "model") if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(f"{path} does not hold a state dict (found {type(obj).__name__})")
    state = _strip_wrapper_prefixes(dict(obj))
    for key in _DERIVED_KEYS:
        state.pop(key, None)
    not_tensors = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise CheckpointError(f"{path}: entries that are not tensors {_show(not_tensors)}; not a weights file")
    return state


def _strip_wrapper_prefixes(state: dict[str, Any]) -> dict[str, Any]:
    """Drop `module.` (DDP) and `_orig_mod.` (torch.compile) from every key, in whichever order and nesting
    the wrappers were applied (compile around DDP saves `_orig_mod.module.`)."""
    while True:
        prefix = next((p for p in ("module.", "_orig_mod.") if all(k.startswith(p) for k in state)), None)
        if prefix is None or not state:
            return state
        state = {k[len(prefix):]: v for k, v in state.items()}


def _looks_like_state_dict(obj: Mapping) -> bool:
    return any(isinstance(v, torch.Tensor) for v in obj.values())


# ---------------------------------------------------------------------------------- architecture inference


def model_args_from_state_dict(state_dict: Mapping[str, torch.Tensor]) -> ModelArgs:
    """Infer the architecture from tensor shapes, as OpenAI's `build_model` does.

    Raises CheckpointError listing the keys it needed and did not find.
    """
    sd = state_dict
    vit, resnet = "visual.proj" in sd, "visual.attnpool.positional_embedding" in sd
    needed = ["text_projection", "positional_embedding", "token_embedding.weight", "ln_final.weight"]
    needed += ["visual.conv1.weight", "visual.positional_embedding"] if vit else []
    needed += ["visual.layer1.0.conv1.weight"] if resnet else []
    missing = [k for k in needed if k not in sd]
    if not (vit or resnet):
        missing.append("visual.proj (ViT image tower) or visual.attnpool.positional_embedding (ResNet image tower)")
    if not any(k.startswith("transformer.resblocks.") for k in sd):
        missing.append("transformer.resblocks.* (text transformer)")
    if missing:
        sample = _show(sorted(sd), limit=8)
        raise CheckpointError(f"unknown checkpoint layout (not an OpenAI/open_clip CLIP state dict): missing "
                              f"{', '.join(missing)}; it has {len(sd)} keys such as {sample}")
    if vit:
        vision_width, _, patch, _ = sd["visual.conv1.weight"].shape
        vision_layers: int | tuple = sum(
            1 for k in sd if k.startswith("visual.transformer.resblocks.") and k.endswith(".attn.in_proj_weight"))
        tokens = sd["visual.positional_embedding"].shape[0]
        grid = round(math.sqrt(tokens - 1))
        if grid * grid + 1 != tokens:
            raise CheckpointError(f"visual.positional_embedding has {tokens} rows; a ViT needs grid*grid + 1")
        image_resolution, vision_patch_size = patch * grid, patch
    else:
        vision_layers = tuple(
            len({k.split(".")[2] for k in sd if k.startswith(f"visual.layer{stage}.")}) for stage in (1, 2, 3, 4))
        vision_width = sd["visual.layer1.0.conv1.weight"].shape[0]
        tokens = sd["visual.attnpool.positional_embedding"].shape[0]
        out_width = round(math.sqrt(tokens - 1))
        if out_width * out_width + 1 != tokens:
            raise CheckpointError(f"visual.attnpool.positional_embedding has {tokens} rows; expected side*side + 1")
        image_resolution, vision_patch_size = out_width * 32, None
    width = sd["ln_final.weight"].shape[0]
    bias = sd.get("logit_bias")
    try:
        return ModelArgs(
            embed_dim=sd["text_projection"].shape[1],
            image_resolution=image_resolution,
            vision_layers=vision_layers,
            vision_width=vision_width,
            vision_patch_size=vision_patch_size,
            context_length=sd["positional_embedding"].shape[0],
            vocab_size=sd["token_embedding.weight"].shape[0],
            transformer_width=width,
            transformer_heads=max(1, width // HEAD_WIDTH),
            transformer_layers=len({k.split(".")[2] for k in sd if k.startswith("transformer.resblocks.")}),
            init_logit_bias=None if bias is None else (0.0 if bias.is_meta else float(bias.float().flatten()[0])),
        )
    except ValueError as exc:
        raise CheckpointError(f"the state dict's shapes do not describe a valid CLIP: {exc}") from exc


# ---------------------------------------------------------------------------------------------------- loading


def unwrap_model(model: nn.Module) -> nn.Module:
    """The CLIP inside DistributedDataParallel / torch.compile wrappers."""
    while True:
        if isinstance(getattr(model, "module", None), nn.Module):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        else:
            return model


def compare_state_dicts(model_sd: Mapping[str, torch.Tensor], ckpt_sd: Mapping[str, torch.Tensor]) -> LoadReport:
    """Which checkpoint keys fit the model (same name and shape), and which do not."""
    report = LoadReport()
    for key, target in model_sd.items():
        if key not in ckpt_sd:
            # BatchNorm's step counter only matters with momentum=None; old files may lack it.
            if not key.endswith("num_batches_tracked"):
                report.missing.append(key)
        elif _fits(ckpt_sd[key], target):
            report.loaded.append(key)
        else:
            report.mismatched.append((key, tuple(ckpt_sd[key].shape), tuple(target.shape)))
    report.unexpected = [k for k in ckpt_sd if k not in model_sd]
    return report


def _fits(source: torch.Tensor, target: torch.Tensor) -> bool:
    # open_clip may store logit_scale as shape [1]; a single number fits a scalar either way.
    return source.shape == target.shape or (source.numel() == target.numel() == 1)


def load_weights(model: nn.Module, source: str | os.PathLike | Mapping[str, torch.Tensor],
                 strict: bool = True, *, source_name: str | None = None) -> LoadReport:
    """Copy a checkpoint (path or state dict) into `model`, converting dtypes (fp16 -> fp32).

    strict=True raises CheckpointError unless every key matches in name and shape; strict=False copies what
    fits and returns the LoadReport of what did not. `source_name` names a state dict in error messages.
    """
    where = source_name or "state dict"
    if not isinstance(source, Mapping):
        ckpt = read_checkpoint(source)
        source, where = ckpt.state_dict, str(ckpt.path)
    model = unwrap_model(model)
    report = compare_state_dicts(model.state_dict(), source)
    if strict and not report.ok:
        raise CheckpointError(f"checkpoint {where} does not fit the model: {report.describe()} "
                              "(pass strict=False for a partial load)")
    targets = model.state_dict()
    with torch.no_grad():
        for key in report.loaded:
            targets[key].copy_(source[key].reshape(targets[key].shape))
    return report


def load_model(path: str | os.PathLike, device: torch.device | str = "cpu", strict: bool = True,
               quick_gelu: bool | None = None) -> CLIP:
    """Build the model a checkpoint describes (recorded ModelArgs, else inferred from shapes) and load it.

    Returned in eval mode, fp32, on `device`. strict=False keeps the initial values of what the file lacks
    and logs the report. Shapes cannot tell the activation: inferred architectures use OpenAI's QuickGELU
    unless `quick_gelu=False` (open_clip weights trained with nn.GELU, e.g. its LAION ViT-B-32), or unless an
    open_clip_config.json beside the weights (the hub's and export_open_clip's layout) names the activation.
    """
    ckpt = read_checkpoint(path)
    args = ckpt.args or model_args_from_state_dict(ckpt.state_dict)
    if quick_gelu is not None:
        args = dataclasses.replace(args, quick_gelu=quick_gelu)
    if strict:
        model = _uninitialised_model(args)  # every tensor is about to be overwritten: skip the random init
    else:
        model = build_model(args)
    report = load_weights(model, ckpt.state_dict, strict=strict, source_name=str(ckpt.path))
    if not report.ok:
        log.warning("partial load of %s: %s", ckpt.path, report.describe())
    return model.to(device).float().eval()


def _uninitialised_model(args: ModelArgs) -> CLIP:
    model = build_model(args, device="meta").to_empty(device="cpu")
    for name, buf in model.named_buffers():
        if name.endswith("num_batches_tracked"):
            buf.zero_()  # may be absent from the file (see compare_state_dicts)
    return model


def find_local_weights(preset: str) -> Path | None:
    """Weights for a preset already on this machine: <data_dir>/models/<name>[.safetensors|.pt|/] or the
    `clip` package's cache (~/.cache/clip/<name>.pt). Nothing is ever downloaded."""
    from contract.config import default_data_dir

    models = default_data_dir() / "models"
    candidates = [models / preset, models / f"{preset}.safetensors", models / f"{preset}.pt",
                  Path.home() / ".cache" / "clip" / f"{preset}.pt"]
    return next((p for p in candidates if p.exists()), None)


def load(name_or_path: str | os.PathLike, device: torch.device | str = "cpu") -> tuple[CLIP, Callable]:
    """`clip.load`: (model in eval mode, fp32, on `device`; its eval preprocess transform).

    A path loads any supported checkpoint layout. A preset name (see available_models()) loads local weights
    when find_local_weights() finds some, else gives a randomly initialised model and logs a warning.
    """
    from trainer.transforms import eval_transform

    path = Path(name_or_path).expanduser()
    if path.exists():
        model = load_model(path, device)
    else:
        preset = resolve_preset_name(str(name_or_path))
        if preset is None:
            raise CheckpointError(f"{str(name_or_path)!r} is neither an existing checkpoint path nor a model "
                                  f"preset (available: {', '.join(available_models())})")
        local = find_local_weights(preset)
        if local is not None:
            model = load_model(local, device)
            if model.args != PRESETS[preset]:
                log.warning("weights %s for preset %s have a different architecture: %s", local, preset, model.args)
        else:
            log.warning("no local weights for preset %s: the model is randomly initialised", preset)
            model = build_model(PRESETS[preset]).to(device).eval()
    return model, eval_transform(model.image_resolution)


# ---------------------------------------------------------------------------------------------------- writing


def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Write through a temporary sibling and rename, so readers never see half a file."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _cpu_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}


def recorded_args(model: nn.Module) -> ModelArgs:
    """The ModelArgs that rebuild `model` as it is now: a logit_bias attached after construction (the
    trainer adds one for SigLIP) is recorded, so the saved file loads strictly."""
    args = unwrap_model(model).args
    bias = getattr(unwrap_model(model), "logit_bias", None)
    if bias is not None and args.init_logit_bias is None:
        args = dataclasses.replace(args, init_logit_bias=float(bias.detach().float().flatten()[0]))
    return args


def save_model(model: nn.Module, directory: str | os.PathLike) -> Path:
    """Write our format: <directory>/model.safetensors (ModelArgs in its metadata) + model.json.

    Each file is written atomically; the weights first, so a model.json always has its weights beside it.
    """
    from safetensors.torch import save_file

    model = unwrap_model(model)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    args = recorded_args(model).to_dict()
    meta = {"format": FORMAT, "format_version": str(FORMAT_VERSION), "model_args": json.dumps(args)}
    tensors = _cpu_state_dict(model)
    _atomic_write(directory / WEIGHTS_FILE, lambda tmp: save_file(tensors, str(tmp), metadata=meta))
    description = json.dumps({"format": FORMAT, "format_version": FORMAT_VERSION, "model_args": args}, indent=2)
    _atomic_write(directory / ARGS_FILE, lambda tmp: tmp.write_text(description + "\n"))
    return directory


@dataclass
class OpenClipExport:
    """Where export_open_clip wrote, and how open_clip builds the model.

    Any architecture: `open_clip.create_model(f"local-dir:{export.directory}")` (reads open_clip_config.json
    and picks up open_clip_model.safetensors / .bin / .pth in that directory).
    OpenAI presets also: `open_clip.create_model(export.model_name, pretrained=str(export.weights))`.
    """

    weights: Path
    config: Path
    model_name: str | None  # open_clip's built-in config with the same architecture, if there is one

    @property
    def directory(self) -> Path:
        return self.weights.parent


def open_clip_model_config(args: ModelArgs) -> dict[str, Any]:
    """open_clip's model config (embed_dim, quick_gelu, vision_cfg, text_cfg) for the same network."""
    cfg: dict[str, Any] = {
        "embed_dim": args.embed_dim,
        "quick_gelu": args.quick_gelu,
        "vision_cfg": {
            "image_size": args.image_resolution,
            "layers": list(args.vision_layers) if args.is_resnet else args.vision_layers,
            "width": args.vision_width,
            "patch_size": args.vision_patch_size,
            "head_width": HEAD_WIDTH,
        },
        "text_cfg": {
            "context_length": args.context_length,
            "vocab_size": args.vocab_size,
            "width": args.transformer_width,
            "heads": args.transformer_heads,
            "layers": args.transformer_layers,
        },
    }
    if args.init_logit_bias is not None:
        cfg["init_logit_bias"] = args.init_logit_bias
    return cfg


def export_open_clip(model: nn.Module, path: str | os.PathLike) -> OpenClipExport:
    """Write weights open_clip loads, plus open_clip_config.json beside them.

    `path` is a directory (weights go to open_clip_model.safetensors in it) or a file: `.safetensors` is
    written with safetensors, anything else (`.bin`, `.pt`, `.pth`) with torch.save.
    """
    from safetensors.torch import save_file

    from trainer.transforms import CLIP_MEAN, CLIP_STD

    model = unwrap_model(model)
    args = recorded_args(model)
    path = Path(path)
    weights = path / OPEN_CLIP_WEIGHTS if path.is_dir() or not path.suffix else path
    weights.parent.mkdir(parents=True, exist_ok=True)
    tensors = _cpu_state_dict(model)
    if weights.suffix == ".safetensors":
        _atomic_write(weights, lambda tmp: save_file(tensors, str(tmp)))
    else:
        _atomic_write(weights, lambda tmp: torch.save(tensors, tmp))
    config = weights.parent / OPEN_CLIP_CONFIG
    preprocess = {"size": args.image_resolution, "mean": list(CLIP_MEAN), "std": list(CLIP_STD),
                  "interpolation": "bicubic", "resize_mode": "shortest"}
    body = json.dumps({"model_cfg": open_clip_model_config(args), "preprocess_cfg": preprocess}, indent=2)
    _atomic_write(config, lambda tmp: tmp.write_text(body + "\n"))
    name = next((OPEN_CLIP_NAMES[n] for n, a in PRESETS.items() if a == args and n in OPEN_CLIP_NAMES), None)
    return OpenClipExport(weights=weights, config=config, model_name=name)
