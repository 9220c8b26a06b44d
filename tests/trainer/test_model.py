"""The CLIP model: parity with open_clip, trimmed text, presets, architecture inference, precision."""

import dataclasses
import subprocess
import sys

import pytest
import torch

from contract.presets import (
    PRESETS,
    ModelArgs,
    available_models,
    count_parameters,
    get_preset,
    preset_descriptions,
    resolve_preset_name,
)
from trainer.checkpoint import model_args_from_state_dict
from trainer.model import build_model, trim_tokens

from tests.tiny_models import SMALL_RN, SMALL_VIT


def randomize_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every weight and BatchNorm statistic a non-trivial value (the init zeroes some, e.g. bn3)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if not t.is_floating_point():
                continue
            noise = torch.randn(t.shape, generator=g)
            if name.endswith("running_var"):
                t.copy_(0.5 + torch.rand(t.shape, generator=g))
            elif name.endswith(("bn1.weight", "bn2.weight", "bn3.weight", "downsample.1.weight", "ln_1.weight",
                                "ln_2.weight", "ln_pre.weight", "ln_post.weight", "ln_final.weight")):
                t.copy_(1 + 0.1 * noise)
            elif name == "logit_scale":
                t.fill_(2.0)
            elif name.endswith("proj") or name == "text_projection":  # used as x @ W: fan-in is dim 0
                t.copy_(noise * t.shape[0] ** -0.5)
            elif t.dim() >= 2 and "embedding" not in name:  # conv / linear weights: [out, fan-in...]
                t.copy_(noise * t[0].numel() ** -0.5)
            else:
                t.copy_(noise * 0.1)
    return model


def padded_tokens(lengths: list[int], context: int, vocab: int, seed: int = 0) -> torch.Tensor:
    """Token rows of the given content lengths: SOT-ish ids, then EOT (the highest id), then zero padding."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.zeros(len(lengths), context, dtype=torch.long)
    for i, n in enumerate(lengths):
        tokens[i, :n] = torch.randint(1, vocab - 1, (n,), generator=g)
        tokens[i, n] = vocab - 1
    return tokens


def open_clip_twin(args: ModelArgs):
    """open_clip's CLIP with the same hyper-parameters."""
    from open_clip.model import CLIP as OpenClipCLIP
    from open_clip.model import CLIPTextCfg, CLIPVisionCfg

    vision = CLIPVisionCfg(layers=args.vision_layers, width=args.vision_width, patch_size=args.vision_patch_size,
                           image_size=args.image_resolution, head_width=64)
    text = CLIPTextCfg(context_length=args.context_length, vocab_size=args.vocab_size,
                       width=args.transformer_width, heads=args.transformer_heads, layers=args.transformer_layers)
    return OpenClipCLIP(args.embed_dim, vision, text, quick_gelu=args.quick_gelu)


@pytest.mark.parametrize("args", [SMALL_VIT, SMALL_RN, dataclasses.replace(SMALL_VIT, quick_gelu=False)],
                         ids=["vit", "resnet", "vit-gelu"])
