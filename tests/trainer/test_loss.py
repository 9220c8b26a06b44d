"""ClipLoss / SigLipLoss against hand-computed numbers and independent loop references (one process).

The two-process equivalence lives in test_loss_distributed.py.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from trainer.loss import ClipLoss, SigLipLoss, build_loss, contrastive_logits, pair_ids, positive_targets


# ---------------------------------------------------------------------------------------------- references
def ref_positives(n: int, ids: list[int] | None = None, image_ids: list[int] | None = None) -> list[list[bool]]:
    """[n][n] by explicit loops: j is a positive of i when it is i, or has i's caption id or i's image id."""
    same_caption = lambda i, j: ids is not None and ids[i] == ids[j]  # noqa: E731
    same_image = lambda i, j: image_ids is not None and image_ids[i] == image_ids[j]  # noqa: E731
    return [[i == j or same_caption(i, j) or same_image(i, j) for j in range(n)] for i in range(n)]


def ref_clip_loss(img: np.ndarray, txt: np.ndarray, scale: float, ids: list[int] | None = None,
                  image_ids: list[int] | None = None) -> float:
    """CLIP loss with explicit loops in float64; targets spread evenly over the positives (`ref_positives`)."""
    n = len(img)
    positive = ref_positives(n, ids, image_ids)

    def direction(a: np.ndarray, b: np.ndarray) -> float:
        total = 0.0
        for i in range(n):
            logits = [scale * float(np.dot(a[i], b[j])) for j in range(n)]
            top = max(logits)
            log_z = top + math.log(sum(math.exp(v - top) for v in logits))
            positives = [j for j in range(n) if positive[i][j]]
            total += -sum((logits[j] - log_z) / len(positives) for j in positives)
        return total / n

    return (direction(img, txt) + direction(txt, img)) / 2


def ref_siglip_loss(img: np.ndarray, txt: np.ndarray, scale: float, bias: float, ids: list[int] | None = None,
                    image_ids: list[int] | None = None) -> float:
    n = len(img)
    positive = ref_positives(n, ids, image_ids)
    total = 0.0
    for i in range(n):
        for j in range(n):
            z = 1.0 if positive[i][j] else -1.0
            logit = scale * float(np.dot(img[i], txt[j])) + bias
            total += math.log1p(math.exp(-z * logit))  # -log sigmoid(z * logit)
    return total / n


def random_features(n: int, d: int, seed: int, dtype=torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    img = F.normalize(torch.randn(n, d, generator=g, dtype=dtype), dim=-1)
    txt = F.normalize(torch.randn(n, d, generator=g, dtype=dtype), dim=-1)
    return img, txt


# ---------------------------------------------------------------------------------------------- CLIP loss
def test_two_by_two_loss_matches_hand_computed_value():
    img = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    txt = torch.tensor([[1.0, 0.0], [0.6, 0.8]], dtype=torch.float64)
    scale = torch.tensor(10.0, dtype=torch.float64)
    # logits = 10 * [[1, .6], [0, .8]]; each row's CE is log(1 + e^-(margin to the one negative)):
    # i2t rows: margins 4 and 8; t2i rows (the transpose [[10, 0], [6, 8]]): margins 10 and 2.
    expected = (math.log1p(math.exp(-4)) + math.log1p(math.exp(-8))) / 2 / 2 \
        + (math.log1p(math.exp(-10)) + math.log1p(math.exp(-2))) / 2 / 2
    loss = ClipLoss()(img, txt, scale)
    assert loss.item() == pytest.approx(expected, rel=1e-12)


def test_loss_uses_the_given_exponentiated_scale_not_its_log():
    # A perfect 2x2 match: with scale e^{log 100} = 100 the loss is ~2 e^-100 (about 0); had the loss
    # multiplied by the log-parameter 4.6 instead, it would be log(1 + e^-4.6) = 0.01.
    eye = torch.eye(2, dtype=torch.float64)
    assert ClipLoss()(eye, eye, torch.tensor(100.0, dtype=torch.float64)).item() < 1e-30
    assert ClipLoss()(eye, eye, torch.tensor(math.log(100.0), dtype=torch.float64)).item() == pytest.approx(
        math.log1p(math.exp(-math.log(100.0))), rel=1e-12)


def test_clip_loss_matches_loop_reference_on_random_features():
    img, txt = random_features(7, 5, seed=0)
    loss = ClipLoss()(img, txt, torch.tensor(14.3, dtype=torch.float64))
    assert loss.item() == pytest.approx(ref_clip_loss(img.numpy(), txt.numpy(), 14.3), rel=1e-12)


def test_logit_scale_gradient_flows_through_exp_and_matches_finite_differences():
    img, txt = random_features(6, 4, seed=1)
    raw = torch.tensor(math.log(1 / 0.07), dtype=torch.float64, requires_grad=True)
    loss_fn = ClipLoss()
    loss_fn(img, txt, raw.exp()).backward()
    h = 1e-6
    with torch.no_grad():
        plus = loss_fn(img, txt, (raw + h).exp()).item()
        minus = loss_fn(img, txt, (raw - h).exp()).item()
    assert raw.grad.item() == pytest.approx((plus - minus) / (2 * h), rel=1e-6)
    assert raw.grad.item() != 0.0


def test_feature_gradients_match_finite_differences():
    img, txt = random_features(4, 3, seed=2)
    img.requires_grad_(True)
    scale = torch.tensor(20.0, dtype=torch.float64)
    ClipLoss()(img, txt, scale).backward()
    h = 1e-6
    for i, k in [(0, 0), (2, 1), (3, 2)]:
        bumped = img.detach().clone()
        bumped[i, k] += h
        up = ref_clip_loss(bumped.numpy(), txt.numpy(), 20.0)
        bumped[i, k] -= 2 * h
        down = ref_clip_loss(bumped.numpy(), txt.numpy(), 20.0)
        assert img.grad[i, k].item() == pytest.approx((up - down) / (2 * h), rel=1e-5, abs=1e-9)


def test_multi_positive_with_distinct_ids_equals_the_plain_loss():
    img, txt = random_features(8, 6, seed=3, dtype=torch.float32)
    scale = torch.tensor(30.0)
    plain = ClipLoss(multi_positive=False)(img, txt, scale)
    multi = ClipLoss(multi_positive=True)(img, txt, scale, caption_ids=torch.arange(8) * 7 + 3)
    torch.testing.assert_close(multi, plain, rtol=0, atol=2e-7)
    # Distinct image ids too (caption ids and image ids may share values: each kind is compared with its own).
    both = ClipLoss(multi_positive=True)(img, txt, scale, caption_ids=torch.arange(8) * 7 + 3,
                                         image_ids=torch.arange(8) * 7 + 3)
    torch.testing.assert_close(both, plain, rtol=0, atol=2e-7)
    images_only = ClipLoss(multi_positive=True)(img, txt, scale, image_ids=torch.arange(8).flip(0))
    torch.testing.assert_close(images_only, plain, rtol=0, atol=2e-7)


@pytest.mark.parametrize("identical_text_features", [True, False])
def test_multi_positive_treats_equal_caption_ids_as_positives(identical_text_features):
    img, txt = random_features(6, 5, seed=4)
    ids = [4, 9, 4, 1, 9, 4]
    if identical_text_features:  # as a real text tower gives identical captions
        txt[2] = txt[0]
        txt[5] = txt[0]
        txt[4] = txt[1]
    scale = torch.tensor(12.0, dtype=torch.float64)
    loss = ClipLoss()(img, txt, scale, caption_ids=torch.tensor(ids))
    assert loss.item() == pytest.approx(ref_clip_loss(img.numpy(), txt.numpy(), 12.0, ids), rel=1e-12)
    plain = ClipLoss(multi_positive=False)(img, txt, scale, caption_ids=torch.tensor(ids))
    assert plain.item() == pytest.approx(ref_clip_loss(img.numpy(), txt.numpy(), 12.0), rel=1e-12)
    if not identical_text_features:  # (with identical features both losses have the same value)
        assert abs(loss.item() - plain.item()) > 1e-3


def assert_gradient_matches_finite_differences(img: torch.Tensor, txt: torch.Tensor, ids: list[int] | None = None,
                                               image_ids: list[int] | None = None, scale: float = 10.0) -> None:
    """ClipLoss's gradient wrt the image features equals central differences of the loop reference."""
    img = img.detach().clone().requires_grad_(True)
    caption_ids, image_id_tensor = (None if v is None else torch.tensor(v) for v in (ids, image_ids))
    ClipLoss()(img, txt, torch.tensor(scale, dtype=torch.float64), caption_ids=caption_ids,
               image_ids=image_id_tensor).backward()
    h = 1e-6
    for i in range(img.shape[0]):
        for k in range(img.shape[1]):
            bumped = img.detach().clone()
            bumped[i, k] += h
            up = ref_clip_loss(bumped.numpy(), txt.numpy(), scale, ids, image_ids=image_ids)
            bumped[i, k] -= 2 * h
            down = ref_clip_loss(bumped.numpy(), txt.numpy(), scale, ids, image_ids=image_ids)
            assert img.grad[i, k].item() == pytest.approx((up - down) / (2 * h), rel=1e-5, abs=1e-9)


