"""Evaluation on the val set: in-batch accuracy/similarity, val loss, retrieval R@K, zero-shot, matrix snapshot.

    result = evaluate(model, val_dataset, cfg.eval, device, autocast=precision.autocast)
    result            -> {"val/loss", "val/acc", "val/similarity", "val/i2t_R@1", ..., "val/t2i_R@10",
                          "val/zeroshot_top1", "val/zeroshot_top5"}   (zero-shot only with labels + classes)
    result.batch_size -> the batch size the in-batch metrics and the val loss were computed at
    snapshot = matrix_snapshot(model, val_dataset, cfg.eval.matrix_size, device)   # the `matrix` event body

The model runs once over the val set (`encode_dataset`); every metric is then a pure function of the
normalised features (`in_batch_metrics`, `val_loss`, `compute_retrieval`, `zeroshot_accuracy`), so each can
be tested against a brute-force reference. Definitions:

- in-batch accuracy (the seed's): the val set, in dataset order (whatever the workers or ranks), is cut
  into consecutive batches of eval.batch_size; an image scores a hit when the caption it is most similar
  to, among its batch's captions, is its own or a positive of it: an identical caption (argmax would
  otherwise pick one of the identical columns arbitrarily) or another caption of the same image (a set with
  several captions per image); exact ties between different captions go to the first column (argmax). A
  trailing partial batch is left out (it would be easier), unless the whole set is smaller than one batch;
  both metrics and the val loss depend on the batch size, which is returned.
- similarity (the seed's): the mean softmax probability (over the batch's captions, logits =
  logit_scale * cosine) of each image's own caption; with duplicates the probability is shared among them.
- val loss: the training loss (multi-positive over identical captions and over the captions of one image)
  averaged over the same batches.
- retrieval R@K: over the whole val set, image->text and text->image; every val pair is a query (an image
  listed with several captions is queried once per row). Pairs that share a caption (identical text) or
  an image (the batches' `image_id`: CsvDataset, the image file's path; shards, a hash of the image bytes)
  are each other's correct items; a hit is any correct item in the top K. Computed in row chunks that keep
  only each query's rank (never an N x N matrix). A query's rank is the number of wrong items scoring at least as
  high as its best correct item: ties count against the model, so a collapsed model (all features equal)
  scores 0, not 1. Retrieval and zero-shot do not depend on eval.batch_size or the number of workers.
- zero-shot: each class's text embedding is the renormalised mean of its normalised prompt embeddings
  (dataset templates, CLIP's prompt ensembling); images are classified by cosine; top-k with the same
  tie rule; classes without val images still compete. Images with label -1 are left out.
- NaN features (a diverged model): NaN scores rank below everything, so they never make a hit; R@K,
  zero-shot and accuracy fall to 0 (not 1), while the val loss and similarity are NaN.
"""

from __future__ import annotations

import base64
import copy
import io
import itertools
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Callable, ContextManager, Iterable, Iterator, Sequence

import torch
import torch.nn.functional as F
from PIL import Image

from contract.config import EvalConfig
from contract.table import DataError
from dataset.templates import DEFAULT_TEMPLATE, fill
from trainer.distributed import all_gather_no_grad
from trainer.loss import ClipLoss, SigLipLoss, contrastive_logits, pair_ids

# Zero-shot prompts for a val set whose dataset.json lists none: the caption template prepare uses by default.
DEFAULT_TEMPLATES = (DEFAULT_TEMPLATE,)
THUMBNAIL_PX = 64
Autocast = Callable[[], ContextManager]
# loss(image_features, text_features, caption_ids, image_ids): the training loss on one batch.
PairLoss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None], torch.Tensor]


class EvalResult(dict):
    """The val/* metrics (a plain dict of floats) plus the batch size and sample count they were computed on,
    and the (path, reason) of val items this rank could not read."""

    def __init__(self, values: dict[str, float], batch_size: int, num_samples: int,
                 skipped: list[tuple[str, str]] | None = None):
        super().__init__(values)
        self.batch_size, self.num_samples = batch_size, num_samples
        self.skipped = list(skipped or [])