def test_features_match_open_clip_for_the_same_state_dict(args):
    torch.manual_seed(0)
    ours = randomize_(build_model(args)).eval()
    theirs = open_clip_twin(args).eval()
    assert set(theirs.state_dict()) == set(ours.state_dict())
    theirs.load_state_dict(ours.state_dict(), strict=True)
    images = torch.randn(3, 3, args.image_resolution, args.image_resolution, generator=torch.Generator().manual_seed(1))
    tokens = padded_tokens([3, 18, 0], args.context_length, args.vocab_size)
    with torch.no_grad():
        torch.testing.assert_close(ours.encode_image(images), theirs.encode_image(images), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ours.encode_text(tokens), theirs.encode_text(tokens), atol=1e-5, rtol=1e-5)
        img, txt, scale = ours(images, tokens)
        ref_img, ref_txt, ref_scale = theirs(images, tokens)
    torch.testing.assert_close(img, ref_img, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(txt, ref_txt, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(scale, ref_scale)
    assert img.abs().sum() > 0 and not torch.allclose(img[0], img[1])


def test_trimmed_text_gives_the_same_features_on_padded_batches():
    model = randomize_(build_model(SMALL_VIT)).eval()
    for lengths in ([1, 4, 2], [7, 0], [18, 3, 11, 5]):
        tokens = padded_tokens(lengths, SMALL_VIT.context_length, SMALL_VIT.vocab_size, seed=len(lengths))
        assert trim_tokens(tokens).shape[1] == max(lengths) + 1
        with torch.no_grad():
            full, trimmed = model.encode_text(tokens), model.encode_text(tokens, trim=True)
        torch.testing.assert_close(trimmed, full, atol=1e-6, rtol=1e-6)


def test_text_longer_than_the_context_is_rejected_with_both_lengths():
    model = build_model(SMALL_VIT)
    with pytest.raises(ValueError, match="length 21 .* context_length is 20"):
        model.encode_text(torch.zeros(1, 21, dtype=torch.long))


def test_forward_returns_unit_features_and_exp_logit_scale():
    model = build_model(PRESETS["tiny-vit"]).eval()
    tokens = padded_tokens([5, 9], 77, 49408)
    with torch.no_grad():
        img, txt, scale = model(torch.randn(2, 3, 64, 64), tokens)
    assert img.shape == txt.shape == (2, 128)
    torch.testing.assert_close(img.norm(dim=-1), torch.ones(2))
    torch.testing.assert_close(txt.norm(dim=-1), torch.ones(2))
    assert scale.item() == pytest.approx(1 / 0.07, rel=1e-5)
    assert model.image_resolution == 64 and model.context_length == 77 and model.args == PRESETS["tiny-vit"]


def test_initialisation_follows_openai():
    torch.manual_seed(0)
    model = build_model(PRESETS["tiny-rn"])
    sd = model.state_dict()
    assert all(sd[k].abs().sum() == 0 for k in sd if k.endswith("bn3.weight") and ".layer" in k)
    assert sd["token_embedding.weight"].std().item() == pytest.approx(0.02, rel=0.05)
    assert sd["text_projection"].std().item() == pytest.approx(128**-0.5, rel=0.1)
    proj_std = 128**-0.5 * (2 * 4) ** -0.5
    assert sd["transformer.resblocks.0.mlp.c_proj.weight"].std().item() == pytest.approx(proj_std, rel=0.1)


def test_logit_bias_exists_only_when_configured():
    assert not hasattr(build_model(SMALL_VIT), "logit_bias")
    model = build_model(dataclasses.replace(SMALL_VIT, init_logit_bias=-10.0))
    assert model.logit_bias.item() == -10.0 and "logit_bias" in model.state_dict()


@pytest.mark.parametrize("args", [SMALL_VIT, SMALL_RN], ids=["vit", "resnet"])
def test_grad_checkpointing_gives_the_same_gradients(args):
    def grads(checkpointing: bool) -> dict[str, torch.Tensor]:
        torch.manual_seed(0)
        model = randomize_(build_model(args))
        model.set_grad_checkpointing(checkpointing)
        images = torch.randn(2, 3, args.image_resolution, args.image_resolution)
        img, txt, scale = model(images, padded_tokens([4, 6], args.context_length, args.vocab_size))
        (scale * img @ txt.T).logsumexp(dim=1).sum().backward()
        return {n: p.grad for n, p in model.named_parameters() if p.grad is not None}

    plain, checkpointed = grads(False), grads(True)
    assert plain.keys() == checkpointed.keys() and len(plain) > 10
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], atol=1e-6, rtol=1e-5, msg=name)


