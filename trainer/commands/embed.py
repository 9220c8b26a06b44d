"""`cliplab embed`: a checkpoint's embeddings of a few images and/or texts, and their similarity table.

    cliplab embed --checkpoint ViT-B-32.pt --image a.jpg --image b.jpg --text "a dog" --text "a cat"
    cliplab embed --checkpoint runs/demo/checkpoints/best --text "a dog" --json

With images and texts, prints cosine similarities and, per image, the probabilities the model assigns to each
text (softmax over the texts of logit_scale * cosine; for a SigLIP-trained model, the pairwise sigmoid with its
logit bias). With one kind only, prints each embedding's norm and first values (--json: the unit vectors).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from dataset.images import own_pixel_check
from trainer.commands.flags import DEVICE_CHOICES, device_flag, resolve_device_flag

if TYPE_CHECKING:
    import torch

# torch is imported inside the functions so that `cliplab embed --help` and usage errors are instant.
EXIT_USAGE = 2
VALUES_SHOWN = 4  # leading values of each embedding in the text output


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, metavar="PATH_OR_PRESET",
                        help="checkpoint file or directory (OpenAI, open_clip, cliplab), a run directory or its "
                             "checkpoints/latest or checkpoints/best, or a preset name")
    parser.add_argument("--image", action="append", default=[], metavar="FILE",
                        help="an image (repeat); give images, texts or both")
    parser.add_argument("--text", action="append", default=[], metavar="TEXT", help="a text (repeat)")
    parser.add_argument("--device", default="cpu", type=device_flag, help=f"{DEVICE_CHOICES} (default: cpu)")
    parser.add_argument("--json", action="store_true", help="print the embeddings and tables as JSON instead")


def similarity_tables(model, image_features: "torch.Tensor", text_features: "torch.Tensor") -> dict:
    """Cosine [I, T] and per-image probabilities [I, T] for image and text features (normalised here)."""
    import torch

    with torch.no_grad():
        image_features = torch.nn.functional.normalize(image_features, dim=-1)
        text_features = torch.nn.functional.normalize(text_features, dim=-1)
        cosine = image_features @ text_features.T
        logits = model.logit_scale.exp().float() * cosine
        bias = getattr(model, "logit_bias", None)
        if bias is not None:
            return {"cosine": cosine, "probs": torch.sigmoid(logits + bias.float()), "probs_kind": "sigmoid"}
        return {"cosine": cosine, "probs": logits.softmax(dim=-1), "probs_kind": "softmax"}


def format_embeddings(title: str, names: list[str], features: "torch.Tensor") -> str:
    """One line per item: its name, the norm of its features and the first values of its unit vector."""
    import torch

    first = max(len(n) for n in names)
    unit = torch.nn.functional.normalize(features, dim=-1)
    lines = [f"{title} ({features.shape[0]} x {features.shape[1]}; norm, then the first {VALUES_SHOWN} values "
             "of the unit vector)"]
    for name, norm, row in zip(names, features.norm(dim=-1).tolist(), unit[:, :VALUES_SHOWN].tolist()):
        values = ", ".join(f"{v:+.4f}" for v in row)
        lines.append(f"{name.ljust(first)}  norm {norm:9.4f}  [{values}, ...]")
    return "\n".join(lines)


def truncation_warnings(texts: list[str], context_length: int) -> list[str]:
    """A line for each text longer than the model's context (the tokenizer cuts it)."""
    from trainer.tokenizer import default_tokenizer

    warnings = []
    for text in texts:
        n_tokens = len(default_tokenizer().encode(text)) + 2  # with the start and end tokens
        if n_tokens > context_length:
            shown = text if len(text) <= 60 else text[:57] + "..."
            warnings.append(f"warning: --text {shown!r} is {n_tokens} tokens with start/end, cut to the model's "
                            f"context length of {context_length}")
    return warnings


def format_table(title: str, rows: list[str], columns: list[str], values: "torch.Tensor") -> str:
    """An aligned text table: one row per image, one column per text (headers cut to 24 characters)."""
    headers = [c if len(c) <= 24 else c[:23] + "…" for c in columns]
    first = max([len(r) for r in rows] + [5])
    widths = [max(len(h), 8) for h in headers]
    lines = [title, " " * first + "  " + "  ".join(h.rjust(w) for h, w in zip(headers, widths))]
    for name, row in zip(rows, values.tolist()):
        lines.append(name.ljust(first) + "  " + "  ".join(f"{v:.4f}".rjust(w) for v, w in zip(row, widths)))
    return "\n".join(lines)


