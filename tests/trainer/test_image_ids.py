"""One image listed with several captions (COCO-style pairs tables): its rows share an `image_id`, from the
CSV and shard datasets through the loaders and the training step to the loss and the val metrics.

Every test writes its own tiny images, CSVs and shards under tmp_path.
"""

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from contract.config import DataConfig, EvalConfig, RunConfig
from contract.presets import ModelArgs, get_preset
from dataset.shards import write_shards
from trainer.data import BatchFinisher, CsvDataset, ShardDataset, build_train_loader, collate_samples
from trainer.distributed import DistInfo
from trainer.evaluate import evaluate
from trainer.loss import ClipLoss
from trainer.model import build_model
from trainer.training.data_feed import DataFeed
from trainer.training.precision import Precision
from trainer.training.step import forward_backward
from trainer.transforms import eval_transform, eval_transform_uint8

from tests.train_support import one_torch_thread
from tests.trainer.test_data import quiet, write_jpeg
from tests.trainer.test_evaluate import ref_in_batch
from tests.trainer.test_loss import ref_clip_loss

pytestmark = pytest.mark.timeout(120)
_one_thread = pytest.fixture(scope="module", autouse=True)(one_torch_thread)

IMAGES, CAPTIONS = 6, 3  # 18 rows: each image listed with 3 captions


