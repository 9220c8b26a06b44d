"""`cliplab embed`: the image x text similarity table for a checkpoint, a few images and a few texts.

    cliplab embed --checkpoint ViT-B-32.pt --image a.jpg --image b.jpg --text "a dog" --text "a cat"

Prints cosine similarities and, per image, the probabilities the model assigns to each text (softmax over the
texts of logit_scale * cosine; for a SigLIP-trained model, the pairwise sigmoid with its logit bias).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

# torch is imported inside the functions so that `cliplab embed --help` and usage errors are instant.
EXIT_USAGE = 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, metavar="PATH_OR_PRESET",
                        help="checkpoint file or directory (OpenAI, open_clip, cliplab), or a preset name")
    parser.add_argument("--image", action="append", required=True, metavar="FILE", help="an image (repeat)")
    parser.add_argument("--text", action="append", required=True, metavar="TEXT", help="a text (repeat)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ... (default: cpu)")
    parser.add_argument("--json", action="store_true", help="print the tables as JSON instead")


def similarity_tables(model, images: "torch.Tensor", tokens: "torch.Tensor") -> dict:
    """Cosine [I, T] and per-image probabilities [I, T] for preprocessed images and tokenized texts."""
    import torch

    with torch.no_grad():
        image_features = torch.nn.functional.normalize(model.encode_image(images).float(), dim=-1)
        text_features = torch.nn.functional.normalize(model.encode_text(tokens, trim=True).float(), dim=-1)
        cosine = image_features @ text_features.T
        logits = model.logit_scale.exp().float() * cosine
        bias = getattr(model, "logit_bias", None)
        if bias is not None:
            return {"cosine": cosine, "probs": torch.sigmoid(logits + bias.float()), "probs_kind": "sigmoid"}
        return {"cosine": cosine, "probs": logits.softmax(dim=-1), "probs_kind": "softmax"}


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


def run(args: argparse.Namespace) -> int:
    missing = [p for p in args.image if not Path(p).is_file()]
    if missing:
        return _fail(f"image file not found: {', '.join(missing)}")
    import torch
    from PIL import Image, UnidentifiedImageError

    from trainer.checkpoint import CheckpointError, load
    from trainer.tokenizer import tokenize

    try:
        model, preprocess = load(args.checkpoint, device=args.device)
    except (CheckpointError, FileNotFoundError) as exc:
        return _fail(str(exc))
    pixels = []
    for path in args.image:
        try:
            with Image.open(path) as im:
                pixels.append(preprocess(im.convert("RGB")))
        except (UnidentifiedImageError, OSError) as exc:
            return _fail(f"cannot read image {path}: {exc}")
    try:
        tokens = tokenize(args.text, context_length=model.context_length, truncate=True)
    except ValueError as exc:
        return _fail(str(exc))
    tables = similarity_tables(model, torch.stack(pixels).to(args.device), tokens.to(args.device))
    if args.json:
        print(json.dumps({"images": args.image, "texts": args.text, "cosine": tables["cosine"].tolist(),
                          "probs": tables["probs"].tolist(), "probs_kind": tables["probs_kind"],
                          "logit_scale": float(model.logit_scale.detach().exp())}))
        return 0
    scale = float(model.logit_scale.detach().exp())
    probs_title = (f"probabilities (softmax over texts of {scale:.2f} * cosine)" if tables["probs_kind"] == "softmax"
                   else f"probabilities (sigmoid of {scale:.2f} * cosine + bias)")
    print(format_table("cosine similarity", args.image, args.text, tables["cosine"]))
    print()
    print(format_table(probs_title, args.image, args.text, tables["probs"]))
    return 0
