"""Train/val splits of checked pairs: per class for labelled data, by whole images for captions."""

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


def split_by_class(items: list[Item], val_per_class: int, seed: int) -> tuple[list[Item], list[Item]]:
    """`val_share` random items of each class go to val (class-interleaved); the rest, shuffled, is train."""
    rng = random.Random(seed)
    train, val = [], []
    for members in _group_by_label(items).values():
        members = members[:]
        rng.shuffle(members)
        k = val_share(len(members), val_per_class)
        val += members[:k]
        train += members[k:]
    rng.shuffle(train)
    return train, interleave_by_class(val)


def split_random(items: list[Item], val_size: int, seed: int) -> tuple[list[Item], list[Item]]:
    """Random whole images go to val until it holds at least `val_size` pairs, the rest is train; both
    shuffled with `seed`. All captions of one image stay on one side, so val never shows a train image."""
    by_image: dict[Path, list[Item]] = {}
    for item in items:
        by_image.setdefault(item.path, []).append(item)
    images = list(by_image.values())
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
