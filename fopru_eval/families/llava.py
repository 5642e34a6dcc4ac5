"""LLaVA-1.5 (``LlavaForConditionalGeneration``): one square tower view per image.

Significance comes from the attention of the CLIP layer whose output the LLM consumes (``vision_feature_layer``),
less its prefix (CLS) token; the view is the tower's patch grid (24 x 24 = 576 tokens for llava-1.5). Positions:
``compact`` lets the model number the pruned sequence itself; ``original`` keeps each token's unpruned index.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from functools import partial
from typing import Any, ClassVar

import torch
from torch import nn
from transformers import CLIPVisionModel, LlavaForConditionalGeneration, PretrainedConfig, PreTrainedModel

from fopru_eval.core.config import PruningConfig
from fopru_eval.core.flops import Blocks, linear
from fopru_eval.core.layout import ImageLayout
from fopru_eval.core.scoring import Scorer
from fopru_eval.core.sequence import left_pad
from fopru_eval.families.base import EncodedImages, Family
from fopru_eval.families.hooks import InputCapture, SignificanceCapture

# Vision towers whose attention layers we can read, with their prefix (non-patch) tokens and the
# vision_feature_select_strategy that drops exactly those: adding a tower type is one entry here. SigLIP has no CLS
# token, so its LLaVAs (OneVision) feed every token ("full").
TOWERS = {
    "clip_vision_model": {"name": "CLIP", "prefix_tokens": 1, "feature_select": "default"},
    "siglip_vision_model": {"name": "SigLIP", "prefix_tokens": 0, "feature_select": "full"},
}


class Llava(Family):
    model_type = "llava"
    label = "LLaVA-1.5"
    model_class: ClassVar[type[PreTrainedModel]] = LlavaForConditionalGeneration
    example_checkpoint = "llava-hf/llava-1.5-7b-hf"
    # The tower class LLaVA builds for a CLIP vision config, for measuring a tower on its own.
    tower_class: ClassVar[type[PreTrainedModel]] = CLIPVisionModel
    # The ``TOWERS`` this family's checkpoints come with.
    towers: ClassVar[tuple[str, ...]] = ("clip_vision_model",)
    # The scored layer's keys (VisionZip), and the tower features the projector reads (VisPruner, merging).
    tower_reads: ClassVar[tuple[str, ...]] = ("keys", "tower_features")

    @classmethod
    def check_config(cls, config: PretrainedConfig, checkpoint: str, who: str) -> None:
        tower_type = config.vision_config.model_type
        tower = TOWERS[tower_type] if tower_type in cls.towers else None
        if tower is None:
            names = ", ".join(TOWERS[t]["name"] for t in cls.towers)
            raise ValueError(
                f"{checkpoint} has a {config.vision_config.model_type!r} vision tower; {who} supports {names} vision "
                f"towers ({', '.join(cls.towers)})"
            )
        if config.vision_feature_select_strategy != tower["feature_select"]:
            raise ValueError(
                f"{who}: vision_feature_select_strategy={config.vision_feature_select_strategy!r} is not supported; "
                f"accepted values: {tower['feature_select']} (the {tower['name']} tower's prefix tokens are dropped, "
                "as in LLaVA)"
            )

    # ----- the vision side -----------------------------------------------------------------------------------------

    @classmethod
    def feature_attention(cls, tower: nn.Module, config: PretrainedConfig) -> nn.Module:
        """The attention module of the tower layer whose output the LLM consumes (``vision_feature_layer``).

        ``hidden_states[0]`` is the embedding output and ``hidden_states[i]`` the output of layer i - 1, so feature
        layer -2 of a 24-layer tower is layer 22. With several feature layers, the deepest one is used.
        """
        feature_layers = config.vision_feature_layer
        if isinstance(feature_layers, int):
            feature_layers = [feature_layers]
        layers = getattr(tower, "vision_model", tower).encoder.layers
        indices = [f + len(layers) if f < 0 else f - 1 for f in feature_layers]
        if min(indices) < 0:
            raise ValueError(f"vision_feature_layer {feature_layers} includes the embedding output")
        return layers[max(indices)].self_attn

    @classmethod
    def tower_capture(
        cls,
        tower: nn.Module,
        config: PretrainedConfig,
        scorer: Scorer | str,
        timed: bool = False,
        keep_keys: bool = False,
    ) -> SignificanceCapture:
        """The capture on a LLaVA tower (``config`` is the whole model's), also for a tower built on its own."""
        attention = cls.feature_attention(tower, config)
        return SignificanceCapture(
            attention.q_proj,
            attention.k_proj,
            attention.num_heads,
            attention.scale,
            cls.prefix_tokens(config),
            scorer,
            timed,
            keep_keys,
        )

    @classmethod
    def view_tokens(cls, config: PretrainedConfig) -> int:
        return (config.vision_config.image_size // config.vision_config.patch_size) ** 2

    @classmethod
    def prefix_tokens(cls, config: PretrainedConfig) -> int:
        return TOWERS[config.vision_config.model_type]["prefix_tokens"]

    @classmethod
    def random_tower_inputs(cls, config: PretrainedConfig, images: int, generator: torch.Generator) -> dict[str, Any]:
        side = config.vision_config.image_size
        return {"pixel_values": torch.randn(images, 3, side, side, generator=generator)}

    def significance_capture(
        self, scorer: Scorer | str, timed: bool = False, keep_keys: bool = False
    ) -> SignificanceCapture:
        return self.tower_capture(self.model.model.vision_tower, self.model.config, scorer, timed, keep_keys)

    @property
    def grid(self) -> tuple[int, int]:
        """The patch grid of one tower view."""
        side = int(math.isqrt(self.view_tokens(self.model.config)))
        return side, side

    def encode_images(
        self, encoded: dict[str, Any], scorer: Scorer | None, reads: frozenset[str] = frozenset()
    ) -> EncodedImages:
        forward = partial(self.model.get_image_features, **self.tower_inputs(encoded), return_dict=True)
        output, scores, keys, tower_features = self.read_tower(forward, scorer, reads)
        features = list(output.pooler_output)
        layouts = [ImageLayout.single(self.grid)] * len(features)
        return EncodedImages(features, layouts, scores, keys=keys, tower_features=tower_features)

    def read_tower(
        self, forward: Any, scorer: Scorer | None, reads: frozenset[str]
    ) -> tuple[Any, list[torch.Tensor] | None, list[torch.Tensor] | None, list[torch.Tensor] | None]:
        """``forward()``, with the significance capture (keeping keys where ``reads`` has them) and the projector's
        input kept where it has ``tower_features``: its output, and per tower view the scores, keys and tower
        features (None where not asked for)."""
        keep_keys = "keys" in reads
        if keep_keys and scorer is None:
            raise ValueError("the tower's keys come with its significance capture: give a scorer")
        capture = self.significance_capture(scorer, keep_keys=keep_keys) if scorer is not None else nullcontext()
        projector = self.model.model.multi_modal_projector
        inputs = InputCapture(projector) if "tower_features" in reads else nullcontext()
        with capture, inputs:
            output = forward()
        scores = list(capture.significance) if scorer is not None else None
        keys = list(capture.keys) if keep_keys else None
        tower_features = list(torch.cat(inputs.inputs)) if "tower_features" in reads else None
        return output, scores, keys, tower_features

    def project(self, tower_features: torch.Tensor) -> torch.Tensor:
        return self.model.model.multi_modal_projector(tower_features)

    def tower_views(self, encoded: dict[str, Any], image_index: int) -> int:
        """How many times the tower runs for one image."""
        return 1

    def image_flops(self, encoded: dict[str, Any], image_index: int) -> int:
        """Every tower view of the image (``view_flops``)."""
        return self.tower_views(encoded, image_index) * self.view_flops()

    def view_flops(self) -> int:
        """Per tower view: the patch embedding, the CLIP blocks (every layer runs, though the LLM reads the
        ``vision_feature_layer``'s output) over the patches and the prefix token, and LLaVA's two-layer projector over
        the patch features."""
        config = self.model.config
        vision, text = config.vision_config, config.text_config
        patches = self.view_tokens(config)
        tokens = patches + self.prefix_tokens(config)
        heads = vision.num_attention_heads
        tower = Blocks(
            vision.num_hidden_layers, vision.hidden_size, heads, heads, vision.hidden_size // heads,
            vision.intermediate_size, gated=False,
        )  # fmt: skip
        feature_layers = 1 if isinstance(config.vision_feature_layer, int) else len(config.vision_feature_layer)
        per_view = (
            linear(patches, 3 * vision.patch_size**2, vision.hidden_size)
            + tower.flops(tokens, tokens * tokens)
            + linear(patches, feature_layers * vision.hidden_size, text.hidden_size)
            + linear(patches, text.hidden_size, text.hidden_size)
        )
        return per_view

    # ----- positions -----------------------------------------------------------------------------------------------

    def position_ids(self, kept_positions: list[torch.Tensor], config: PruningConfig) -> torch.Tensor | None:
        # generate() continues from the last prompt position, so decoding follows the original layout too.
        return left_pad(kept_positions, 0)[0] if config.positions == "original" else None
