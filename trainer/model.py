"""CLIP: a ViT or ModifiedResNet image tower and a causal text transformer, with OpenAI's parameter names.

Every parameter has the name and shape it has in OpenAI's released state dicts (and in open_clip's `CLIP`),
so those load with no renaming. Differences from OpenAI's code are in how, not what: batch-first tensors,
attention through `scaled_dot_product_attention`, and no fp16 weight casting (mixed precision is autocast's
job; LayerNorm always computes in fp32).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from contract.presets import ModelArgs


class LayerNorm(nn.LayerNorm):
    """LayerNorm computed in fp32 whatever the input dtype, cast back to the input dtype (as OpenAI)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight.float() if self.weight is not None else None
        bias = self.bias.float() if self.bias is not None else None
        return F.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps).to(x.dtype)


class QuickGELU(nn.Module):
    """The sigmoid approximation of GELU that OpenAI's weights were trained with."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class SelfAttention(nn.Module):
    """Multi-head self-attention keeping `nn.MultiheadAttention`'s parameter names (in_proj_*, out_proj)."""

    def __init__(self, width: int, heads: int, causal: bool = False):
        super().__init__()
        self.heads, self.causal = heads, causal
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * width))
        self.out_proj = nn.Linear(width, width)
        # nn.MultiheadAttention's init; OpenAI keeps it for the vision tower.
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.in_proj_bias)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)
        q, k, v = qkv.view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
        return self.out_proj(out.transpose(1, 2).reshape(b, n, d))