def test_bf16_autocast_keeps_layernorm_in_fp32_and_features_close():
    model = randomize_(build_model(SMALL_VIT)).eval()
    images = torch.randn(2, 3, 32, 32)
    tokens = padded_tokens([4, 9], 20, 500)
    seen = []
    hook = model.visual.ln_pre.register_forward_hook(lambda m, i, o: seen.append((i[0].dtype, o.dtype)))
    with torch.no_grad():
        ref = model(images, tokens)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(images, tokens)
    hook.remove()
    assert seen[1] == (torch.bfloat16, torch.bfloat16)  # the residual stream keeps its dtype through ln_pre
    for a, b in zip(low[:2], ref[:2]):
        assert (a.float() * b).sum(dim=-1).min() > 0.98  # cosine between bf16 and fp32 features


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_layernorm_normalises_in_fp32_and_returns_the_input_dtype(dtype):
    from torch.overrides import TorchFunctionMode

    from trainer.model import LayerNorm

    class RecordLayerNormDtypes(TorchFunctionMode):
        seen: list = []

        def __torch_function__(self, func, types, args=(), kwargs=None):
            if func is torch.nn.functional.layer_norm:
                self.seen.append(args[0].dtype)
            return func(*args, **(kwargs or {}))

    ln = LayerNorm(8).to(dtype)  # e.g. fp16 weights, as in OpenAI's released checkpoints
    x = (torch.randn(4, 8) * 10 + 50).to(dtype)
    with RecordLayerNormDtypes():
        out = ln(x)
    assert RecordLayerNormDtypes.seen == [torch.float32]
    assert out.dtype == dtype
    torch.testing.assert_close(out, LayerNorm(8)(x.float()).to(dtype))


@pytest.mark.parametrize("name", list(PRESETS))
def test_architecture_inference_recovers_every_preset(name):
    model = build_model(PRESETS[name], device="meta")
    assert model_args_from_state_dict(model.state_dict()) == PRESETS[name]
    assert sum(p.numel() for p in model.parameters()) == count_parameters(PRESETS[name])


def test_architecture_inference_reads_logit_bias():
    args = dataclasses.replace(SMALL_RN, init_logit_bias=-7.5)
    assert model_args_from_state_dict(build_model(args).state_dict()) == args


def test_presets_have_openai_hyper_parameters_and_aliases():
    b32 = get_preset("ViT-B/32")
    assert (b32.embed_dim, b32.vision_width, b32.vision_layers, b32.vision_patch_size) == (512, 768, 12, 32)
    assert get_preset("ViT-L/14").transformer_width == 768 and get_preset("ViT-L-14").embed_dim == 768
    assert get_preset("RN50").vision_layers == (3, 4, 6, 3) and get_preset("RN50").embed_dim == 1024
    assert get_preset("RN101").vision_layers == (3, 4, 23, 3)
    assert resolve_preset_name("vit-b-16-quickgelu") == "ViT-B-16"
    assert resolve_preset_name("ViT-H-14") is None
    with pytest.raises(KeyError, match="ViT-H-14.*available: RN50"):
        get_preset("ViT-H-14")
    assert set(available_models()) >= {"RN50", "RN101", "ViT-B-32", "ViT-B-16", "ViT-L-14", "tiny-vit", "tiny-rn"}
    descriptions = preset_descriptions()
    assert descriptions.keys() == set(available_models())
    assert "151.3M params" in descriptions["ViT-B-32"]  # OpenAI's ViT-B/32 has 151,277,313 parameters


def test_model_args_round_trip_and_reject_bad_keys():
    for args in PRESETS.values():
        assert ModelArgs.from_dict(args.to_dict()) == args
    with pytest.raises(ValueError, match=r"unknown keys \['vision_heads'\].*missing keys \['embed_dim'\]"):
        ModelArgs.from_dict({**{k: v for k, v in SMALL_VIT.to_dict().items() if k != "embed_dim"}, "vision_heads": 3})
    with pytest.raises(ValueError, match="multiple of vision_patch_size"):
        dataclasses.replace(SMALL_VIT, image_resolution=30)


def test_presets_module_does_not_import_torch():
    code = "import sys, contract.presets as p; p.preset_descriptions(); assert 'torch' not in sys.modules, 'torch'"
    subprocess.run([sys.executable, "-c", code], check=True)
