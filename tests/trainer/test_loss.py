"""ClipLoss / SigLipLoss against hand-computed numbers and independent loop references (one process).

The two-process equivalence lives in test_loss_distributed.py.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from trainer.loss import ClipLoss, SigLipLoss, build_loss, contrastive_logits


# ---------------------------------------------------------------------------------------------- references
def ref_clip_loss(img: np.ndarray, txt: np.ndarray, scale: float, ids: list[int] | None = None) -> float:
    """CLIP loss with explicit loops in float64; with ids, targets spread evenly over equal ids."""
    n = len(img)
    ids = list(range(n)) if ids is None else list(ids)

    def direction(a: np.ndarray, b: np.ndarray) -> float:
        total = 0.0
        for i in range(n):
            logits = [scale * float(np.dot(a[i], b[j])) for j in range(n)]
            top = max(logits)
            log_z = top + math.log(sum(math.exp(v - top) for v in logits))
            positives = [j for j in range(n) if ids[j] == ids[i]]
            total += -sum((logits[j] - log_z) / len(positives) for j in positives)
        return total / n

    return (direction(img, txt) + direction(txt, img)) / 2


def ref_siglip_loss(img: np.ndarray, txt: np.ndarray, scale: float, bias: float, ids: list[int] | None = None
                    ) -> float:
    n = len(img)
    ids = list(range(n)) if ids is None else list(ids)
    total = 0.0
    for i in range(n):
        for j in range(n):
            z = 1.0 if ids[i] == ids[j] else -1.0
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


def test_multi_positive_gradient_matches_finite_differences_of_the_reference():
    img, txt = random_features(4, 3, seed=8)
    txt[1] = txt[0]  # captions 0 and 1 are identical
    ids = [0, 0, 1, 2]
    img.requires_grad_(True)
    ClipLoss()(img, txt, torch.tensor(10.0, dtype=torch.float64), caption_ids=torch.tensor(ids)).backward()
    h = 1e-6
    for i in range(4):
        for k in range(3):
            bumped = img.detach().clone()
            bumped[i, k] += h
            up = ref_clip_loss(bumped.numpy(), txt.numpy(), 10.0, ids)
            bumped[i, k] -= 2 * h
            down = ref_clip_loss(bumped.numpy(), txt.numpy(), 10.0, ids)
            assert img.grad[i, k].item() == pytest.approx((up - down) / (2 * h), rel=1e-5, abs=1e-9)


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


def test_build_loss_names_the_bad_kind():
    assert isinstance(build_loss("clip"), ClipLoss)
    assert isinstance(build_loss("siglip"), SigLipLoss)
    with pytest.raises(ValueError, match="loss.kind 'triplet'"):
        build_loss("triplet")