class ResidualAttentionBlock(nn.Module):
    """Pre-norm transformer block: x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

    def __init__(self, width: int, heads: int, causal: bool = False, quick_gelu: bool = True):
        super().__init__()
        self.ln_1 = LayerNorm(width)
        self.attn = SelfAttention(width, heads, causal)
        self.ln_2 = LayerNorm(width)
        self.mlp = nn.Sequential(OrderedDict([
            ("c_fc", nn.Linear(width, width * 4)),
            ("gelu", QuickGELU() if quick_gelu else nn.GELU()),
            ("c_proj", nn.Linear(width * 4, width)),
        ]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    """A stack of residual attention blocks on [batch, tokens, width] tensors."""

    def __init__(self, width: int, layers: int, heads: int, causal: bool = False, quick_gelu: bool = True):
        super().__init__()
        self.width, self.layers = width, layers
        self.grad_checkpointing = False
        self.resblocks = nn.Sequential(
            *[ResidualAttentionBlock(width, heads, causal, quick_gelu) for _ in range(layers)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.resblocks:
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return x


class VisionTransformer(nn.Module):
    """ViT image tower: patchify, class token, transformer, project the class token."""

    def __init__(self, input_resolution: int, patch_size: int, width: int, layers: int, heads: int, output_dim: int,
                 quick_gelu: bool = True):
        super().__init__()
        self.input_resolution, self.output_dim = input_resolution, output_dim
        self.conv1 = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size, bias=False)
        scale = width**-0.5
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = nn.Parameter(scale * torch.randn((input_resolution // patch_size) ** 2 + 1, width))
        self.ln_pre = LayerNorm(width)
        self.transformer = Transformer(width, layers, heads, quick_gelu=quick_gelu)
        self.ln_post = LayerNorm(width)
        self.proj = nn.Parameter(scale * torch.randn(width, output_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x).flatten(2).transpose(1, 2)  # [B, grid*grid, width]
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
        x = self.transformer(self.ln_pre(x))
        return self.ln_post(x[:, 0, :]) @ self.proj


class Bottleneck(nn.Module):
    """ResNet bottleneck whose strided version average-pools instead of striding (anti-aliased)."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.avgpool = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.downsample = None
        if stride > 1 or inplanes != planes * self.expansion:
            self.downsample = nn.Sequential(OrderedDict([
                ("-1", nn.AvgPool2d(stride)),
                ("0", nn.Conv2d(inplanes, planes * self.expansion, 1, stride=1, bias=False)),
                ("1", nn.BatchNorm2d(planes * self.expansion)),
            ]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(self.avgpool(out)))
        identity = self.downsample(x) if self.downsample is not None else x
        return F.relu(out + identity)


class AttentionPool2d(nn.Module):
    """Pools a feature map with one attention query: the mean token attends over mean + all positions."""

    def __init__(self, spacial_dim: int, embed_dim: int, num_heads: int, output_dim: int):
        super().__init__()
        self.positional_embedding = nn.Parameter(torch.randn(spacial_dim**2 + 1, embed_dim) / embed_dim**0.5)
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.c_proj = nn.Linear(embed_dim, output_dim)
        self.num_heads = num_heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(2).transpose(1, 2)  # [B, HW, C]
        x = torch.cat([x.mean(dim=1, keepdim=True), x], dim=1) + self.positional_embedding.to(x.dtype)
        b, n, c = x.shape
        heads = lambda t: t.view(b, t.shape[1], self.num_heads, c // self.num_heads).transpose(1, 2)  # noqa: E731
        q, k, v = heads(self.q_proj(x[:, :1])), heads(self.k_proj(x)), heads(self.v_proj(x))
        out = F.scaled_dot_product_attention(q, k, v)  # [B, heads, 1, C/heads]
        return self.c_proj(out.transpose(1, 2).reshape(b, c))


class ModifiedResNet(nn.Module):
    """OpenAI's ResNet: 3-conv stem with avgpool, anti-aliased strides, attention pooling at the end."""

    def __init__(self, layers: tuple[int, int, int, int], output_dim: int, heads: int, input_resolution: int = 224,
                 width: int = 64):
        super().__init__()
        self.output_dim, self.input_resolution = output_dim, input_resolution
        self.conv1 = nn.Conv2d(3, width // 2, kernel_size=3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width // 2)
        self.conv2 = nn.Conv2d(width // 2, width // 2, kernel_size=3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width // 2)
        self.conv3 = nn.Conv2d(width // 2, width, kernel_size=3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(width)
        self.avgpool = nn.AvgPool2d(2)
        self._inplanes = width  # mutated while the stages are built
        self.layer1 = self._make_layer(width, layers[0])
        self.layer2 = self._make_layer(width * 2, layers[1], stride=2)
        self.layer3 = self._make_layer(width * 4, layers[2], stride=2)
        self.layer4 = self._make_layer(width * 8, layers[3], stride=2)
        self.attnpool = AttentionPool2d(input_resolution // 32, width * 32, heads, output_dim)

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        layers = [Bottleneck(self._inplanes, planes, stride)]
        self._inplanes = planes * Bottleneck.expansion
        layers += [Bottleneck(self._inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        x = self.avgpool(F.relu(self.bn3(self.conv3(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.attnpool(x)


def trim_tokens(tokens: torch.Tensor) -> torch.Tensor:
    """Cut a [B, L] token batch to its longest sequence (up to and including the last EOT).

    EOT has the highest id, so argmax finds it. Reads one number back from the device.
    """
    length = int(tokens.argmax(dim=-1).max()) + 1
    return tokens[:, :length]


def no_weight_decay_names(model: nn.Module) -> set[str]:
    """CLIP.no_weight_decay_params' rule over any module with OpenAI CLIP's parameter names (open_clip's CLIP
    too): parameters < 2-D, and those under a name in CLIP.NO_DECAY_NAMES."""
    return {name for name, p in model.named_parameters()
            if p.ndim < 2 or any(part in CLIP.NO_DECAY_NAMES for part in name.split("."))}


class CLIP(nn.Module):
    """Contrastive image-text model; see docs/architecture.md (Model contract)."""

    # The top-level children that make up each tower (the temperature and bias belong to neither).
    TOWERS = {"image": ("visual",),
              "text": ("token_embedding", "positional_embedding", "transformer", "ln_final", "text_projection")}
    # Parameters named so (any dotted part of the name) never decay, though some are 2-D: embeddings and the
    # temperature only get pulled away from what they encode (a decayed logit_scale drifts to a soft softmax).
    NO_DECAY_NAMES = frozenset({"token_embedding", "positional_embedding", "class_embedding", "logit_scale",
                                "logit_bias"})

    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.context_length = args.context_length
        self.vocab_size = args.vocab_size
        if args.is_resnet:
            self.visual = ModifiedResNet(args.vision_layers, args.embed_dim, args.vision_heads,
                                         args.image_resolution, args.vision_width)
        else:
            self.visual = VisionTransformer(args.image_resolution, args.vision_patch_size, args.vision_width,
                                            args.vision_layers, args.vision_heads, args.embed_dim,
                                            args.quick_gelu)
        self.transformer = Transformer(args.transformer_width, args.transformer_layers, args.transformer_heads,
                                       causal=True, quick_gelu=args.quick_gelu)
        self.token_embedding = nn.Embedding(args.vocab_size, args.transformer_width)
        self.positional_embedding = nn.Parameter(torch.empty(args.context_length, args.transformer_width))
        self.ln_final = LayerNorm(args.transformer_width)
        self.text_projection = nn.Parameter(torch.empty(args.transformer_width, args.embed_dim))
        self.logit_scale = nn.Parameter(torch.ones([]) * math.log(1 / 0.07))
        if args.init_logit_bias is not None:
            self.logit_bias = nn.Parameter(torch.ones([]) * args.init_logit_bias)
        self.initialize_parameters()

    @property
    def image_resolution(self) -> int:
        return self.args.image_resolution

    def initialize_parameters(self) -> None:
        """OpenAI's init: small normal embeddings, depth-scaled text projections, zero-init last BN per block."""
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        if isinstance(self.visual, ModifiedResNet):
            pool = self.visual.attnpool
            std = pool.c_proj.in_features**-0.5
            for proj in (pool.q_proj, pool.k_proj, pool.v_proj, pool.c_proj):
                nn.init.normal_(proj.weight, std=std)
            for stage in (self.visual.layer1, self.visual.layer2, self.visual.layer3, self.visual.layer4):
                for name, param in stage.named_parameters():
                    if name.endswith("bn3.weight"):
                        nn.init.zeros_(param)  # each residual block starts as the identity
        width, layers = self.transformer.width, self.transformer.layers
        proj_std = width**-0.5 * (2 * layers) ** -0.5
        attn_std, fc_std = width**-0.5, (2 * width) ** -0.5
        for block in self.transformer.resblocks:
            nn.init.normal_(block.attn.in_proj_weight, std=attn_std)
            nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
            nn.init.normal_(block.mlp.c_fc.weight, std=fc_std)
            nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)
        nn.init.normal_(self.text_projection, std=width**-0.5)

    def no_weight_decay_params(self) -> set[str]:
        """Names of the parameters weight decay must leave alone: everything < 2-D (biases, norm gains,
        class_embedding, logit_scale) and the embeddings in NO_DECAY_NAMES; only the other matrices decay."""
        return no_weight_decay_names(self)

    def tower_parameters(self, tower: str) -> Iterator[tuple[str, nn.Parameter]]:
        """(name, parameter) of every parameter of the "image" or "text" tower (what freezing a tower locks)."""
        children = self._tower_children(tower)
        return ((name, p) for name, p in self.named_parameters() if name.split(".")[0] in children)

    def tower_modules(self, tower: str) -> list[nn.Module]:
        """The submodules of the "image" or "text" tower (what a frozen tower keeps in eval mode)."""
        return [child for name in self._tower_children(tower)
                if isinstance(child := getattr(self, name, None), nn.Module)]

    def _tower_children(self, tower: str) -> tuple[str, ...]:
        if tower not in self.TOWERS:
            raise ValueError(f"tower {tower!r}: expected one of {', '.join(self.TOWERS)}")
        return self.TOWERS[tower]

    def set_grad_checkpointing(self, enabled: bool = True) -> None:
        """Recompute each transformer block in backward (text tower and ViT; the ResNet tower is not
        checkpointed, because recomputing BatchNorm in training mode would update its running stats twice)."""
        self.transformer.grad_checkpointing = enabled
        if isinstance(self.visual, VisionTransformer):
            self.visual.transformer.grad_checkpointing = enabled

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] normalised pixels -> [B, embed_dim] unnormalised image features."""
        return self.visual(images)

    def encode_text(self, tokens: torch.Tensor, trim: bool = False) -> torch.Tensor:
        """[B, L] token ids (L <= context_length) -> [B, embed_dim] unnormalised features at the EOT token.

        trim=True first cuts the batch to its longest sequence: the causal mask means padding after the EOT
        never influences it, so the features are the same and short captions cost far less.
        """
        if trim:
            tokens = trim_tokens(tokens)
        length = tokens.shape[1]
        if length > self.context_length:
            raise ValueError(f"tokens have length {length} but the model's context_length is {self.context_length}")
        x = self.token_embedding(tokens) + self.positional_embedding[:length]
        x = self.ln_final(self.transformer(x))
        eot = x[torch.arange(x.shape[0], device=x.device), tokens.argmax(dim=-1)]
        return eot @ self.text_projection

    def forward(self, images: torch.Tensor, tokens: torch.Tensor, trim_text: bool = False
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> (L2-normalised image features, L2-normalised text features, logit_scale.exp())."""
        image_features = F.normalize(self.encode_image(images), dim=-1)
        text_features = F.normalize(self.encode_text(tokens, trim=trim_text), dim=-1)
        return image_features, text_features, self.logit_scale.exp()


def build_model(args: ModelArgs, device: torch.device | str | None = None) -> CLIP:
    """A randomly initialised CLIP for `args` (device="meta" builds the shapes without memory)."""
    with torch.device(device or "cpu"):
        return CLIP(args)
