"""Named CLIP architectures as data: `ModelArgs` and the `PRESETS` table.

Torch-free on purpose: the backend lists presets for the dashboard without importing torch.

The field names and meanings follow OpenAI's `CLIP.__init__` (embed_dim, image_resolution, vision_layers, ...),
so a preset reads like the arguments OpenAI's `build_model` infers from a state dict.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

# Attention head width used by OpenAI for every tower whose head count is derived (ViT and ResNet attnpool).
HEAD_WIDTH = 64


@dataclass(frozen=True)
class ModelArgs:
    """The hyper-parameters that fully describe a CLIP model's architecture (and so its state-dict shapes)."""

    embed_dim: int
    image_resolution: int
    vision_layers: int | tuple[int, int, int, int]  # int: ViT blocks; 4-tuple: ModifiedResNet stage depths
    vision_width: int
    vision_patch_size: int | None  # None for ModifiedResNet
    context_length: int = 77
    vocab_size: int = 49408
    transformer_width: int = 512
    transformer_heads: int = 8
    transformer_layers: int = 12
    init_logit_bias: float | None = None  # set only for SigLIP-style training; creates `logit_bias`
    # OpenAI's weights were trained with QuickGELU; many open_clip weights (e.g. LAION ViT-B-32) with nn.GELU.
    # A state dict cannot tell them apart, so loaders take it as an option.
    quick_gelu: bool = True

    def __post_init__(self) -> None:
        # JSON gives lists; keep the tuple so equality and hashing work.
        if isinstance(self.vision_layers, list):
            object.__setattr__(self, "vision_layers", tuple(self.vision_layers))
        problems = self._problems()
        if problems:
            raise ValueError("invalid ModelArgs: " + "; ".join(problems))

    def _problems(self) -> list[str]:
        out = []
        if self.is_resnet:
            if len(self.vision_layers) != 4 or not all(isinstance(n, int) and n >= 1 for n in self.vision_layers):
                out.append(f"vision_layers must be an int or 4 positive ints, got {self.vision_layers!r}")
            if self.vision_patch_size is not None:
                out.append("vision_patch_size must be None for a ResNet image tower (vision_layers is a tuple)")
            if self.image_resolution % 32:
                out.append(f"image_resolution must be a multiple of 32 for a ResNet, got {self.image_resolution}")
        else:
            if not self.vision_patch_size or self.image_resolution % self.vision_patch_size:
                out.append(
                    f"image_resolution ({self.image_resolution}) must be a multiple of vision_patch_size "
                    f"({self.vision_patch_size}) for a ViT"
                )
            if self.vision_width < HEAD_WIDTH:
                out.append(f"vision_width must be >= {HEAD_WIDTH} (heads are width // {HEAD_WIDTH})")
        if self.transformer_heads < 1 or self.transformer_width % self.transformer_heads:
            out.append(
                f"transformer_width ({self.transformer_width}) must be divisible by "
                f"transformer_heads ({self.transformer_heads})"
            )
        return out

    @property
    def is_resnet(self) -> bool:
        return isinstance(self.vision_layers, tuple)

    @property
    def vision_heads(self) -> int:
        # OpenAI: ResNet attnpool heads = width * 32 // 64, ViT heads = width // 64.
        return (self.vision_width * 32 if self.is_resnet else self.vision_width) // HEAD_WIDTH

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if self.is_resnet:
            d["vision_layers"] = list(self.vision_layers)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelArgs":
        """Build from `to_dict()` output; unknown or missing keys raise ValueError naming them."""
        names = {f.name for f in dataclasses.fields(cls)}
        required = {f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING}
        unknown = sorted(set(data) - names)
        missing = sorted(required - set(data))
        if unknown or missing:
            parts = [f"unknown keys {unknown}" if unknown else "", f"missing keys {missing}" if missing else ""]
            raise ValueError(f"ModelArgs: {', '.join(p for p in parts if p)} (expected keys: {sorted(names)})")
        return cls(**data)


def _openai_text(**kw: Any) -> dict[str, Any]:
    return dict(context_length=77, vocab_size=49408, transformer_width=512, transformer_heads=8,
                transformer_layers=12) | kw


# OpenAI's released models (the shapes their state dicts imply; see clip/model.py build_model).
PRESETS: dict[str, ModelArgs] = {
    "RN50": ModelArgs(1024, 224, (3, 4, 6, 3), 64, None, **_openai_text()),
    "RN101": ModelArgs(512, 224, (3, 4, 23, 3), 64, None, **_openai_text()),
    "ViT-B-32": ModelArgs(512, 224, 12, 768, 32, **_openai_text()),
    "ViT-B-16": ModelArgs(512, 224, 12, 768, 16, **_openai_text()),
    "ViT-L-14": ModelArgs(768, 224, 24, 1024, 14, **_openai_text(transformer_width=768, transformer_heads=12)),
    # CPU-sized models for the demo and tests; text heads keep OpenAI's width // 64 so that
    # architecture inference from a state dict recovers these exactly.
    "tiny-vit": ModelArgs(128, 64, 4, 128, 8, transformer_width=128, transformer_heads=2, transformer_layers=4),
    "tiny-rn": ModelArgs(128, 64, (1, 1, 1, 1), 16, None, transformer_width=128, transformer_heads=2,
                         transformer_layers=4),
}