def captioned_images(root: Path, corrupt_row: int | None = None, images: int = IMAGES) -> Path:
    """pairs.csv: `images` JPEGs x CAPTIONS rows each, rows of one image not adjacent (row r shows image
    r % images); every image's third row names it as `./images/k.jpg` (the same file); images 0 and 1 share
    one caption text."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    for k in range(images):
        write_jpeg(root / "images" / f"{k}.jpg", seed=k)
    rows = ["filepath,caption"]
    for c in range(CAPTIONS):
        for k in range(images):
            path = f"./images/{k}.jpg" if c == 2 else f"images/{k}.jpg"
            rows.append(f"{path},{'a small photo' if c == 0 and k < 2 else f'photo {k} caption {c}'}")
    if corrupt_row is not None:
        (root / "images" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff this is not really a jpeg")
        rows.insert(corrupt_row + 1, "images/corrupt.jpg,a photo of noise")
    (root / "pairs.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return root / "pairs.csv"


def image_of_row(row: int, images: int = IMAGES) -> int:
    return row % images


def assert_image_ids_follow_images(image_ids: list[int], rows: list[int]) -> None:
    """Equal image ids exactly for rows of the same image file."""
    for a in range(len(rows)):
        for b in range(len(rows)):
            same_image = image_of_row(rows[a]) == image_of_row(rows[b])
            assert (image_ids[a] == image_ids[b]) == same_image, (rows[a], rows[b])


# --- datasets and loaders -------------------------------------------------------------------------------

def test_csv_rows_of_one_image_file_share_an_image_id(tmp_path):
    ds = CsvDataset(captioned_images(tmp_path), eval_transform(16))
    assert_image_ids_follow_images(ds.image_ids.tolist(), list(range(len(ds))))
    assert ds[14]["image_id"] == ds[2]["image_id"] == int(ds.image_ids[8])  # ./images/2.jpg is images/2.jpg
    assert ds.caption_ids[0] == ds.caption_ids[1] and ds.image_ids[0] != ds.image_ids[1]


@pytest.mark.parametrize("cache", [False, True])
def test_training_batches_carry_equal_image_ids_for_captions_of_one_image(tmp_path, cache):
    cfg = DataConfig(train=str(captioned_images(tmp_path / "data")), val=None, num_workers=0, cache=cache)
    loader = build_train_loader(cfg, 9, 16, seed=3, data_dir=tmp_path / "home", log=quiet)
    repeated = 0
    for batch in [next(loader) for _ in range(4)]:
        rows = batch["index"].tolist()
        assert batch["image_id"].dtype == torch.long and batch["image_id"].shape == (9,)
        assert_image_ids_follow_images(batch["image_id"].tolist(), rows)
        repeated += len(rows) - len({image_of_row(r) for r in rows})
    assert repeated > 0  # 9 rows of 6 images: some image is in a batch twice


def test_shard_records_of_one_image_share_an_image_id(tmp_path):
    # The shard writer keys records by row: the image id comes from the image bytes, the same for one file.
    csv_path = captioned_images(tmp_path / "data")
    write_shards(csv_path, tmp_path / "shards", shard_size=4, name="pairs", log=None)
    pattern = tmp_path / "shards" / "pairs-{000000..000004}.tar"
    samples = list(ShardDataset(pattern, eval_transform(16), shuffle=False))
    assert [s["index"] for s in samples] == list(range(IMAGES * CAPTIONS))
    assert_image_ids_follow_images([s["image_id"] for s in samples], [s["index"] for s in samples])
    loader = build_train_loader(DataConfig(train=str(pattern), val=None, num_workers=0), 9, 16, seed=1, log=quiet)
    batch = next(loader)
    assert_image_ids_follow_images(batch["image_id"].tolist(), batch["index"].tolist())


@pytest.mark.filterwarnings("ignore:.*image decoding and encoding capabilities:DeprecationWarning")
def test_image_ids_stay_with_their_rows_when_an_encoded_jpeg_fails_to_decode(tmp_path):
    # The GPU-decode path (run with torchvision's CPU decoder) drops an undecodable row after collation.
    # No pixel limit: the worker then does not read the corrupt JPEG's header, and the decoder meets it.
    ds = CsvDataset(captioned_images(tmp_path, corrupt_row=3), eval_transform_uint8(24), encoded=True,
                    max_pixels=None, probe=0)
    batch = BatchFinisher("cpu", resolution=24)(collate_samples([ds[i] for i in range(8)]))
    kept = [0, 1, 2, 4, 5, 6, 7]
    assert batch["index"].tolist() == kept and batch["image"].shape[0] == len(kept)
    assert [Path(p).name for p, _ in batch["skipped"]] == ["corrupt.jpg"]
    assert batch["image_id"].tolist() == ds.image_ids[kept].tolist()
    assert batch["image_id"][-1] == batch["image_id"][0]  # row 7 is image 0's second caption


def test_the_data_feed_hands_the_step_image_ids_on_its_device(tmp_path):
    cfg = RunConfig.model_validate({"data": {"train": str(captioned_images(tmp_path)), "val": None,
                                             "num_workers": 0}})
    cpu = torch.device("cpu")
    feed = DataFeed(build_train_loader(cfg.data, 6, 16, seed=0, log=quiet), cfg, cpu, DistInfo(0, 0, 1, cpu, True))
    micro = feed.next_micro_batch()
    same_batch = next(build_train_loader(cfg.data, 6, 16, seed=0, log=quiet))
    assert set(micro) == {"image", "text", "caption_id", "image_id"}
    assert torch.equal(micro["image_id"], same_batch["image_id"])


# --- the training step ----------------------------------------------------------------------------------

EOT = 49407
SMALL = ModelArgs(embed_dim=16, image_resolution=16, vision_layers=1, vision_width=64, vision_patch_size=8,
                  context_length=8, vocab_size=EOT + 1, transformer_width=64, transformer_heads=2,
                  transformer_layers=1)


def step_batch(n: int) -> dict[str, torch.Tensor]:
    """n pairs with distinct captions, rows i and i + n/2 captions of one image (positives across halves; its
    two crops differ, as augmentation makes them)."""
    g = torch.Generator().manual_seed(0)
    tokens = torch.zeros(n, SMALL.context_length, dtype=torch.long)
    tokens[:, 0], tokens[:, 1:4], tokens[:, 4] = EOT - 1, torch.randint(1, 40000, (n, 3), generator=g), EOT
    return {"image": torch.randn(n, 3, 16, 16, generator=g, dtype=torch.float64), "text": tokens,
            "caption_id": torch.arange(n), "image_id": torch.arange(n) % (n // 2)}


def test_an_accumulated_step_treats_captions_of_one_image_across_micro_batches_as_positives():
    torch.manual_seed(0)
    model = build_model(SMALL).double()
    batch, fp32 = step_batch(8), Precision("fp32", torch.device("cpu"))
    halves = [{k: v[:4] for k, v in batch.items()}, {k: v[4:] for k, v in batch.items()}]
    out = forward_backward(copy.deepcopy(model), ClipLoss(), halves, fp32)
    assert torch.equal(out.image_ids, batch["image_id"]) and torch.equal(out.caption_ids, batch["caption_id"])
    img, txt, scale = (t.detach() for t in model(batch["image"], batch["text"]))
    expected = ref_clip_loss(img.numpy(), txt.numpy(), scale.item(), batch["caption_id"].tolist(),
                             batch["image_id"].tolist())
    assert out.loss.item() == pytest.approx(expected, rel=1e-6)
    assert abs(ref_clip_loss(img.numpy(), txt.numpy(), scale.item()) - expected) > 1e-3


# --- evaluation -----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return build_model(get_preset("tiny-vit")).eval()


def test_val_metrics_count_captions_of_one_image_and_shards_agree_with_the_csv(tiny_model, tmp_path):
    csv_path = captioned_images(tmp_path / "data", images=2)  # 6 rows; this model's best caption is row 0's
    ds = CsvDataset(csv_path, eval_transform(tiny_model.image_resolution), context_length=tiny_model.context_length)
    n = len(ds)
    cfg = EvalConfig(batch_size=n, recall_at=[1, 5], zeroshot=False)  # every caption in one batch
    result = evaluate(tiny_model, ds, cfg, "cpu")
    with torch.no_grad():  # reference: every pair encoded on its own, metrics by explicit loops
        img = torch.cat([F.normalize(tiny_model.encode_image(ds[i]["image"][None]), dim=-1) for i in range(n)])
        txt = torch.cat([F.normalize(tiny_model.encode_text(ds[i]["text"][None]), dim=-1) for i in range(n)])
    img, txt, scale = img.double().numpy(), txt.double().numpy(), tiny_model.logit_scale.exp().item()
    ids, image_ids = ds.caption_ids.tolist(), [image_of_row(r, images=2) for r in range(n)]
    acc, _, _ = ref_in_batch(img, txt, scale, ids, n, image_ids)
    loss = ref_clip_loss(img, txt, scale, ids, image_ids)
    assert result["val/acc"] == pytest.approx(acc, abs=1e-6)  # averaged in fp32
    assert result["val/loss"] == pytest.approx(loss, rel=1e-4)
    # This model and set tell the definitions apart (a caption of the same image is some row's best).
    assert acc > ref_in_batch(img, txt, scale, ids, n)[0]
    assert abs(loss - ref_clip_loss(img, txt, scale, ids)) > 1e-3

    write_shards(csv_path, tmp_path / "shards", shard_size=4, name="val", log=None)
    shards = ShardDataset(tmp_path / "shards" / "val-{000000..000001}.tar",
                          eval_transform(tiny_model.image_resolution), context_length=tiny_model.context_length,
                          shuffle=False)
    from_shards = evaluate(tiny_model, shards, cfg, "cpu")
    assert from_shards.keys() == result.keys()
    for key, value in result.items():
        assert from_shards[key] == pytest.approx(value, rel=1e-5, abs=1e-7), key
