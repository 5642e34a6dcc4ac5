"""The one driver that prunes a batch for every family.

    prompts -> processor -> vision tower (significance captured by the config's scorer) -> per image, per view:
    the config's strategy selects -> the layout keeps row markers -> placeholders of pruned tokens dropped from
    ``input_ids`` -> the HF model runs on the kept features, passed as ``mm_encoder_outputs``, so its own embedding
    merge and generation loop stay untouched.

A video (families with ``has_video``) goes the same way as an image whose views are its frames: the family's
``encode_videos`` gives its features, layout and significance, each frame is selected with the per-view budget, the
``video`` placeholders of pruned tokens are dropped and the kept features go in as ``mm_encoder_outputs["video"]``.
A video read from a file carries the processor's ``video_metadata`` (``Prompt.video_metadata``), passed only for
batches with videos.

A strategy may read more than scores (``Strategy.reads``: the features the LLM receives, the tower's features, the
scored layer's keys) and may merge (``Merge``): a merged token's features are mixed from the tower's features and
projected again where the family has a separate projector (``Family.project``), else mixed from the LLM's features.
A strategy of the ``llm`` stage (FastV) selects nothing here: the batch goes in whole, with an ``LLMStage``
(``llm_stage.py``) that drops the tokens inside the LLM; the per-sample counts are filled in once it has.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from functools import partial
from typing import Any, NamedTuple

import torch

from fopru_eval.core.config import PruningConfig
from fopru_eval.core.layout import ImageLayout, View
from fopru_eval.core.sequence import kept_token_mask, left_pad, placeholder_runs, unpad
from fopru_eval.core.strategies import Selection, apply_strategy
from fopru_eval.families.base import EncodedImages, Family, Prompt, PrunedBatch
from fopru_eval.families.llm_stage import LLMStage, VisualSpan

# What goes before the LLM when the strategy selects inside it.
KEEP_ALL = PruningConfig("none")


def prune_batch(
    family: Family, config: PruningConfig, prompts: list[Prompt], continuations: list[list[int]] | None = None
) -> PrunedBatch:
    """Processor, vision tower, significance, selection: the pruned model inputs of one batch of prompts.

    With ``continuations``, each one's token ids follow its prompt (for loglikelihood), after the assistant turn opens.
    Every image gets its own significance and its own selection, view by view; random draws are seeded per doc,
    image and view, so they do not depend on batch composition or rank. A video is selected the same way, frame by
    frame (its views), with the budget per frame.
    """
    # What the adapter checks before weights load, again for a config swapped in on a loaded model (sweep, bench).
    type(family).check_pruning(family.model.config, config, family.label)
    processor = family.processor
    texts = [prompt.render(processor) for prompt in prompts]
    images = [family.prepare_image(image) for p in prompts for image in p.images]
    videos = [video for p in prompts for video in p.videos]
    if videos and not family.has_video:
        raise ValueError(f"{family.label} ({type(family).__name__}) does not read videos here; only images")
    # Only a batch with videos passes any video argument, so an image batch reaches the processor exactly as before.
    media = {"videos": videos, **family.video_processor_kwargs()} if videos else {}
    if metadata := video_metadata(prompts):
        media["video_metadata"] = metadata
    encoded = processor(images=images or None, text=texts, padding=True, return_tensors="pt", **media)
    rows = unpad(encoded["input_ids"], encoded["attention_mask"])
    for i, continuation in enumerate(continuations or []):
        rows[i] = torch.cat([rows[i], torch.tensor(continuation, dtype=rows[i].dtype)])
    scorer = config.scorer if config.needs_scores else None
    vision = family.encode_images(encoded, scorer, tower_reads(family, config)) if images else None
    video_vision = family.encode_videos(encoded, scorer) if videos else None
    selecting = KEEP_ALL if config.in_llm else config
    placeholders: list[list[Placeholders]] = []  # per prompt, for an in-LLM strategy

    kept_features: list[torch.Tensor] = []
    kept_extra_features: list[list[torch.Tensor]] = []
    kept_video_features: list[torch.Tensor] = []
    kept_video_extra_features: list[list[torch.Tensor]] = []
    kept_positions: list[torch.Tensor] = []
    counts: dict[str, list[int]] = {
        name: [] for name in ("kept", "total", "markers_kept", "markers_total", "vision_flops", "prefill_flops")
    }
    first_image = first_video = 0
    for i, prompt in enumerate(prompts):
        image_indices = range(first_image, first_image + len(prompt.images))
        first_image = image_indices.stop
        video_indices = range(first_video, first_video + len(prompt.videos))
        first_video = video_indices.stop
        kept, layouts, markers = keep_each(
            selecting, family, vision, image_indices, prompt.doc_key, kept_features, kept_extra_features
        )
        image_token = family.model.config.image_token_id
        placeholders.append([Placeholders(layout, image_token, prompt.doc_key, j) for j, layout in enumerate(layouts)])
        sizes = [layout.num_packed_tokens for layout in layouts]
        keep = kept_token_mask(rows[i], family.model.config.image_token_id, kept, sizes)
        if video_indices:
            # Videos draw apart from images: the doc's video 0 is not its image 0.
            video_kept, video_layouts, video_markers = keep_each(
                selecting,
                family,
                video_vision,
                video_indices,
                f"{prompt.doc_key}/video",
                kept_video_features,
                kept_video_extra_features,
            )
            video_sizes = [layout.num_packed_tokens for layout in video_layouts]
            keep &= kept_token_mask(rows[i], family.model.config.video_token_id, video_kept, video_sizes)
            video_token, video_key = family.model.config.video_token_id, f"{prompt.doc_key}/video"
            placeholders[-1] += [
                Placeholders(layout, video_token, video_key, j) for j, layout in enumerate(video_layouts)
            ]
            kept, layouts, markers = kept + video_kept, layouts + video_layouts, markers + video_markers
        kept_positions.append(family.unpruned_positions(rows[i], encoded, image_indices, video_indices)[..., keep])
        rows[i] = rows[i][keep]
        counts["kept"].append(sum(positions.numel() for positions in kept) - markers)
        counts["total"].append(sum(layout.num_visual_tokens for layout in layouts))
        counts["markers_kept"].append(markers)
        counts["markers_total"].append(sum(layout.num_markers for layout in layouts))
        image_flops = sum(family.image_flops(encoded, image_index) for image_index in image_indices)
        image_flops += sum(family.video_flops(encoded, video_index) for video_index in video_indices)
        counts["vision_flops"].append(image_flops)
        counts["prefill_flops"].append(image_flops + family.llm_flops(rows[i].numel()))

    input_ids, attention_mask = left_pad(rows, processor.tokenizer.pad_token_id)
    inputs: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention_mask}
    position_ids = family.position_ids(kept_positions, config)
    if position_ids is not None:
        inputs["position_ids"] = position_ids
    inputs = {name: tensor.to(family.device) for name, tensor in inputs.items()}
    if kept_features:
        inputs["mm_encoder_outputs"] = {"image": family.encoder_outputs(kept_features, kept_extra_features)}
    if kept_video_features:
        video_outputs = family.video_encoder_outputs(kept_video_features, kept_video_extra_features)
        inputs["mm_encoder_outputs"] = inputs.get("mm_encoder_outputs", {}) | {"video": video_outputs}
    stage = None
    if config.in_llm:
        depth, keep = config.option_values["llm_layer"], partial(keep_span, config)
        spans = visual_spans(input_ids, placeholders)
        stage = LLMStage(family.decoder_layers(), depth, spans, attention_mask, keep)
        stage.on_selected = partial(count_in_llm, family, stage, counts, [row.numel() for row in rows])
    return PrunedBatch(
        inputs=inputs,
        visual_tokens_kept=counts["kept"],
        visual_tokens_total=counts["total"],
        input_tokens=[row.numel() for row in rows],
        newline_tokens_kept=counts["markers_kept"] if family.has_newlines else None,
        newline_tokens_total=counts["markers_total"] if family.has_newlines else None,
        prefill_flops=counts["prefill_flops"],
        llm_stage=stage,
    )


def tower_reads(family: Family, config: PruningConfig) -> frozenset[str]:
    """What the tower must give beside scores: what the strategy reads of it, and its features where it merges."""
    selection = config.selection
    if config.in_llm:
        return frozenset()
    reads = set(selection.reads) - {"features"}
    if selection.merges and "tower_features" in family.tower_reads:
        reads.add("tower_features")
    return frozenset(reads)


class Placeholders(NamedTuple):
    """One image's (or video's) placeholders in a prompt, before their positions in the padded batch are known."""

    layout: ImageLayout
    token_id: int
    doc_key: str  # with ``index``, what seeds its random draws
    index: int


def visual_spans(input_ids: torch.Tensor, placeholders: list[list[Placeholders]]) -> list[list[VisualSpan]]:
    """Each row's images and videos as ``VisualSpan``s of the left-padded ``input_ids``: the positions of each token
    id's placeholders, in order, split by the layouts' sizes."""
    rows = []
    for ids, row in zip(input_ids.cpu(), placeholders, strict=True):
        spans: list[VisualSpan] = []
        for token_id in dict.fromkeys(item.token_id for item in row):
            items = [item for item in row if item.token_id == token_id]
            pieces = placeholder_runs(ids, token_id, [item.layout.num_packed_tokens for item in items])
            for item, piece in zip(items, pieces, strict=True):
                spans.append(VisualSpan(item.layout, piece, item.doc_key, item.index))
        rows.append(spans)
    return rows


def count_in_llm(family: Family, stage: LLMStage, counts: dict[str, list[int]], input_tokens: list[int]) -> None:
    """Once the LLM stage has selected: each sample's kept visual tokens and markers, and its prefill FLOPs with the
    layers from ``llm_layer`` on over the shorter sequence."""
    for i, tokens in enumerate(input_tokens):
        counts["kept"][i] = stage.visual_tokens_kept[i]
        counts["markers_kept"][i] = stage.markers_kept[i]
        shortened = (stage.depth, stage.tokens_after[i])
        counts["prefill_flops"][i] = counts["vision_flops"][i] + family.llm_flops(tokens, shortened=shortened)


def keep_each(
    config: PruningConfig,
    family: Family,
    vision: EncodedImages | None,
    indices: range,
    doc_key: str,
    kept_features: list[torch.Tensor],
    kept_extra_features: list[list[torch.Tensor]],
) -> tuple[list[torch.Tensor], list[ImageLayout], int]:
    """Selection for one prompt's images (or videos) ``indices`` of ``vision``: appends their kept features to
    ``kept_features`` and ``kept_extra_features``; returns each one's kept packed positions, the layouts, and how
    many of the kept positions are markers."""
    kept, layouts, markers = [], [], 0
    for local_index, index in enumerate(indices):
        layout = vision.layouts[index]
        scores = vision.scores[index] if vision.scores is not None else None
        inputs_of = partial(view_inputs, vision, index)
        selections = select_views(config, layout, scores, doc_key, local_index, inputs_of)
        positions, image_markers = layout.kept_positions(*(selection.kept for selection in selections))
        features = merged_features(family, vision, index, layout, selections)
        on_device = positions.to(features.device)
        kept_features.append(features[on_device])
        if vision.extra_features:
            kept_extra_features.append([stream[on_device] for stream in vision.extra_features[index]])
        kept.append(positions)
        layouts.append(layout)
        markers += image_markers
    return kept, layouts, markers


def select_views(
    config: PruningConfig,
    layout: ImageLayout,
    scores: torch.Tensor | None,
    doc_key: str,
    image_index: int,
    inputs_of: Callable[[View], dict[str, torch.Tensor]] | None = None,
    by_position: bool = False,
) -> list[Selection]:
    """Each view's selection; ``scores`` are indexed by the views' sources (a tower's significance), or by their
    packed positions (``by_position``: the LLM's attention); ``inputs_of(view)`` gives what the strategy reads."""
    selections = []
    for view_index, view in enumerate(layout.views):
        # View v of the doc's image i draws as "image" i * views + v: LLaVA-1.5's image i is i.
        seed = random_seed_for(config.seed, doc_key, image_index * len(layout.views) + view_index)
        index = view.positions if by_position else view.sources
        view_scores = scores[index.to(scores.device)] if scores is not None else None
        inputs = inputs_of(view) if inputs_of is not None and config.selection.reads else None
        generator = torch.Generator().manual_seed(seed)
        options = config.option_values
        selections.append(
            apply_strategy(config.selection, config.budget, view.grid, view_scores, generator, inputs, options)
        )
    return selections


def keep_image(
    config: PruningConfig,
    layout: ImageLayout,
    scores: torch.Tensor | None,
    doc_key: str,
    image_index: int,
    inputs_of: Callable[[View], dict[str, torch.Tensor]] | None = None,
    by_position: bool = False,
) -> tuple[torch.Tensor, int]:
    """The packed positions of one image that survive, and how many of them are row markers (``select_views``)."""
    selections = select_views(config, layout, scores, doc_key, image_index, inputs_of, by_position)
    return layout.kept_positions(*(selection.kept for selection in selections))


def keep_span(config: PruningConfig, span: VisualSpan, scores: torch.Tensor) -> tuple[torch.Tensor, int]:
    """For the LLM stage: the packed positions of one image that survive, given each packed token's score (the
    attention it receives in the LLM), and how many of them are markers."""
    return keep_image(config, span.layout, scores, span.doc_key, span.image_index, by_position=True)


def view_inputs(vision: EncodedImages, index: int, view: View) -> dict[str, torch.Tensor]:
    """What a strategy may read of one view of image ``index``, each per token of the view in raster order."""
    inputs = {"features": vision.features[index][view.positions.to(vision.features[index].device)]}
    for name, stream in (("tower_features", vision.tower_features), ("keys", vision.keys)):
        if stream is not None:
            inputs[name] = stream[index][view.sources.to(stream[index].device)]
    return inputs


def merged_features(
    family: Family, vision: EncodedImages, index: int, layout: ImageLayout, selections: list[Selection]
) -> torch.Tensor:
    """Image ``index``'s packed features with each merged token's features mixed by its selection's weights: from the
    tower's features, then projected, where the family has them, else from the features the LLM receives."""
    features = vision.features[index]
    if all(selection.weights is None for selection in selections):
        return features
    if vision.extra_features:
        raise ValueError(f"{family.label}: merging tokens is not supported; its LLM reads further features per token")
    features = features.clone()
    for view, selection in zip(layout.views, selections, strict=True):
        if selection.weights is None:
            continue
        if vision.tower_features is not None:
            tower = vision.tower_features[index][view.sources.to(vision.tower_features[index].device)]
            mixed = family.project((selection.weights.to(tower.device).float() @ tower.float()).to(tower.dtype))
        else:
            source = features[view.positions.to(features.device)]
            mixed = selection.weights.to(source.device).float() @ source.float()
        features[view.positions[selection.kept].to(features.device)] = mixed.to(features.dtype)
    return features


def video_metadata(prompts: list[Prompt]) -> list[dict[str, Any]] | None:
    """The processor's ``video_metadata`` for a batch's videos: each prompt's own, or None where no prompt knows any
    (the processor then assumes its defaults). A video without metadata beside one with gets those defaults: its
    frames numbered from 0, fps unknown."""
    known = [
        prompt.video_metadata[i] if i < len(prompt.video_metadata) else None
        for prompt in prompts
        for i in range(len(prompt.videos))
    ]
    if all(metadata is None for metadata in known):
        return None
    videos = [video for prompt in prompts for video in prompt.videos]
    return [
        metadata or {"total_num_frames": len(video), "fps": None, "frames_indices": list(range(len(video)))}
        for video, metadata in zip(videos, known, strict=True)
    ]


def random_seed_for(seed: int, doc_key: str, image_index: int) -> int:
    """A per-image seed that depends only on the doc, so random selection is the same at any batch size or rank."""
    return zlib.crc32(f"{seed}/{doc_key}/{image_index}".encode())