def test_multi_positive_gradient_matches_finite_differences_of_the_reference():
    img, txt = random_features(4, 3, seed=8)
    txt[1] = txt[0]  # captions 0 and 1 are identical
    ids = [0, 0, 1, 2]
    assert_gradient_matches_finite_differences(img, txt, ids=ids)


# Five captions of image 10 would be five rows; here: pairs 0 and 1 are two captions of one image, pairs 3 and 5
# another image's, and pair 2 shares its caption text with pair 4 (a chain: 1 ~ 0 by image, 2 ~ 4 by caption).
CAPTIONS_OF_IMAGES = dict(ids=[0, 1, 2, 3, 2, 5], image_ids=[10, 10, 11, 12, 13, 12])


def test_positive_targets_spread_over_the_same_caption_or_the_same_image():
    ids, image_ids = CAPTIONS_OF_IMAGES["ids"], CAPTIONS_OF_IMAGES["image_ids"]
    positive = ref_positives(6, ids, image_ids)
    expected = torch.tensor([[float(positive[i][j]) / sum(positive[i]) for j in range(6)] for i in range(6)],
                            dtype=torch.float64)
    both = pair_ids(torch.tensor(ids), torch.tensor(image_ids), 6, torch.device("cpu"))
    torch.testing.assert_close(positive_targets(both, both, torch.float64), expected, rtol=0, atol=0)
    assert expected[0, 1] == 0.5 and expected[2, 4] == 0.5 and expected[3, 5] == 0.5 and expected[0, 2] == 0