_DESCRIPTIONS: dict[str, str] = {
    "RN50": "OpenAI RN50: ModifiedResNet-50 image tower, 224 px",
    "RN101": "OpenAI RN101: ModifiedResNet-101 image tower, 224 px",
    "ViT-B-32": "OpenAI ViT-B/32: 12-layer ViT (width 768, patch 32), 224 px",
    "ViT-B-16": "OpenAI ViT-B/16: 12-layer ViT (width 768, patch 16), 224 px",
    "ViT-L-14": "OpenAI ViT-L/14: 24-layer ViT (width 1024, patch 14), 224 px",
    "tiny-vit": "tiny CPU ViT: 4 layers, width 128, patch 8, 64 px (demo and tests)",
    "tiny-rn": "tiny CPU ModifiedResNet: one block per stage, width 16, 64 px (demo and tests)",
}

# The open_clip model config that builds the same network (OpenAI's models use QuickGELU).
OPEN_CLIP_NAMES: dict[str, str] = {
    "RN50": "RN50-quickgelu",
    "RN101": "RN101-quickgelu",
    "ViT-B-32": "ViT-B-32-quickgelu",
    "ViT-B-16": "ViT-B-16-quickgelu",
    "ViT-L-14": "ViT-L-14-quickgelu",
}


def _canonical(name: str) -> str:
    # `ViT-B/32`, `vit-b-32`, `ViT-B-32-quickgelu`, `openai/ViT-B-32` all name the same architecture.
    key = name.strip().replace("/", "-").lower()
    for prefix in ("openai-",):
        key = key.removeprefix(prefix)
    return key.removesuffix("-quickgelu")


_BY_CANONICAL = {_canonical(n): n for n in PRESETS}


def resolve_preset_name(name: str) -> str | None:
    """The PRESETS key that `name` (or an open_clip/OpenAI alias of it) refers to, or None."""
    return _BY_CANONICAL.get(_canonical(name))


def get_preset(name: str) -> ModelArgs:
    """ModelArgs for a preset name or alias; unknown names raise KeyError listing the available ones."""
    key = resolve_preset_name(name)
    if key is None:
        raise KeyError(f"unknown model preset {name!r}; available: {', '.join(available_models())}")
    return PRESETS[key]


def same_architecture(a: ModelArgs, b: ModelArgs) -> bool:
    """Whether two ModelArgs build the same shapes (the activation and a SigLIP bias aside)."""
    plain = lambda args: dataclasses.replace(args, init_logit_bias=None, quick_gelu=True)  # noqa: E731
    return plain(a) == plain(b)


def preset_of(args: ModelArgs) -> str | None:
    """The preset with `args`' architecture, if one has it."""
    return next((name for name, preset in PRESETS.items() if same_architecture(preset, args)), None)


def available_models() -> list[str]:
    """Names of the built-in architectures (as `clip.available_models()`)."""
    return list(PRESETS)


def count_parameters(args: ModelArgs) -> int:
    """Number of trainable parameters of `CLIP(args)`, computed from the shapes alone (no torch)."""
    return _image_params(args) + _text_params(args) + 1 + (args.init_logit_bias is not None)


def _block_params(width: int) -> int:
    # ln_1 + attn (in_proj 3w*w + 3w, out_proj w*w + w) + ln_2 + mlp (w*4w + 4w, 4w*w + w)
    w = width
    return 2 * w + (3 * w * w + 3 * w) + (w * w + w) + 2 * w + (8 * w * w + 5 * w)


def _image_params(a: ModelArgs) -> int:
    if not a.is_resnet:
        w, grid = a.vision_width, a.image_resolution // a.vision_patch_size
        return (3 * w * a.vision_patch_size**2 + w + (grid * grid + 1) * w + 2 * w
                + a.vision_layers * _block_params(w) + 2 * w + w * a.embed_dim)
    w = a.vision_width
    n = 3 * (w // 2) * 9 + 2 * (w // 2) + (w // 2) * (w // 2) * 9 + 2 * (w // 2) + (w // 2) * w * 9 + 2 * w
    inplanes = w
    for stage, depth in enumerate(a.vision_layers):
        planes = w * 2**stage
        for i in range(depth):
            n += inplanes * planes + 2 * planes + planes * planes * 9 + 2 * planes + planes * planes * 4 + 8 * planes
            if i == 0 and (stage > 0 or inplanes != planes * 4):
                n += inplanes * planes * 4 + 8 * planes
            inplanes = planes * 4
    d, spatial = w * 32, a.image_resolution // 32
    return n + (spatial * spatial + 1) * d + 3 * (d * d + d) + d * a.embed_dim + a.embed_dim


def _text_params(a: ModelArgs) -> int:
    w = a.transformer_width
    return (a.vocab_size * w + a.context_length * w + a.transformer_layers * _block_params(w)
            + 2 * w + w * a.embed_dim)


def preset_descriptions() -> dict[str, str]:
    """Preset name -> one line for the UI, with the parameter count."""
    return {n: f"{_DESCRIPTIONS[n]}; {count_parameters(a) / 1e6:.1f}M params" for n, a in PRESETS.items()}
