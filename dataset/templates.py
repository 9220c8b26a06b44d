"""Caption templates: the default caption and the prompt lists kept in dataset.json for zero-shot ensembles.

A template holds exactly one `{}` where the class name goes. Zero-shot classification embeds every template
for a class and averages the normalised text features (CLIP's "prompt ensembling"), which is steadier than
any single prompt.
"""

from __future__ import annotations

from pathlib import Path

DEFAULT_TEMPLATE = "a photo of a {}."

# A short general-purpose ensemble in the spirit of CLIP's ImageNet prompts: photo quality, size, style.
DEFAULT_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a photo of the {}.",
    "a photo of one {}.",
    "a close-up photo of a {}.",
    "a cropped photo of a {}.",
    "a bright photo of a {}.",
    "a dark photo of a {}.",
    "a blurry photo of a {}.",
    "a low resolution photo of a {}.",
    "a good photo of a {}.",
    "a photo of a small {}.",
    "a photo of a large {}.",
    "a drawing of a {}.",
    "a painting of a {}.",
    "a rendering of a {}.",
    "a sculpture of a {}.",
    "a toy {}.",
    "itap of a {}.",
)


def check_template(template: str, where: str = "template") -> str:
    """Return `template` if it holds exactly one `{}` (and no other braces); else ValueError naming `where`."""
    if template.count("{}") != 1 or template.replace("{}", "").count("{") or template.replace("{}", "").count("}"):
        raise ValueError(
            f"{where} {template!r} must contain exactly one '{{}}' for the class name, e.g. 'a photo of a {{}}.'"
        )
    return template


def fill(template: str, name: str) -> str:
    """The caption for class `name`; plain replacement, so braces in class names are harmless."""
    return template.replace("{}", name, 1)


def read_templates_file(path: str | Path) -> list[str]:
    """Templates from a text file, one per line; blank lines and lines starting with '#' are ignored."""
    p = Path(path)
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ValueError(f"cannot read templates file {p}: {exc.strerror or exc}") from exc
    templates = []
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if line and not line.startswith("#"):
            templates.append(check_template(line, where=f"{p}:{number}: template"))
    if not templates:
        raise ValueError(f"templates file {p} holds no templates (one per line, each with one '{{}}')")
    return templates


def template_list(caption_template: str, extra: list[str] | tuple[str, ...] = DEFAULT_TEMPLATES) -> list[str]:
    """The caption template first, then `extra` without duplicates (order kept)."""
    return list(dict.fromkeys([caption_template, *extra]))
