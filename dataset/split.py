"""Train/val splits of checked pairs, by whole images (all captions of an image on one side): per class for
labelled data, at random for captions."""

from __future__ import annotations

import random
from pathlib import Path

from dataset.items import Item

MIN_VAL_PAIRS = 2  # in-batch metrics compare each val pair with the others


def _group_by_label(items: list[Item]) -> dict[int, list[Item]]:
    groups: dict[int, list[Item]] = {}
    for item in items:
        groups.setdefault(item.label if item.label is not None else -1, []).append(item)
    return dict(sorted(groups.items()))


def interleave_by_class(items: list[Item]) -> list[Item]:
    """Round-robin over classes (in label order), so any window of consecutive rows repeats no class
    until every class has appeared: evaluation batches then mix as many classes as possible."""
    queues = list(_group_by_label(items).values())
    longest = max((len(q) for q in queues), default=0)
    return [q[i] for i in range(longest) for q in queues if i < len(q)]


def val_share(count: int, val_per_class: int) -> int:
    """Val images of a class of `count`: `val_per_class`, but at most half, so train keeps the larger half."""
    return min(val_per_class, count // 2)


def image_labels(items: list[Item]) -> dict[Path, int | None]:
    """Each image's class: its first pair's label (an image listed under two classes still goes to one side)."""
    return {path: pairs[0].label for path, pairs in _group_by_image(items).items()}


def split_by_class(items: list[Item], val_per_class: int, seed: int) -> tuple[list[Item], list[Item]]:
    """`val_share` random images of each class go to val with all their pairs (class-interleaved); the rest,
    shuffled, is train. An image with several captions is never on both sides."""
    rng = random.Random(seed)
    by_class: dict[int, list[list[Item]]] = {}
    for pairs in _group_by_image(items).values():  # an image's class is its first pair's (image_labels)
        by_class.setdefault(-1 if pairs[0].label is None else pairs[0].label, []).append(pairs)
    train, val = [], []
    for _, images in sorted(by_class.items()):
        rng.shuffle(images)
        k = val_share(len(images), val_per_class)
        val += [pair for pairs in images[:k] for pair in pairs]
        train += [pair for pairs in images[k:] for pair in pairs]
    rng.shuffle(train)
    return train, interleave_by_class(val)


def _group_by_image(items: list[Item]) -> dict[Path, list[Item]]:
    by_image: dict[Path, list[Item]] = {}
    for item in items:
        by_image.setdefault(item.path, []).append(item)
    return by_image


def split_random(items: list[Item], val_size: int, seed: int) -> tuple[list[Item], list[Item]]:
    """Random whole images go to val until it holds at least `val_size` pairs, the rest is train; both
    shuffled with `seed`. All captions of one image stay on one side, so val never shows a train image."""
    images = list(_group_by_image(items).values())
    rng = random.Random(seed)
    rng.shuffle(images)
    train, val = [], []
    for pairs in images:
        (val if len(val) < val_size else train).extend(pairs)
    rng.shuffle(train)
    rng.shuffle(val)
    return train, val


def default_val_size(n: int) -> int:
    """5% of an unlabelled dataset of `n` pairs, at most 1000 and at least 2; none under 4 pairs, where 2
    held out would leave too little to train on."""
    return 0 if n < 2 * MIN_VAL_PAIRS else max(MIN_VAL_PAIRS, min(1000, n // 20))