@pytest.mark.parametrize("same_image_features", [True, False])
def test_captions_of_one_image_are_positives_not_negatives(same_image_features):
    img, txt = random_features(6, 5, seed=11)
    ids, image_ids = CAPTIONS_OF_IMAGES["ids"], CAPTIONS_OF_IMAGES["image_ids"]
    if same_image_features:  # one image file, decoded twice (without augmentation)
        img[1] = img[0]
        img[5] = img[3]
    scale = torch.tensor(12.0, dtype=torch.float64)
    expected = ref_clip_loss(img.numpy(), txt.numpy(), 12.0, ids, image_ids)
    loss = ClipLoss()(img, txt, scale, caption_ids=torch.tensor(ids), image_ids=torch.tensor(image_ids))
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    if not same_image_features:  # (with identical features both losses have the same value)
        captions_only = ClipLoss()(img, txt, scale, caption_ids=torch.tensor(ids))
        assert abs(captions_only.item() - expected) > 1e-3  # the other captions of an image were negatives
    plain = ClipLoss(multi_positive=False)(img, txt, scale, caption_ids=torch.tensor(ids),
                                           image_ids=torch.tensor(image_ids))
    assert plain.item() == pytest.approx(ref_clip_loss(img.numpy(), txt.numpy(), 12.0), rel=1e-12)
    local_rows = ClipLoss(local_loss=True)(img, txt, scale, torch.tensor(ids), torch.tensor(image_ids))
    assert local_rows.item() == pytest.approx(expected, rel=1e-12)  # one rank: local loss is the full loss


