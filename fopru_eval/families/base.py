"""A model family: the protocol every family file fills in, and what the driver (``driver.py``) passes around.

A family (``llava.py``, ``llava_next.py``, ``llava_onevision.py``, ``qwen_vl.py``, ``qwen3_vl.py``) declares only what
differs: which layer's queries and keys to capture and whether the tower has prefix (CLS) tokens, how an image (or a
video) becomes views on grids (its ``ImageLayout``), and how positions are kept. Nothing here knows lmms-eval.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from PIL import Image
from transformers import AutoConfig, AutoProcessor, PretrainedConfig, PreTrainedModel, ProcessorMixin
from transformers.modeling_outputs import BaseModelOutputWithPooling

from fopru_eval.core.config import PruningConfig
from fopru_eval.core.flops import Blocks, llm_prefill_flops
from fopru_eval.core.layout import ImageLayout
from fopru_eval.core.registry import PruningConfigError
from fopru_eval.core.scoring import SCORERS, Scorer
from fopru_eval.core.strategies import STRATEGIES


@dataclass
class Prompt:
    """One request as the model sees it: a chat conversation and the images and videos it shows, each in order."""

    messages: list[dict[str, Any]]
    images: list[Image.Image]
    # Which doc this is, to seed random selection identically across reruns, batch sizes and ranks.
    doc_key: str
    # Each video a stack of already sampled frames, as the processor takes them: (frames, height, width, channels), or
    # (frames, channels, height, width) tensors as qwen-vl-utils gives them (one layout for all of a batch's videos).
    videos: list[Any] = field(default_factory=list)
    # Per video, the ``video_metadata`` the processor takes with its frames (source fps, the sampled frames' indices,
    # from which Qwen3-VL's processor writes timestamps), or None where unknown; empty: none known.
    video_metadata: list[dict[str, Any] | None] = field(default_factory=list)
    # The prompt already rendered to text, where the caller renders it itself (lmms-eval's simple LLaVA adapter applies
    # the tokenizer's chat template to a string); None: the processor's chat template renders ``messages``.
    text: str | None = None

    def render(self, processor: ProcessorMixin) -> str:
        """The prompt's text, with the assistant turn opened."""
        if self.text is not None:
            return self.text
        return processor.apply_chat_template(self.messages, add_generation_prompt=True, tokenize=False)


@dataclass
class EncodedImages:
    """What the vision side gives for a batch's images, in order."""

    # Per image: the features of its packed LLM tokens (visual tokens and row markers), in the order the LLM reads them.
    features: list[torch.Tensor]
    layouts: list[ImageLayout]
    # Per image: its flattened significance, indexed by its views' ``sources``; None when the strategy needs none.
    scores: list[torch.Tensor] | None
    # Per image: further features of the same packed tokens that the LLM also reads (Qwen3-VL's DeepStack features,
    # one tensor per injected layer), kept at the same positions as ``features``; empty for most families.
    extra_features: list[list[torch.Tensor]] = field(default_factory=list)
    # Per image, indexed by its views' ``sources`` like ``scores``, where the strategy reads them
    # (``Family.tower_reads``): the scored layer's keys averaged over heads, and the tower's features the projector
    # reads. None otherwise.
    keys: list[torch.Tensor] | None = None
    tower_features: list[torch.Tensor] | None = None


@dataclass
class PrunedBatch:
    """Model inputs after pruning, and what the LLM saw of each sample."""

    inputs: dict[str, Any]
    visual_tokens_kept: list[int]
    visual_tokens_total: list[int]
    input_tokens: list[int]
    # Row markers (LLaVA-NeXT's image_newline tokens) kept and in all, counted apart from visual tokens; None for
    # families without them.
    newline_tokens_kept: list[int] | None = None
    newline_tokens_total: list[int] | None = None
    # Estimated prefill FLOPs: tower and projector over every patch, the LLM over the tokens it was fed.
    prefill_flops: list[int] | None = None
    # For a strategy that drops tokens inside the LLM: the stage to run the model under (``running``); it fills in the
    # counts above (kept tokens, markers, FLOPs) once the prefill has selected.
    llm_stage: Any = None

    def running(self) -> Any:
        """The context every forward and ``generate`` on ``inputs`` runs under."""
        return self.llm_stage if self.llm_stage is not None else nullcontext()