# ------------------------------------------------------------------------------------------ pure metrics
def batch_accuracy_similarity(image_features: torch.Tensor, text_features: torch.Tensor,
                              logit_scale: torch.Tensor | float, caption_ids: torch.Tensor | None = None,
                              image_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The seed's in-batch (accuracy, similarity) of one batch, as 0-d tensors on the features' device.

    A hit is a best caption that is the image's own, identical to it (equal caption_ids) or another caption
    of the same image (equal image_ids). No host sync: the training loop can accumulate these on the device
    and read them back every N steps.
    """
    logits = contrastive_logits(image_features, text_features, logit_scale)[0]
    # argmax treats NaN as the largest value: a NaN image would "hit" whatever column its NaN lands on.
    finite = without_nan(logits)
    best_score, best = finite.max(dim=1)
    ids = pair_ids(caption_ids, image_ids, logits.shape[0], logits.device)
    hit = (ids[best] == ids).any(dim=1)
    hit &= best_score > float("-inf")  # a row with no finite score (NaN image features) is a miss
    return hit.float().mean(), logits.softmax(dim=1).diagonal().mean()


def without_nan(scores: torch.Tensor) -> torch.Tensor:
    """NaN scores (from NaN/inf features) as -inf: they never rank above anything, so they can only cost hits."""
    return scores.masked_fill(scores.isnan(), float("-inf"))


def batch_slices(n: int, batch_size: int) -> list[slice]:
    """Consecutive full batches of `batch_size` (the remainder is dropped), or one batch of n when n is smaller."""
    if n < 2:
        raise ValueError(f"in-batch metrics need at least 2 val samples, got {n}")
    if n < batch_size:
        return [slice(0, n)]
    return [slice(s, s + batch_size) for s in range(0, n - batch_size + 1, batch_size)]


def in_batch_metrics(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor | float,
                     batch_size: int, caption_ids: torch.Tensor | None = None,
                     image_ids: torch.Tensor | None = None) -> dict[str, float]:
    """{"acc", "similarity", "batch_size"} averaged over the consecutive batches of `batch_slices`."""
    slices = batch_slices(image_features.shape[0], batch_size)
    accs, sims = [], []
    for s in slices:
        acc, sim = batch_accuracy_similarity(image_features[s], text_features[s], logit_scale,
                                             _rows(caption_ids, s), _rows(image_ids, s))
        accs.append(acc)
        sims.append(sim)
    return {"acc": torch.stack(accs).mean().item(), "similarity": torch.stack(sims).mean().item(),
            "batch_size": slices[0].stop - slices[0].start}


def _rows(ids: torch.Tensor | None, s: slice) -> torch.Tensor | None:
    return None if ids is None else ids[s]


def val_loss(image_features: torch.Tensor, text_features: torch.Tensor, batch_size: int, loss_fn: PairLoss,
             caption_ids: torch.Tensor | None = None, image_ids: torch.Tensor | None = None) -> float:
    """Mean of loss_fn(images, texts, caption_ids, image_ids) over the same batches as the in-batch metrics."""
    losses = [loss_fn(image_features[s], text_features[s], _rows(caption_ids, s), _rows(image_ids, s))
              for s in batch_slices(image_features.shape[0], batch_size)]
    return torch.stack(losses).mean().item()


def retrieval_ranks(queries: torch.Tensor, gallery: torch.Tensor, query_ids: torch.Tensor,
                    gallery_ids: torch.Tensor, chunk_size: int = 1024) -> torch.Tensor:
    """For each query, the number of wrong gallery items scoring >= its best correct item ([Nq] long).

    Correct items are those with the query's id; ids may be [N, K] (K kinds of id, e.g. caption and image):
    an item is correct when any kind matches. Every query needs at least one correct item. NaN scores count
    as -inf (a query with NaN features misses). Memory: chunk_size x Ng.
    """
    gallery_ids = _id_columns(gallery_ids).to(gallery.device)
    query_ids = _id_columns(query_ids)
    ranks = torch.empty(queries.shape[0], dtype=torch.long, device=queries.device)
    for start in range(0, queries.shape[0], chunk_size):
        end = min(start + chunk_size, queries.shape[0])
        scores = without_nan(contrastive_logits(queries[start:end], gallery, 1.0)[0])
        correct = (query_ids[start:end].to(gallery.device)[:, None, :] == gallery_ids[None, :, :]).any(dim=2)
        if not bool(correct.any(dim=1).all()):
            raise ValueError("retrieval_ranks: a query has no correct item in the gallery (ids do not match)")
        best = scores.masked_fill(~correct, float("-inf")).amax(dim=1, keepdim=True)
        ranks[start:end] = ((scores >= best) & ~correct).sum(dim=1)
    return ranks


def _id_columns(ids: torch.Tensor) -> torch.Tensor:
    return ids[:, None] if ids.dim() == 1 else ids


def recall_at(ranks: torch.Tensor, ks: Sequence[int]) -> dict[int, float]:
    """Fraction of queries whose rank is below k (their best correct item is in the top k)."""
    return {k: (ranks < k).sum().item() / ranks.numel() for k in ks}


def compute_retrieval(image_features: torch.Tensor, text_features: torch.Tensor,
                      caption_ids: torch.Tensor | None = None, ks: Sequence[int] = (1, 5, 10),
                      chunk_size: int = 1024, image_ids: torch.Tensor | None = None) -> dict[str, float]:
    """{"i2t_R@k", "t2i_R@k"} over the whole set; pair i is (image i, caption i), and every pair is a query.

    Pairs i and j match when they share a caption id (identical captions) or an image id (one image listed
    with several captions): an image retrieving any caption of a matching pair is correct, and so is a
    caption retrieving any matching image. Without ids, only pair i itself matches."""
    pairs = torch.arange(image_features.shape[0], device=image_features.device)
    caption_ids = pairs if caption_ids is None else caption_ids.to(pairs.device)
    image_ids = pairs if image_ids is None else image_ids.to(pairs.device)
    ids = torch.stack([caption_ids, image_ids], dim=1)
    i2t = recall_at(retrieval_ranks(image_features, text_features, ids, ids, chunk_size), ks)
    t2i = recall_at(retrieval_ranks(text_features, image_features, ids, ids, chunk_size), ks)
    return {**{f"i2t_R@{k}": v for k, v in i2t.items()}, **{f"t2i_R@{k}": v for k, v in t2i.items()}}


def zeroshot_accuracy(image_features: torch.Tensor, class_embeddings: torch.Tensor, labels: torch.Tensor,
                      ks: Sequence[int] = (1, 5), chunk_size: int = 1024) -> dict[str, float]:
    """{"zeroshot_top1", "zeroshot_top5"}: images with label >= 0 classified by cosine to [C, D] class embeddings."""
    labels = labels.to(image_features.device)
    keep = labels >= 0
    if not bool(keep.any()):
        raise ValueError("zeroshot_accuracy: no image has a label (all are -1)")
    if int(labels.max()) >= class_embeddings.shape[0]:
        raise ValueError(f"zeroshot_accuracy: label {int(labels.max())} is outside the "
                         f"{class_embeddings.shape[0]} classes")
    images, labels = image_features[keep], labels[keep]
    classes = torch.arange(class_embeddings.shape[0], device=labels.device)
    ranks = retrieval_ranks(images, class_embeddings, labels, classes, chunk_size)
    return {f"zeroshot_top{k}": v for k, v in recall_at(ranks, ks).items()}


def cosine_matrix(image_features: torch.Tensor, text_features: torch.Tensor, decimals: int = 4) -> list[list[float]]:
    """[K][K] cosine similarities (rows images, columns captions) rounded for a compact JSON event."""
    cos = contrastive_logits(image_features, text_features, 1.0)[0]
    return [[round(v, decimals) for v in row] for row in cos.tolist()]


def thumbnail_data_uri(image: Image.Image, size: int = THUMBNAIL_PX, quality: int = 85) -> str:
    """A centre-cropped square `size` px JPEG of `image` as a data:image/jpeg;base64 URI."""
    w, h = image.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    thumb = image.convert("RGB").crop((left, top, left + side, top + side)).resize((size, size), Image.BICUBIC)
    buf = io.BytesIO()
    thumb.save(buf, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


# ------------------------------------------------------------------------------------------ running the model
@dataclass
class EncodedSet:
    """Normalised fp32 features of (part of) a val set, in dataset order, with their metadata."""

    image: torch.Tensor  # [N, D]
    text: torch.Tensor  # [N, D]
    caption_ids: torch.Tensor  # [N] long
    labels: torch.Tensor  # [N] long, -1 unknown
    indices: torch.Tensor  # [N] long, the dataset index of each row
    skipped: list[tuple[str, str]] = field(default_factory=list)
    image_ids: torch.Tensor | None = None  # [N] long, equal = the same image; None: every row its own

    def __len__(self) -> int:
        return self.image.shape[0]

    def sorted_by_index(self) -> EncodedSet:
        """Rows in dataset order (DataLoader workers over shards hand batches back interleaved)."""
        order = self.indices.argsort()
        return EncodedSet(self.image[order], self.text[order], self.caption_ids[order], self.labels[order],
                          self.indices[order], self.skipped, _rows(self.image_ids, order))


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    from trainer.checkpoint import unwrap_model

    return unwrap_model(model)


def _autocast_ctx(autocast: Autocast | ContextManager | None) -> ContextManager:
    if autocast is None:
        return nullcontext()
    return autocast() if callable(autocast) and not hasattr(autocast, "__enter__") else autocast


@torch.no_grad()
def encode_batches(model: torch.nn.Module, batches: Iterable[dict[str, Any]], device: torch.device,
                   autocast: Autocast | None = None, on_batch: Callable[[], None] | None = None) -> EncodedSet:
    """Run both towers over loader batches (the data contract's dicts) and L2-normalise in fp32.

    on_batch: called after each batch (the trainer sends heartbeats from it during a long eval).
    image_ids: the batches' `image_id`s, None when a batch has none (or when there is no batch)."""
    model = _unwrap(model)
    images, texts, ids, labels, indices, skipped = [], [], [], [], [], []
    image_ids: list[torch.Tensor] | None = []
    for batch in batches:
        skipped += batch.get("skipped", [])
        if batch["index"].shape[0] == 0:
            continue
        pixels = batch["image"].to(device, non_blocking=True)
        if pixels.dtype == torch.uint8:
            from trainer.transforms import normalize_on_device

            pixels = normalize_on_device(pixels)
        with _autocast_ctx(autocast):
            image_features = model.encode_image(pixels)
            text_features = model.encode_text(batch["text"].to(device, non_blocking=True), trim=True)
        images.append(F.normalize(image_features.float(), dim=-1))
        texts.append(F.normalize(text_features.float(), dim=-1))
        if on_batch is not None:
            on_batch()
        ids.append(batch["caption_id"])
        if "image_id" not in batch:
            image_ids = None
        elif image_ids is not None:
            image_ids.append(batch["image_id"])
        labels.append(batch["label"])
        indices.append(batch["index"])
    if not images:  # this rank's share may be empty; the caller decides whether the whole set is
        dim = model.text_projection.shape[1]
        empty = torch.empty(0, dim, device=device)
        none = torch.empty(0, dtype=torch.long, device=device)
        return EncodedSet(empty, empty.clone(), none, none.clone(), none.clone(), skipped)
    image_id_rows = torch.cat(image_ids).to(device) if image_ids is not None else None
    return EncodedSet(torch.cat(images), torch.cat(texts), torch.cat(ids).to(device), torch.cat(labels).to(device),
                      torch.cat(indices).to(device), skipped, image_id_rows)


def gather_encoded(local: EncodedSet, world_size: int) -> EncodedSet:
    """Every rank's EncodedSet joined and sorted by dataset index (ranks may hold different counts).

    Image ids are kept when every rank with rows has them (a rank with none has nothing to contribute)."""
    if world_size == 1:
        return local
    has_image_ids = local.image_ids is not None or len(local) == 0
    shares = all_gather_no_grad(torch.tensor([[len(local), int(has_image_ids)]], device=local.image.device))
    most, keep_image_ids = int(shares[:, 0].max()), bool(shares[:, 1].all())

    def padded(t: torch.Tensor, fill: float) -> torch.Tensor:
        pad = t.new_full((most - t.shape[0], *t.shape[1:]), fill)
        return all_gather_no_grad(torch.cat([t, pad]))

    index = padded(local.indices, -1)
    keep = index >= 0
    order = index[keep].argsort()
    pick = lambda t, fill: padded(t, fill)[keep][order]  # noqa: E731
    image_ids = None
    if keep_image_ids:
        # A rank with no rows has no ids: its (empty) indices stand in for them.
        image_ids = pick(local.image_ids if local.image_ids is not None else local.indices, 0)
    return EncodedSet(pick(local.image, 0.0), pick(local.text, 0.0), pick(local.caption_ids, 0),
                      pick(local.labels, -1), index[keep][order], local.skipped, image_ids)


def _val_batches(dataset: Any, batch_size: int, num_workers: int, max_samples: int | None, rank: int,
                 world_size: int, pin_memory: bool) -> Iterable[dict[str, Any]]:
    from trainer.data import collate_samples, detach_from_stop_signals

    kwargs = dict(batch_size=batch_size, num_workers=num_workers, collate_fn=collate_samples, pin_memory=pin_memory,
                  worker_init_fn=detach_from_stop_signals)
    if isinstance(dataset, torch.utils.data.IterableDataset):
        # Shard readers split by their own rank/world_size attributes and stop at their own index limit.
        dataset = copy.copy(dataset)
        dataset.rank, dataset.world_size, dataset.limit = rank, world_size, max_samples
        return torch.utils.data.DataLoader(dataset, **kwargs)
    n = len(dataset) if max_samples is None else min(len(dataset), max_samples)
    subset = torch.utils.data.Subset(dataset, list(range(rank, n, world_size)))
    return torch.utils.data.DataLoader(subset, shuffle=False, **kwargs)


def encode_dataset(model: torch.nn.Module, dataset: Any, device: torch.device, batch_size: int = 64,
                   autocast: Autocast | None = None, max_samples: int | None = None, num_workers: int = 0,
                   rank: int = 0, world_size: int = 1, on_batch: Callable[[], None] | None = None) -> EncodedSet:
    """Features of the items of `dataset` with index < `max_samples` (all of them by default), in dataset
    order; unreadable ones among them are skipped, not replaced, so the set is the same for any world size.

    With world_size > 1 each rank encodes its share and all ranks receive the whole set.
    """
    batches = _val_batches(dataset, batch_size, num_workers, max_samples, rank, world_size,
                           pin_memory=torch.device(device).type == "cuda")
    local = encode_batches(model, batches, torch.device(device), autocast, on_batch)
    # The in-batch metrics and the val loss cut the set into consecutive batches: they need dataset order.
    encoded = gather_encoded(local, world_size).sorted_by_index()
    if len(encoded) == 0:
        skipped = local.skipped
        raise DataError("the val set yielded no readable samples"
                         + (f" (e.g. {skipped[0][0]}: {skipped[0][1]})" if skipped else ""))
    return encoded


@torch.no_grad()
def zeroshot_classifier(model: torch.nn.Module, classnames: Sequence[str], templates: Sequence[str],
                        device: torch.device, tokenizer: Callable[..., torch.Tensor] | None = None,
                        autocast: Autocast | None = None, batch_size: int = 256) -> torch.Tensor:
    """[C, D] class embeddings: per class, the renormalised mean of its normalised prompt embeddings."""
    if tokenizer is None:
        from trainer.tokenizer import tokenize as tokenizer
    model = _unwrap(model)
    templates = list(templates) or list(DEFAULT_TEMPLATES)
    prompts = [fill(t, c) for c in classnames for t in templates]
    tokens = tokenizer(prompts, context_length=model.context_length, truncate=True)
    features = []
    for start in range(0, len(prompts), batch_size):
        with _autocast_ctx(autocast):
            out = model.encode_text(tokens[start:start + batch_size].to(device), trim=True)
        features.append(F.normalize(out.float(), dim=-1))
    per_prompt = torch.cat(features).view(len(classnames), len(templates), -1)
    return F.normalize(per_prompt.mean(dim=1), dim=-1)


def model_loss_fn(model: torch.nn.Module) -> PairLoss:
    """The single-process loss a model trains with: SigLIP when it has a logit_bias, else CLIP's."""
    model = _unwrap(model)
    scale = model.logit_scale.exp().float()
    bias = getattr(model, "logit_bias", None)
    if bias is not None:
        siglip = SigLipLoss()
        return lambda img, txt, ids, image_ids: siglip(img, txt, scale, bias.float(), ids, image_ids)
    clip = ClipLoss(multi_positive=True)
    return lambda img, txt, ids, image_ids: clip(img, txt, scale, ids, image_ids)


def image_ids_of(dataset: Any, indices: torch.Tensor) -> torch.Tensor | None:
    """[N] ids of the rows' image files (equal ids: the same file listed with several captions), from the
    dataset's `path(index)`, for val sets whose batches carry no `image_id`; None when it has no paths either
    (every record is then its own image)."""
    if not hasattr(dataset, "path"):
        return None
    ids: dict[str, int] = {}
    image_ids = [ids.setdefault(dataset.path(i), len(ids)) for i in indices.tolist()]
    return torch.tensor(image_ids, dtype=torch.long, device=indices.device)


def _check_val_set(dataset: Any, encoded: EncodedSet) -> None:
    """DataError for a val set the metrics cannot use (the caller's input, not a bug here)."""
    skipped = encoded.skipped
    example = f" (e.g. {skipped[0][0]}: {skipped[0][1]})" if skipped else ""
    if len(encoded) < 2:  # in-batch metrics compare each pair with the others
        raise DataError(f"the val set has {len(encoded)} readable pair(s), {len(skipped)} unreadable; evaluation "
                        f"needs at least 2{example}")
    classes = getattr(dataset, "classes", None)
    if classes and int(encoded.labels.max()) >= len(classes):
        raise DataError(f"the val set has label {int(encoded.labels.max())} but its dataset.json lists "
                        f"{len(classes)} classes")


def _has_zeroshot(dataset: Any, encoded: EncodedSet) -> bool:
    classes = getattr(dataset, "classes", None)
    return bool(classes) and bool((encoded.labels >= 0).any())


def metrics_from_features(encoded: EncodedSet, logit_scale: float, cfg: EvalConfig, loss_fn: PairLoss,
                          class_embeddings: torch.Tensor | None = None) -> EvalResult:
    """Every val/* metric from already-encoded features (the model-free half of `evaluate`)."""
    batch = in_batch_metrics(encoded.image, encoded.text, logit_scale, cfg.batch_size, encoded.caption_ids,
                             encoded.image_ids)
    values = {
        "val/loss": val_loss(encoded.image, encoded.text, cfg.batch_size, loss_fn, encoded.caption_ids,
                             encoded.image_ids),
        "val/acc": batch["acc"],
        "val/similarity": batch["similarity"],
    }
    retrieval = compute_retrieval(encoded.image, encoded.text, encoded.caption_ids, cfg.recall_at,
                                  image_ids=encoded.image_ids)
    values.update({f"val/{k}": v for k, v in retrieval.items()})
    if class_embeddings is not None:
        zs = zeroshot_accuracy(encoded.image, class_embeddings, encoded.labels)
        values.update({f"val/{k}": v for k, v in zs.items()})
    return EvalResult(values, batch_size=batch["batch_size"], num_samples=len(encoded))


def evaluate(model: torch.nn.Module, val_dataset: Any, cfg: EvalConfig, device: torch.device | str,
             tokenizer: Callable[..., torch.Tensor] | None = None, autocast: Autocast | None = None, *,
             num_workers: int = 0, rank: int = 0, world_size: int = 1,
             on_batch: Callable[[], None] | None = None) -> EvalResult:
    """All val/* metrics of `model` on `val_dataset` (module docstring for the definitions).

    val_dataset: a CsvDataset-like map-style dataset or a ShardDataset yielding the data contract's samples.
    autocast: a zero-argument callable returning the forward-pass context (e.g. Precision.autocast).
    world_size > 1: call on every rank; each encodes 1/world_size of the set and all get the same result.
    The model's train/eval mode is restored afterwards.
    """
    device = torch.device(device)
    inner = _unwrap(model)
    was_training = inner.training
    inner.eval()
    try:
        encoded = encode_dataset(inner, val_dataset, device, cfg.batch_size, autocast, cfg.max_samples,
                                 num_workers, rank, world_size, on_batch)
        _check_val_set(val_dataset, encoded)
        if encoded.image_ids is None:  # a dataset whose samples carry no image_id
            encoded.image_ids = image_ids_of(val_dataset, encoded.indices)
        class_embeddings = None
        if cfg.zeroshot and _has_zeroshot(val_dataset, encoded):
            templates = getattr(val_dataset, "templates", None) or DEFAULT_TEMPLATES
            class_embeddings = zeroshot_classifier(inner, val_dataset.classes, templates, device, tokenizer,
                                                   autocast, batch_size=max(cfg.batch_size, 64))
        with torch.no_grad():
            result = metrics_from_features(encoded, inner.logit_scale.exp().item(), cfg, model_loss_fn(inner),
                                           class_embeddings)
        result.skipped = list(encoded.skipped)
        return result
    finally:
        inner.train(was_training)


# ------------------------------------------------------------------------------------------ matrix snapshot
def _denormalised_thumbnail(pixels: torch.Tensor) -> str:
    """Thumbnail from a normalised model input (for datasets that cannot return the original image)."""
    from trainer.transforms import CLIP_MEAN, CLIP_STD

    mean = torch.tensor(CLIP_MEAN).view(3, 1, 1)
    std = torch.tensor(CLIP_STD).view(3, 1, 1)
    rgb = (pixels.detach().float().cpu() * std + mean).clamp(0, 1).mul(255).round().to(torch.uint8)
    return thumbnail_data_uri(Image.fromarray(rgb.permute(1, 2, 0).numpy()))


SNAPSHOT_SCAN = 64  # x k: how far a streamed val set is read for k different images before repeats fill in


def _first_samples(dataset: Any, k: int) -> list[dict[str, Any]]:
    """The first k readable samples of the val set showing k different images (an image's first caption), so a
    val set listing each image with its five captions gives a matrix of images, not five rows of one; repeats
    fill in when it has fewer images. Unreadable samples are passed over."""
    from trainer.data import Skipped

    streamed = isinstance(dataset, torch.utils.data.IterableDataset)
    if streamed:
        items: Iterator[Any] = itertools.islice(iter(dataset), SNAPSHOT_SCAN * k)
    else:
        items = (dataset[i] for i in _distinct_images_first(dataset))
    samples, repeats, seen = [], [], set()
    for item in items:
        if isinstance(item, Skipped):
            continue
        image = item.get("image_id")
        (repeats if image is not None and image in seen else samples).append(item)
        seen.add(image)
        # A map-style set lists every image before any repeat: the first repeat means no image is left.
        if len(samples) == k or (not streamed and len(samples) + len(repeats) >= k):
            break
    return (samples + repeats)[:k]


def _distinct_images_first(dataset: Any) -> list[int]:
    """A map-style set's indices: each image's first pair in order, then the other pairs (without reading
    an image when the set knows its image ids)."""
    ids = getattr(dataset, "image_ids", None)
    if ids is None:
        return list(range(len(dataset)))
    first: dict[int, int] = {}
    for index, image in enumerate(ids.tolist()):
        first.setdefault(image, index)
    chosen = set(first.values())
    return [*first.values(), *(i for i in range(len(dataset)) if i not in chosen)]


def _caption_of(dataset: Any, sample: dict[str, Any]) -> str:
    if hasattr(dataset, "caption"):
        return dataset.caption(sample["index"])
    from trainer.tokenizer import default_tokenizer

    tokens = sample["text"].tolist()
    end = tokens.index(max(tokens))  # the end token has the highest id
    return default_tokenizer().decode(tokens[1:end]).strip()


def _thumbnail_of(dataset: Any, sample: dict[str, Any]) -> str:
    if hasattr(dataset, "load_image"):
        try:
            return thumbnail_data_uri(dataset.load_image(sample["index"]))
        except Exception:  # noqa: BLE001 - it decoded a moment ago; fall back to the model input
            pass
    return _denormalised_thumbnail(sample["image"])


@torch.no_grad()
def matrix_snapshot(model: torch.nn.Module, val_dataset: Any, k: int, device: torch.device | str,
                    autocast: Autocast | None = None) -> dict[str, Any]:
    """The `matrix` event body (without step): the first k readable val pairs' captions, 64 px JPEG
    thumbnails (data URIs, centre crops of the original images), their [k][k] cosine similarities (rows
    images, columns captions) and the model's logit_scale."""
    from trainer.data import collate_samples

    device = torch.device(device)
    inner = _unwrap(model)
    was_training = inner.training
    inner.eval()
    try:
        samples = _first_samples(val_dataset, k)
        if not samples:
            raise ValueError("matrix_snapshot: the val set has no readable sample")
        encoded = encode_batches(inner, [collate_samples(samples)], device, autocast)
        return {
            "captions": [_caption_of(val_dataset, s) for s in samples],
            "thumbnails": [_thumbnail_of(val_dataset, s) for s in samples],
            "similarity": cosine_matrix(encoded.image, encoded.text),
            "logit_scale": inner.logit_scale.exp().item(),
        }
    finally:
        inner.train(was_training)