def test_image_id_positives_gradient_matches_finite_differences_of_the_reference():
    img, txt = random_features(4, 3, seed=12)
    image_ids = [5, 5, 6, 7]  # two captions of one image
    assert_gradient_matches_finite_differences(img, txt, image_ids=image_ids)


def test_loss_is_computed_in_fp32_under_bf16_autocast():
    img, txt = random_features(8, 16, seed=5, dtype=torch.float32)
    scale = torch.tensor(100.0)
    exact = ref_clip_loss(img.double().numpy(), txt.double().numpy(), 100.0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = ClipLoss()(img, txt, scale)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(exact, rel=1e-5)


def test_contrastive_logits_are_scaled_cosines_and_transposes():
    img, txt = random_features(3, 4, seed=6)
    per_image, per_text = contrastive_logits(img, txt, 5.0)
    a, b = img.numpy(), txt.numpy()
    expected = np.array([[5.0 * float(np.dot(a[i], b[j])) for j in range(3)] for i in range(3)])
    np.testing.assert_allclose(per_image.numpy(), expected, rtol=1e-12)
    torch.testing.assert_close(per_text, per_image.T)


def test_clip_loss_rejects_mismatched_feature_shapes():
    with pytest.raises(ValueError, match=r"image_features \[3, 4\] and text_features \[2, 4\]"):
        ClipLoss()(torch.zeros(3, 4), torch.zeros(2, 4), torch.tensor(1.0))


# ---------------------------------------------------------------------------------------------- SigLIP
def test_siglip_two_by_two_matches_hand_computed_value():
    img = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    txt = torch.tensor([[1.0, 0.0], [0.6, 0.8]], dtype=torch.float64)
    # logits = 10 * cos - 5 = [[5, 1], [-5, 3]]; positives on the diagonal.
    softplus = lambda x: math.log1p(math.exp(x))  # -log sigmoid(y) = softplus(-y)
    expected = (softplus(-5) + softplus(1) + softplus(-5) + softplus(-3)) / 2
    loss = SigLipLoss()(img, txt, torch.tensor(10.0, dtype=torch.float64), torch.tensor(-5.0, dtype=torch.float64))
    assert loss.item() == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("ids", [None, [3, 5, 3, 8, 5]])
def test_siglip_matches_loop_reference(ids):
    img, txt = random_features(5, 4, seed=7)
    loss = SigLipLoss()(img, txt, torch.tensor(10.0, dtype=torch.float64), torch.tensor(-3.0, dtype=torch.float64),
                        caption_ids=None if ids is None else torch.tensor(ids))
    assert loss.item() == pytest.approx(ref_siglip_loss(img.numpy(), txt.numpy(), 10.0, -3.0, ids), rel=1e-12)


def test_siglip_counts_captions_of_one_image_as_positives():
    img, txt = random_features(6, 4, seed=13)
    ids, image_ids = CAPTIONS_OF_IMAGES["ids"], CAPTIONS_OF_IMAGES["image_ids"]
    scale, bias = torch.tensor(10.0, dtype=torch.float64), torch.tensor(-3.0, dtype=torch.float64)
    loss = SigLipLoss()(img, txt, scale, bias, caption_ids=torch.tensor(ids), image_ids=torch.tensor(image_ids))
    expected = ref_siglip_loss(img.numpy(), txt.numpy(), 10.0, -3.0, ids, image_ids)
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    assert abs(ref_siglip_loss(img.numpy(), txt.numpy(), 10.0, -3.0, ids) - expected) > 1e-3
    plain = SigLipLoss(multi_positive=False)(img, txt, scale, bias, torch.tensor(ids), torch.tensor(image_ids))
    assert plain.item() == pytest.approx(ref_siglip_loss(img.numpy(), txt.numpy(), 10.0, -3.0), rel=1e-12)


def test_build_loss_names_the_bad_kind():
    assert isinstance(build_loss("clip"), ClipLoss)
    assert isinstance(build_loss("siglip"), SigLipLoss)
    with pytest.raises(ValueError, match="loss.kind 'triplet'"):
        build_loss("triplet")
