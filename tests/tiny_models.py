"""Small architectures for fast model and checkpoint tests (a ViT and a ModifiedResNet)."""

import dataclasses

from contract.presets import ModelArgs

SMALL_VIT = ModelArgs(embed_dim=48, image_resolution=32, vision_layers=2, vision_width=64, vision_patch_size=8,
                      context_length=20, vocab_size=500, transformer_width=64, transformer_heads=1,
                      transformer_layers=2)
SMALL_RN = dataclasses.replace(SMALL_VIT, vision_layers=(1, 1, 1, 1), vision_width=16, vision_patch_size=None)