class Family:
    """One Hugging Face vision-language family, bound to a loaded model and its processor."""

    model_type: ClassVar[str]  # the checkpoint config's model_type, and the key in ``FAMILIES``
    label: ClassVar[str]  # in words, for tables
    model_class: ClassVar[type[PreTrainedModel]]
    example_checkpoint: ClassVar[str]
    # Whether images end rows with newline tokens (row markers in their layouts), counted apart from visual tokens.
    has_newlines: ClassVar[bool] = False
    # What the tower gives a strategy beside scores and the LLM's features (``Strategy.reads``): none for most.
    tower_reads: ClassVar[tuple[str, ...]] = ()

    def __init__(self, model: PreTrainedModel, processor: ProcessorMixin) -> None:
        self.model = model
        self.processor = processor

    # ----- prefill FLOPs (``fopru_eval/core/flops.py``) --------------------------------------------------------------

    def image_flops(self, encoded: dict[str, Any], image_index: int) -> int:
        """The vision tower's and the projector's FLOPs for one image of the processor's output ``encoded``: over
        every patch, whatever pruning keeps (it comes after them)."""
        raise NotImplementedError

    def llm_flops(self, tokens: int, layers: int | None = None, shortened: tuple[int, int] | None = None) -> int:
        """The LLM's prefill FLOPs over ``tokens`` tokens (Llama-style blocks: gated MLP, grouped-query attention),
        with ``layers`` decoder layers instead of the loaded model's (a benchmark's slice of a deeper LLM);
        ``shortened=(layer, tokens_after)`` for tokens dropped inside the LLM (``llm_prefill_flops``)."""
        text = self.model.config.text_config
        head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
        blocks = Blocks(
            layers or text.num_hidden_layers, text.hidden_size, text.num_attention_heads, text.num_key_value_heads,
            head_dim, text.intermediate_size, gated=True,
        )  # fmt: skip
        return llm_prefill_flops(blocks, text.vocab_size, tokens, shortened)

    def decoder_layers(self) -> torch.nn.ModuleList:
        """The LLM's decoder layers, all of one shape (a benchmark times them to scale a slice of the LLM up)."""
        return self.model.model.language_model.layers

    # ----- loading -------------------------------------------------------------------------------------------------

    @classmethod
    def check_checkpoint(
        cls, pretrained: str, who: str, pruning: PruningConfig | None = None, **config_kwargs: Any
    ) -> None:
        """A clear error if ``pretrained`` is not a checkpoint of this family, or if its tower cannot give what
        ``pruning`` asks for (reads the config only); ``who`` is the adapter's name, for the message."""
        config = AutoConfig.from_pretrained(pretrained, **config_kwargs)
        if config.model_type != cls.model_type:
            raise ValueError(
                f"{who}: pretrained={pretrained} is a {config.model_type!r} checkpoint; {who} wraps "
                f"{cls.model_class.__name__} checkpoints (model_type {cls.model_type!r}, e.g. {cls.example_checkpoint})"
            )
        cls.check_config(config, f"{who}: pretrained={pretrained}", who)
        if pruning is not None:
            cls.check_pruning(config, pruning, who)

    @classmethod
    def check_pruning(cls, config: PretrainedConfig, pruning: PruningConfig, who: str) -> None:
        """A clear error if this family's checkpoint ``config`` cannot give what ``pruning`` asks for."""
        selection = pruning.selection
        if pruning.needs_scores and pruning.scorer.needs_prefix_token and cls.prefix_tokens(config) == 0:
            if selection.significance is not None:  # a method defined on the CLS token's attention
                accepted = [name for name in STRATEGIES.names() if STRATEGIES.get(name).significance is None]
                raise PruningConfigError(
                    f"{who}: strategy={pruning.strategy} ranks tokens by the CLS token's attention, and "
                    f"{cls.label}'s vision tower has no CLS token; accepted values here: {', '.join(accepted)}"
                )
            raise PruningConfigError(
                f"{who}: significance={pruning.significance} scores the CLS token's attention, and {cls.label}'s "
                "vision tower has no CLS token; accepted values here: "
                f"{', '.join(n for n in SCORERS.names() if not SCORERS.get(n).needs_prefix_token)}"
            )
        if missing := [name for name in selection.reads if name != "features" and name not in cls.tower_reads]:
            raise PruningConfigError(
                f"{who}: strategy={pruning.strategy} reads the tower's {', '.join(missing)}, which {cls.label} "
                "does not give here"
            )
        if pruning.in_llm:
            if selection.reads:
                raise PruningConfigError(
                    f"{who}: strategy={pruning.strategy} runs inside the LLM, where a view has only its attention "
                    f"row; it cannot read {', '.join(selection.reads)}"
                )
            text = config.text_config
            first, last = cls.first_llm_stage_layer(config), text.num_hidden_layers - 1
            layer = pruning.option_values["llm_layer"]
            if not first <= layer <= last:
                raise PruningConfigError(
                    f"{who}: llm_layer={layer} is out of range for this checkpoint; accepted values: {first} <= "
                    f"llm_layer <= {last}" + cls.llm_stage_floor_reason(config)
                )

    @classmethod
    def first_llm_stage_layer(cls, config: PretrainedConfig) -> int:
        """The lowest ``llm_layer`` an in-LLM strategy may drop tokens after (layer ``llm_layer`` - 1's attention
        scores them)."""
        return 1

    @classmethod
    def llm_stage_floor_reason(cls, config: PretrainedConfig) -> str:
        """Why ``first_llm_stage_layer`` is what it is, where a family raises it."""
        return ""

    @classmethod
    def check_config(cls, config: PretrainedConfig, checkpoint: str, who: str) -> None:
        """Family-specific checks, e.g. that the vision tower can give FoPru its map; ``checkpoint`` names it."""

    @classmethod
    def view_tokens(cls, config: PretrainedConfig) -> int | None:
        """Visual tokens of one view, where every view has the same (LLaVA-1.5's 576); None where it varies."""
        return None

    @classmethod
    def prefix_tokens(cls, config: PretrainedConfig) -> int:
        """How many tokens before the patches the hooked layer sees (CLIP's CLS token: 1)."""
        return 0

    @classmethod
    def load(
        cls,
        pretrained: str,
        processor_kwargs: dict[str, Any] | None = None,
        family_kwargs: dict[str, Any] | None = None,
        **model_kwargs: Any,
    ) -> Family:
        """The model in eval mode (``model_kwargs`` go to its ``from_pretrained``) and its processor, bound to the
        family (``family_kwargs`` go to its constructor)."""
        model = cls.model_class.from_pretrained(pretrained, **model_kwargs).eval()
        hub = {key: model_kwargs[key] for key in ("revision", "trust_remote_code") if key in model_kwargs}
        processor = AutoProcessor.from_pretrained(pretrained, **hub, **(processor_kwargs or {}))
        return cls(model, processor, **(family_kwargs or {}))

    @property
    def device(self) -> torch.device:
        return self.model.device

    # ----- what a family provides ----------------------------------------------------------------------------------

    def prepare_image(self, image: Image.Image) -> Image.Image:
        """Any resize the family's own pipeline does before its processor (Qwen: qwen-vl-utils)."""
        return image

    def significance_capture(self, scorer: Scorer | str, timed: bool = False) -> Any:
        """A context manager that captures the significance of every image the tower sees while it is active."""
        raise NotImplementedError

    def encode_images(
        self, encoded: dict[str, Any], scorer: Scorer | None, reads: frozenset[str] = frozenset()
    ) -> EncodedImages:
        """Run the tower on the processor's output; with a scorer, under the significance capture; ``reads``: which
        of ``tower_reads`` to give as well."""
        raise NotImplementedError

    def project(self, tower_features: torch.Tensor) -> torch.Tensor:
        """(tokens, width): the projector over tower features (merged ones), where ``tower_features`` is read."""
        raise NotImplementedError(f"{self.label} has no separate projector to merge tower features through")

    # ----- videos, for the families that read them -----------------------------------------------------------------

    # Whether this family reads videos: ``encode_videos``, ``video_flops`` and ``video_encoder_outputs`` are defined.
    has_video: ClassVar[bool] = False

    def video_processor_kwargs(self) -> dict[str, Any]:
        """Processor arguments for a batch with videos (e.g. that the frames are already sampled)."""
        return {}

    def encode_videos(self, encoded: dict[str, Any], scorer: Scorer | None) -> EncodedImages:
        """The processor's videos through the tower, one entry per video: its packed LLM tokens' features, a layout
        with one view per frame (per temporal patch where frames are merged) and its significance."""
        raise NotImplementedError

    def video_flops(self, encoded: dict[str, Any], video_index: int) -> int:
        """The vision side's FLOPs for one video of the processor's output ``encoded``, over every frame."""
        raise NotImplementedError

    def video_encoder_outputs(
        self, features: list[torch.Tensor], extra_features: list[list[torch.Tensor]]
    ) -> BaseModelOutputWithPooling:
        """The kept features of a batch's videos as the model takes them in ``mm_encoder_outputs["video"]``."""
        return self.encoder_outputs(features, extra_features)

    def unpruned_positions(
        self, ids: torch.Tensor, encoded: dict[str, Any], image_indices: range, video_indices: range = range(0)
    ) -> torch.Tensor:
        """(..., length) position of every token of one unpadded sequence in the unpruned model; the sequence shows
        the batch's images ``image_indices`` and videos ``video_indices``."""
        return torch.arange(ids.numel())

    def position_ids(self, kept_positions: list[torch.Tensor], config: PruningConfig) -> torch.Tensor | None:
        """``position_ids`` for the left-padded pruned batch, or None to let the model number the tokens itself."""
        return None

    def extra_features(self, output: Any) -> list[list[torch.Tensor]]:
        """Per image, the further features (``EncodedImages.extra_features``) in the output of the model's
        ``get_image_features``; none for most families."""
        return []

    def encoder_outputs(
        self, features: list[torch.Tensor], extra_features: list[list[torch.Tensor]]
    ) -> BaseModelOutputWithPooling:
        """The kept features of a batch's images as the model takes them in ``mm_encoder_outputs["image"]``;
        ``extra_features`` per image as in ``EncodedImages``."""
        return BaseModelOutputWithPooling(pooler_output=features)

    # ----- shared by the families ----------------------------------------------------------------------------------

    def run_tower(self, forward: Any, scorer: Scorer | None) -> tuple[Any, list[torch.Tensor] | None]:
        """``forward()``, under the significance capture when there is a scorer; its output and the significance of
        each tower image (or view) in order."""
        with self.significance_capture(scorer) if scorer is not None else nullcontext() as capture:
            output = forward()
        return output, list(capture.significance) if scorer is not None else None

    def tower_inputs(self, encoded: dict[str, Any], *names: str) -> dict[str, Any]:
        """The processor's pixels (in the model's dtype) and ``names``, on the model's device."""
        inputs = {"pixel_values": encoded["pixel_values"].to(self.device, self.model.dtype)}
        return inputs | {name: encoded[name].to(self.device) for name in names}

    def ideal_inputs(self, prompts: list[Prompt], image_tokens: list[int]) -> dict[str, Any]:
        """The "ideal" a pruned run is held to: the same model given only as many image tokens as were kept
        (``image_tokens`` per prompt, each showing one image), with no pruning machinery: the processor's own
        tokenization with the placeholder repeated, and the first features the model's own tower gives."""
        token = self.processor.image_token
        counts = zip(prompts, image_tokens, strict=True)
        texts = [prompt.render(self.processor).replace(token, token * count) for prompt, count in counts]
        tokenized = self.processor.tokenizer(texts, padding=True, padding_side="left", return_tensors="pt")
        inputs = {name: tensor.to(self.device) for name, tensor in tokenized.items()}
        images = [self.prepare_image(image) for p in prompts for image in p.images]
        encoded = self.processor.image_processor(images, return_tensors="pt")
        names = [name for name in ("image_sizes", "image_grid_thw") if name in encoded]
        output = self.model.get_image_features(**self.tower_inputs(encoded, *names))
        kept = [image[:count] for image, count in zip(output.pooler_output, image_tokens, strict=True)]
        extra = self.extra_features(output)
        if extra:  # the same first tokens of every further stream
            extra = [[stream[:count] for stream in image] for image, count in zip(extra, image_tokens, strict=True)]
        inputs["mm_encoder_outputs"] = {"image": self.encoder_outputs(kept, extra)}
        return inputs
