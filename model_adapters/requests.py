"""lmms-eval requests in, prompts and per-sample token counts out: what every FoPru adapter shares with lmms-eval."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lmms_eval.api.instance import GenerationResult, Instance, TokenCounts
from lmms_eval.protocol import ChatMessages
from PIL import Image

from fopru_eval.families import Prompt, PrunedBatch
from fopru_model_adapters.video import VideoFrames


@dataclass
class VisualTokenCounts(TokenCounts):
    """lmms-eval's per-sample token counts plus the visual tokens the LLM kept, summed over the sample's images, and
    the estimated prefill FLOPs (``fopru_eval/core/flops.py``)."""

    visual_tokens_kept: int | None = None
    visual_tokens_total: int | None = None
    prefill_flops: int | None = None

    def to_dict(self) -> dict[str, int | None]:
        counts = super().to_dict()
        counts["visual_tokens_kept"] = self.visual_tokens_kept
        counts["visual_tokens_total"] = self.visual_tokens_total
        counts["prefill_flops"] = self.prefill_flops
        return counts


@dataclass
class NewlineTokenCounts(VisualTokenCounts):
    """Per-sample counts plus the ``image_newline`` tokens the LLM kept (LLaVA-NeXT), summed over the sample's
    images."""

    newline_tokens_kept: int | None = None
    newline_tokens_total: int | None = None

    def to_dict(self) -> dict[str, int | None]:
        counts = super().to_dict()
        counts["newline_tokens_kept"] = self.newline_tokens_kept
        counts["newline_tokens_total"] = self.newline_tokens_total
        return counts


@dataclass
class PreparedBatch(PrunedBatch):
    """A pruned batch that reports each sample's counts the way lmms-eval stores them."""

    def token_counts(self, i: int, output_tokens: int | None = None) -> VisualTokenCounts:
        counts: dict[str, Any] = {
            "input_tokens": self.input_tokens[i],
            "output_tokens": output_tokens,
            "visual_tokens_kept": self.visual_tokens_kept[i],
            "visual_tokens_total": self.visual_tokens_total[i],
            "prefill_flops": self.prefill_flops[i] if self.prefill_flops is not None else None,
        }
        if self.newline_tokens_kept is None:
            return VisualTokenCounts(**counts)
        return NewlineTokenCounts(
            **counts,
            newline_tokens_kept=self.newline_tokens_kept[i],
            newline_tokens_total=self.newline_tokens_total[i],
        )


class VisualTokenLedger:
    """Each request's visual tokens kept and in all, and its prefill FLOPs, during one evaluation, for lmms-eval's
    ``throughput`` block.

    lmms-eval averages what adapters log per batch, over batches and on rank 0 alone; so instead the counts are kept
    per request (a request counted once; the padding requests that even out uneven ranks left out), gathered over all
    processes once every request has run, and summed. Text-only requests (no image) are left out of the visual-token
    averages, not of the FLOPs.
    """

    def __init__(self) -> None:
        self.counts: dict[tuple[str, int, int], tuple[int, int, int | None]] = {}

    def record(self, requests: list[Instance], results: list[GenerationResult]) -> None:
        for request, result in zip(requests, results, strict=True):
            counts = result.token_counts
            if (request.metadata or {}).get("__padding_only__") or not isinstance(counts, VisualTokenCounts):
                continue
            key = (request.task_name, request.doc_id, request.idx)
            self.counts[key] = (counts.visual_tokens_kept, counts.visual_tokens_total, counts.prefill_flops)

    def gathered_metrics(self) -> dict[str, float]:
        """Means over every process's requests (those with images, for the visual tokens); call on every process (it
        gathers)."""
        import torch.distributed as dist

        parts = [self.counts]
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            parts = [None] * dist.get_world_size()
            dist.all_gather_object(parts, self.counts)
        merged = {key: counts for part in parts for key, counts in part.items()}
        metrics: dict[str, float] = {}
        flops = [counts[2] for counts in merged.values() if counts[2] is not None]
        if flops:
            metrics["prefill_flops"] = sum(flops) / len(flops)
        with_images = [counts for counts in merged.values() if counts[1] > 0]
        if with_images:
            kept, total = sum(c[0] for c in with_images), sum(c[1] for c in with_images)
            metrics["visual_tokens_kept"] = kept / len(with_images)
            metrics["visual_tokens_total"] = total / len(with_images)
            metrics["visual_keep_fraction"] = kept / total
        return metrics