def _fail(message: str) -> int:
    print(f"cliplab embed: {message}", file=sys.stderr)
    return EXIT_USAGE


def _usage_problem(args: argparse.Namespace) -> str | None:
    if not args.image and not args.text:
        return "give at least one --image or --text (or both, for the similarity table)"
    empty = [i + 1 for i, t in enumerate(args.text) if not t.strip()]
    if empty:
        return f"--text number {empty[0]} is empty; give the words to embed, e.g. --text \"a photo of a dog\""
    folders = [p for p in args.image if Path(p).is_dir()]
    if folders:
        return f"--image takes image files, not folders: {', '.join(folders)} (list its files, e.g. {folders[0]}/*.jpg)"
    missing = [p for p in args.image if not Path(p).is_file()]
    if missing:
        return f"image file not found: {', '.join(missing)}"
    return None


def read_images(paths: list[str], preprocess) -> "torch.Tensor | None":
    """[I, 3, H, W] model inputs of the image files (None for none); raises ValueError naming an unreadable one."""
    import torch
    from PIL import UnidentifiedImageError

    from trainer.data.samples import decode_image

    if not paths:
        return None
    pixels = []
    for path in paths:
        try:  # as training reads it: the same pixel limit, 16-bit images scaled to 8 bits
            image = decode_image(path, setting=None)
        except (UnidentifiedImageError, OSError, ValueError) as exc:  # ValueError: over the pixel limit
            raise ValueError(f"cannot read image {path}: {exc}") from exc
        pixels.append(preprocess(image))
    return torch.stack(pixels)


def encode(model, pixels: "torch.Tensor | None", texts: list[str], device: "torch.device") -> dict:
    """{"image": [I, D], "text": [T, D]}: unnormalised fp32 features of the kinds given (texts cut to fit)."""
    import torch

    from trainer.tokenizer import tokenize

    features = {}
    with torch.no_grad():
        if pixels is not None:
            features["image"] = model.encode_image(pixels.to(device)).float()
        if texts:
            tokens = tokenize(texts, context_length=model.context_length, truncate=True)
            features["text"] = model.encode_text(tokens.to(device), trim=True).float()
    return features


def _print_json(model, args: argparse.Namespace, features: dict, tables: dict | None) -> None:
    import torch

    def unit(kind: str) -> list:
        return torch.nn.functional.normalize(features[kind], dim=-1).tolist()

    out: dict = {}
    if "image" in features:
        out.update(images=args.image, image_embeddings=unit("image"))
    if "text" in features:
        out.update(texts=args.text, text_embeddings=unit("text"))
    if tables is not None:
        out.update(cosine=tables["cosine"].tolist(), probs=tables["probs"].tolist(), probs_kind=tables["probs_kind"],
                   logit_scale=float(model.logit_scale.detach().exp()))
    print(json.dumps(out))


def _print_text(model, args: argparse.Namespace, features: dict, tables: dict | None) -> None:
    if tables is None:
        if "image" in features:
            print(format_embeddings("image embeddings", args.image, features["image"]))
        else:
            texts = [t if len(t) <= 40 else t[:39] + "…" for t in args.text]
            print(format_embeddings("text embeddings", texts, features["text"]))
        return
    scale = float(model.logit_scale.detach().exp())
    probs_title = (f"probabilities (softmax over texts of {scale:.2f} * cosine)" if tables["probs_kind"] == "softmax"
                   else f"probabilities (sigmoid of {scale:.2f} * cosine + bias)")
    print(format_table("cosine similarity", args.image, args.text, tables["cosine"]))
    print()
    print(format_table(probs_title, args.image, args.text, tables["probs"]))


def run(args: argparse.Namespace) -> int:
    own_pixel_check()  # images are checked by name in dataset.images, not by Pillow's anonymous warning
    problem = _usage_problem(args)
    if problem:
        return _fail(problem)
    from trainer.checkpoint import CheckpointError, load

    try:
        device = resolve_device_flag(args.device)
        model, preprocess = load(args.checkpoint, device=device)
        pixels = read_images(args.image, preprocess)
    except (CheckpointError, FileNotFoundError, ValueError) as exc:
        return _fail(str(exc))
    for warning in truncation_warnings(args.text, model.context_length):
        print(f"cliplab embed: {warning}", file=sys.stderr)
    features = encode(model, pixels, args.text, device)
    tables = similarity_tables(model, features["image"], features["text"]) if len(features) == 2 else None
    (_print_json if args.json else _print_text)(model, args, features, tables)
    return 0
