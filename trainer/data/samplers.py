"""Batch samplers for map-style datasets: seeded, rank-sharded, and restartable mid-epoch.

Every rank computes the same *global* batches of `batch_size * world_size` indices from (seed, epoch) and
takes its own contiguous slice, so ranks cover an epoch disjointly and always agree on the number of
batches (a rank that ran out early would hang the others in the next collective).

A sampler yields lists of (index, augmentation seed) keys; the seed makes random crops a function of
(seed, epoch, index) only. `set_position(epoch, start_batch)` is how the StepLoader resumes mid-epoch.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from typing import Iterator, Sequence

import torch

from trainer.data.samples import sample_seed


def _check_rank(rank: int, world_size: int) -> None:
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, world_size), got rank={rank}, world_size={world_size}")


class _PositionedSampler:
    """Shared epoch/offset bookkeeping and the rank slicing of global batches."""

    def __init__(self, batch_size: int, rank: int, world_size: int, seed: int, drop_last: bool):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        _check_rank(rank, world_size)
        self.batch_size, self.rank, self.world_size = batch_size, rank, world_size
        self.seed, self.drop_last = seed, drop_last
        self.epoch, self.start_batch = 0, 0

    @property
    def global_batch_size(self) -> int:
        return self.batch_size * self.world_size

    def set_epoch(self, epoch: int) -> None:
        """DistributedSampler semantics: a new epoch reshuffles; iteration starts at its first batch."""
        self.set_position(epoch, 0)

    def set_position(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = int(epoch), int(start_batch)

    def global_batches(self, epoch: int) -> list[list[int]]:
        raise NotImplementedError

    def batches_per_epoch(self, epoch: int) -> int:
        """Batches this rank yields in `epoch` (from batch 0)."""
        return sum(1 for b in self.global_batches(epoch) if self._rank_slice(b))

    def __len__(self) -> int:
        return self.batches_per_epoch(self.epoch)

    def _rank_slice(self, global_batch: Sequence[int]) -> list[int]:
        if len(global_batch) == self.global_batch_size:
            lo = self.rank * self.batch_size
            return list(global_batch[lo:lo + self.batch_size])
        # A short final batch (drop_last=False only): ranks take interleaved shares, some possibly empty.
        return list(global_batch[self.rank::self.world_size])

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        epoch = self.epoch
        mine = [s for s in (self._rank_slice(b) for b in self.global_batches(epoch)) if s]
        for batch in mine[self.start_batch:]:
            yield [(i, sample_seed(self.seed, epoch, i)) for i in batch]


class ShuffledBatchSampler(_PositionedSampler):
    """Random batches from a seeded permutation per epoch (sequential order when shuffle=False)."""

    def __init__(self, num_samples: int, batch_size: int, *, rank: int = 0, world_size: int = 1, seed: int = 0,
                 shuffle: bool = True, drop_last: bool = True):
        super().__init__(batch_size, rank, world_size, seed, drop_last)
        self.num_samples, self.shuffle = int(num_samples), shuffle

    def global_batches(self, epoch: int) -> list[list[int]]:
        if self.shuffle:
            g = torch.Generator().manual_seed(sample_seed(self.seed, epoch, -1))
            order = torch.randperm(self.num_samples, generator=g).tolist()
        else:
            order = list(range(self.num_samples))
        size = self.global_batch_size
        full = len(order) // size
        batches = [order[b * size:(b + 1) * size] for b in range(full)]
        if not self.drop_last and len(order) > full * size:
            batches.append(order[full * size:])
        return batches

    def batches_per_epoch(self, epoch: int) -> int:  # O(1): no permutation needed to count
        full, rest = divmod(self.num_samples, self.global_batch_size)
        if self.drop_last or rest == 0:
            return full
        return full + (1 if rest > self.rank else 0)


class DistinctCaptionBatchSampler(_PositionedSampler):
    """Batches whose captions are all different, so class-style captions give no false negatives.

    Greedy over a seeded permutation: an index whose caption is already in the batch being built is
    deferred (per caption, oldest first) and placed in a later batch. Global batches are distinct across
    all ranks, matching a loss that gathers features from every rank.

    Every index appears exactly once per epoch except a final remainder that cannot fill one more batch
    of distinct captions: fewer than `batch_size * world_size` items, plus, when one caption covers more
    than one item per batch on average (say half the data is "a photo of a dog."), its copies beyond one
    per batch. With drop_last=False the remainder is yielded in extra batches that may repeat captions.
    """

    def __init__(self, caption_ids: Sequence[int] | torch.Tensor, batch_size: int, *, rank: int = 0,
                 world_size: int = 1, seed: int = 0, drop_last: bool = True):
        super().__init__(batch_size, rank, world_size, seed, drop_last)
        ids = caption_ids.tolist() if isinstance(caption_ids, torch.Tensor) else list(caption_ids)
        self.caption_ids = ids
        distinct = len(set(ids))
        if distinct < self.global_batch_size:
            raise ValueError(
                f"distinct-caption batches of {self.global_batch_size} (batch_size {batch_size} x world_size "
                f"{world_size}) need at least that many different captions; the dataset has {distinct}. "
                "Lower the batch size or set data.distinct_captions: false"
            )
        self._plan_cache: tuple[int, list[list[int]], list[int]] | None = None

    def plan(self, epoch: int) -> tuple[list[list[int]], list[int]]:
        """(full global batches, remainder) for an epoch; cached because __len__ and __iter__ both need it."""
        if self._plan_cache is None or self._plan_cache[0] != epoch:
            self._plan_cache = (epoch, *self._build(epoch))
        return self._plan_cache[1], self._plan_cache[2]

    def _build(self, epoch: int) -> tuple[list[list[int]], list[int]]:
        g = torch.Generator().manual_seed(sample_seed(self.seed, epoch, -2))
        stream = iter(torch.randperm(len(self.caption_ids), generator=g).tolist())
        size, cid = self.global_batch_size, self.caption_ids
        deferred: OrderedDict[int, deque[int]] = OrderedDict()  # caption id -> its waiting indices
        batches: list[list[int]] = []
        while True:
            batch, seen = self._take_deferred(deferred, size)
            for i in stream:
                if cid[i] in seen:
                    deferred.setdefault(cid[i], deque()).append(i)
                    continue
                batch.append(i)
                seen.add(cid[i])
                if len(batch) == size:
                    break
            if len(batch) < size:  # the stream is exhausted: what is left cannot make a distinct batch
                remainder = batch + [i for waiting in deferred.values() for i in waiting]
                return batches, remainder
            batches.append(batch)

    @staticmethod
    def _take_deferred(deferred: OrderedDict[int, deque[int]], size: int) -> tuple[list[int], set[int]]:
        """Start a batch with one waiting index per deferred caption, oldest captions first."""
        batch: list[int] = []
        seen: set[int] = set()
        for caption in list(deferred):
            if len(batch) == size:
                break
            waiting = deferred[caption]
            batch.append(waiting.popleft())
            seen.add(caption)
            if waiting:
                deferred.move_to_end(caption)  # let other waiting captions go first next time
            else:
                del deferred[caption]
        return batch, seen

    def global_batches(self, epoch: int) -> list[list[int]]:
        batches, remainder = self.plan(epoch)
        if self.drop_last or not remainder:
            return batches
        size = self.global_batch_size
        return batches + [remainder[k:k + size] for k in range(0, len(remainder), size)]