def add_counts(total: TokenCounts | None, counts: TokenCounts | None) -> TokenCounts | None:
    """Field-wise sum of two rounds' counts (of the same class); a field missing in both stays missing."""
    if total is None or counts is None:
        return counts if total is None else total
    summed = {}
    for field in dataclasses.fields(total):
        mine, theirs = getattr(total, field.name), getattr(counts, field.name)
        summed[field.name] = None if mine is None and theirs is None else (mine or 0) + (theirs or 0)
    return type(total)(**summed)


class LoglikelihoodAnswer(tuple):
    """``(loss, is_greedy)``, the answer to one loglikelihood request, as lmms-eval's multiple-choice scorer unpacks it.

    lmms-eval's response cache (``--use_cache``) keeps only a result's text and would hand a cached answer back as the
    string of a list, which no scorer can read; it skips a result whose ``text.strip()`` is empty. So this answer
    strips to nothing: the cache never stores it, every run scores afresh, and a cached rerun gives the same results
    (generation answers are cached as usual)."""

    def __new__(cls, loss: float, is_greedy: bool) -> LoglikelihoodAnswer:
        return super().__new__(cls, (loss, is_greedy))

    def strip(self) -> str:
        return ""


# ----- requests -> prompts -------------------------------------------------------------------------------------------


# Reads one video file into the stack of frames a family's processor takes, as lmms-eval's adapter for the family reads
# it, or into ``VideoFrames`` where the processor also takes the video's metadata; None where the adapter reads no
# videos.
VideoReader = Callable[[str], Any]


def read_videos(paths: list[Any], read_video: VideoReader) -> tuple[list[Any], list[dict[str, Any] | None]]:
    """Each video's frames, and its metadata (None where the reader gives frames alone)."""
    read = [read_video(path) for path in paths]
    frames = [video.frames if isinstance(video, VideoFrames) else video for video in read]
    return frames, [video.metadata if isinstance(video, VideoFrames) else None for video in read]


def prompt_from_visuals(
    ctx: str,
    visuals: list[Any],
    model_name: str,
    task: str,
    split: str,
    doc_id: int,
    read_video: VideoReader | None = None,
) -> Prompt:
    """A simple-model request: the user turn built the way lmms-eval's chat tasks build it (videos, images, then the
    text). lmms-eval's video tasks give each video as a file path; without ``read_video`` a path is refused as any
    visual that is not an image."""
    reads_videos = read_video is not None
    paths = [visual for visual in visuals if reads_videos and isinstance(visual, str)]
    videos, metadata = read_videos(paths, read_video) if paths else ([], [])
    others = [visual for visual in visuals if not (reads_videos and isinstance(visual, str))]
    images = as_images(others, model_name, task, doc_id)
    content = [{"type": "video"} for _ in videos] + [{"type": "image", "url": image} for image in images]
    content.append({"type": "text", "text": ctx})
    messages = [{"role": "user", "content": content}]
    return Prompt(messages, images, f"{task}/{split}/{doc_id}", videos=videos, video_metadata=metadata)


def prompt_from_messages(
    messages: Any, model_name: str, task: str, split: str, doc_id: int, read_video: VideoReader | None = None
) -> Prompt:
    """A chat-model request: lmms-eval's messages, validated by its own protocol class."""
    chat = ChatMessages(messages=messages)
    images, videos, audios = chat.extract_media()
    if audios or (videos and read_video is None):
        raise ValueError(f"{model_name}: {task} doc {doc_id} has video or audio input; only images are supported")
    videos, metadata = read_videos(videos, read_video) if videos else ([], [])
    images = as_images(images, model_name, task, doc_id)
    doc_key = f"{task}/{split}/{doc_id}"
    return Prompt(chat.model_dump()["messages"], images, doc_key, videos=videos, video_metadata=metadata)


def as_images(visuals: list[Any], model_name: str, task: str, doc_id: int) -> list[Image.Image]:
    images = []
    for visual in visuals:
        if not isinstance(visual, Image.Image):
            raise TypeError(
                f"{model_name}: {task} doc {doc_id} gives a {type(visual).__name__}; only PIL images are supported"
            )
        images.append(visual)  # converted to RGB as the family's own processing does (the adapter's image_as_sent)
    return images


def prompt_size(prompt: Prompt) -> int:
    """How long a prompt is, for sorting a batch so that padding stays small."""
    text = 0
    for message in prompt.messages:
        content = message.get("content", [])
        parts = [{"type": "text", "text": content}] if isinstance(content, str) else content
        text += sum(len(part.get("text", "")) for part in parts)
    return text + 10_000 * (len(prompt.images) + len(prompt.videos))
