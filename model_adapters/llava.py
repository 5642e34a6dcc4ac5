"""``llava_fopru``: LLaVA-1.5 (``LlavaForConditionalGeneration``) with FoPru pruning.

Data path per batch: processor -> CLIP tower (significance captured from the feature layer's attention) ->
per-image selection -> placeholders of pruned tokens dropped from ``input_ids`` -> the HF model runs on the kept
image features, passed as ``mm_encoder_outputs`` so its own embedding merge and generation loop stay untouched.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import torch
from transformers import AutoProcessor, LlavaForConditionalGeneration
from transformers.modeling_outputs import BaseModelOutputWithPooling

from fopru_eval.capture import SignificanceCapture
from fopru_eval.sequence import left_pad, surviving_positions, unpad
from fopru_model_adapters.base import FoPruLMM, PreparedBatch, Prompt


class LlavaFoPru(FoPruLMM):
    """LLaVA-1.5 with FoPru; the simple variant, used for loglikelihood and multiple-choice (``--force_simple``)."""

    model_name = "llava_fopru"

    # What a subclass for another LLaVA family changes.
    model_type = "llava"
    model_class: type = LlavaForConditionalGeneration
    example_checkpoint = "llava-hf/llava-1.5-7b-hf"

    def check_config(self, config: Any, pretrained: str) -> None:
        if config.vision_config.model_type != "clip_vision_model":
            raise ValueError(
                f"{self.model_name}: pretrained={pretrained} has a {config.vision_config.model_type!r} vision tower; "
                f"{self.model_name} supports CLIP vision towers (clip_vision_model)"
            )
        if config.vision_feature_select_strategy != "default":
            raise ValueError(
                f"{self.model_name}: vision_feature_select_strategy={config.vision_feature_select_strategy!r} is "
                "not supported; accepted values: default (the CLS token is dropped, as in LLaVA)"
            )

    def load(self, pretrained: str, **kwargs: Any) -> None:
        revision, trust_remote_code = kwargs["revision"], kwargs["trust_remote_code"]
        self.model = self.model_class.from_pretrained(pretrained, **kwargs).eval()
        self.processor = AutoProcessor.from_pretrained(
            pretrained, revision=revision, trust_remote_code=trust_remote_code
        )
        self.tokenizer = self.processor.tokenizer
        self._config = self.model.config

        vision = self.model.config.vision_config
        # The patch grid of one tower view.
        self.grid = (vision.image_size // vision.patch_size, vision.image_size // vision.patch_size)
        self.attention = self._feature_layer_attention()

    def _feature_layer_attention(self) -> torch.nn.Module:
        """The attention module of the CLIP layer whose output the LLM consumes (``vision_feature_layer``).

        ``hidden_states[0]`` is the embedding output and ``hidden_states[i]`` the output of layer i - 1, so feature
        layer -2 of a 24-layer tower is layer 22. With several feature layers, the deepest one is used.
        """
        feature_layers = self.model.config.vision_feature_layer
        if isinstance(feature_layers, int):
            feature_layers = [feature_layers]
        tower = self.model.model.vision_tower
        layers = getattr(tower, "vision_model", tower).encoder.layers
        indices = [f + len(layers) if f < 0 else f - 1 for f in feature_layers]
        if min(indices) < 0:
            raise ValueError(f"{self.model_name}: vision_feature_layer {feature_layers} includes the embedding output")
        return layers[max(indices)].self_attn

    def _significance_capture(self) -> SignificanceCapture:
        return SignificanceCapture(
            query_proj=self.attention.q_proj,
            key_proj=self.attention.k_proj,
            num_heads=self.attention.num_heads,
            scale=self.attention.scale,
            num_prefix_tokens=1,  # CLIP's CLS token
            mode=self.pruning.significance,
        )

    def encode_images(self, pixel_values: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        """Projected features per image (tokens, hidden) and, when the strategy needs it, their significance."""
        needs_significance = self.pruning.strategy in ("rank", "row")
        with self._significance_capture() if needs_significance else nullcontext() as capture:
            features = self.model.get_image_features(pixel_values=pixel_values, return_dict=True).pooler_output
        return list(features), capture.significance if needs_significance else None

    def prepare(self, prompts: list[Prompt], continuations: list[str] | None = None) -> PreparedBatch:
        texts = [
            self.processor.apply_chat_template(p.messages, add_generation_prompt=True, tokenize=False) for p in prompts
        ]
        images = [image for p in prompts for image in p.images]
        encoded = self.processor(images=images or None, text=texts, padding=True, return_tensors="pt")
        rows = unpad(encoded["input_ids"], encoded["attention_mask"])

        kept_features: list[torch.Tensor] = []
        kept_counts: list[int] = []
        total_counts: list[int] = []
        positions: list[torch.Tensor] = []  # each surviving token's position in the unpruned sequence
        image_index = 0
        if images:
            pixel_values = encoded["pixel_values"].to(self.device, self.model.dtype)
            features, significance = self.encode_images(pixel_values)
        for row_index, prompt in enumerate(prompts):
            kept = []
            for local_index in range(len(prompt.images)):
                scores = significance[image_index] if significance is not None else None
                indices = self.select_image_tokens(scores, self.grid, prompt.doc_key, local_index)
                kept.append(indices)
                kept_features.append(features[image_index][indices])
                image_index += 1
            sizes = [self.grid[0] * self.grid[1]] * len(kept)
            survivors = surviving_positions(rows[row_index], self.model.config.image_token_id, kept, sizes)
            rows[row_index] = rows[row_index][survivors]
            positions.append(survivors)
            kept_counts.append(sum(k.numel() for k in kept))
            total_counts.append(sum(sizes))

        inputs = self._model_inputs(rows, positions, kept_features, continuations)
        return PreparedBatch(inputs, kept_counts, total_counts, [row.numel() for row in rows])

    def _model_inputs(
        self,
        rows: list[torch.Tensor],
        positions: list[torch.Tensor],
        kept_features: list[torch.Tensor],
        continuations: list[str] | None,
    ) -> dict[str, Any]:
        """The pruned sequences (plus any continuations) padded into a batch, with the kept image features."""
        if continuations is not None:
            for i, continuation in enumerate(continuations):
                tokens = torch.tensor(self.tok_encode(continuation), dtype=rows[i].dtype)
                rows[i] = torch.cat([rows[i], tokens])
                positions[i] = torch.cat([positions[i], positions[i][-1] + 1 + torch.arange(len(tokens))])
        input_ids, attention_mask = left_pad(rows, self.tokenizer.pad_token_id)
        inputs: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention_mask}
        if self.pruning.positions == "original":
            # generate() continues from the last prompt position, so decoding follows the original layout too.
            inputs["position_ids"] = left_pad(positions, 0)[0]
        inputs = {name: tensor.to(self.device) for name, tensor in inputs.items()}
        if kept_features:
            inputs["mm_encoder_outputs"] = {"image": BaseModelOutputWithPooling(pooler_output=kept_features)}
        return inputs


class LlavaFoPruChat(LlavaFoPru):
    """The chat variant lmms-eval picks by default: prompts come from the task's messages, as for ``llava_hf``."""

    is_simple = False
