"""Video files to frames, as lmms-eval's own adapters read them before the processor.

lmms-eval's ``llava_hf`` (``load_video``) reads a video with decord and keeps ``max_frames_num`` frames spaced evenly
over it: indices ``np.linspace(0, total - 1, max_frames_num, dtype=int)``, as (frames, height, width, 3) uint8 RGB.
decord is an optional extra here; without it, PyAV (a transformers video backend) decodes the same stream. Both decode
with FFmpeg, but their frame counts can differ on files whose container misreports it, and then so do the indices.

lmms-eval's ``qwen3_vl`` reads a video with qwen-vl-utils (``read_qwen_vl_video``): its sampling, its resize, and the
metadata its processor needs besides the frames.
"""

from __future__ import annotations

import importlib.util
from typing import Any, NamedTuple

import numpy as np


def uniform_frame_indices(total: int, count: int) -> list[int]:
    """``llava_hf``'s choice of ``count`` frames among ``total`` (repeats when the video is shorter)."""
    return np.linspace(0, total - 1, count, dtype=int).tolist()


def read_uniform_frames(path: str, count: int) -> np.ndarray:
    """(count, height, width, 3) uint8 RGB frames of the video at ``path``, spaced as ``llava_hf`` spaces them."""
    if importlib.util.find_spec("decord") is not None:
        import decord

        reader = decord.VideoReader(path, ctx=decord.cpu(0))
        return reader.get_batch(uniform_frame_indices(len(reader), count)).asnumpy()
    if importlib.util.find_spec("av") is None:
        raise ImportError(f"reading the video {path} needs decord (as lmms-eval's llava_hf) or PyAV; neither is here")
    import av

    wanted = uniform_frame_indices(frame_count(path), count)  # PyAV's count here: decord is not installed
    kept = set(wanted)
    frames: dict[int, np.ndarray] = {}
    # A second pass keeps only the wanted frames, so a long video never sits in memory whole.
    with av.open(path) as container:
        for index, frame in enumerate(container.decode(video=0)):
            if index in kept:
                frames[index] = frame.to_ndarray(format="rgb24")
    return np.stack([frames[index] for index in wanted])


class VideoFrames(NamedTuple):
    """A video as a reader hands it on when the processor needs more than its frames: the frames, as the family's
    processor takes them, and their ``video_metadata`` (source fps, the sampled frames' indices, the frame count)."""

    frames: Any
    metadata: dict[str, Any] | None


def frame_count(path: str) -> int:
    """How many frames the video at ``path`` holds, as decord counts them (PyAV, decoding every frame, without it)."""
    if importlib.util.find_spec("decord") is not None:
        import decord

        return len(decord.VideoReader(path))
    import av

    with av.open(path) as container:
        return sum(1 for _ in container.decode(video=0))


def read_qwen_vl_video(path: str, video_kwargs: dict[str, Any], image_patch_size: int) -> VideoFrames:
    """The video at ``path`` as lmms-eval's ``qwen3_vl`` hands it to its processor: one video item of the user turn
    with its video kwargs (``nframes``, or ``fps`` / ``max_frames``, and pixel limits) through qwen-vl-utils'
    ``process_vision_info``, which samples the frames, resizes them to multiples of ``2 * image_patch_size`` pixels
    and gives (frames, 3, height, width) float tensors and the metadata Qwen3-VL's processor writes timestamps from.

    ``nframes`` is capped at the video's frame count (decord's), as lmms-eval's simple qwen3_vl caps it; its chat class
    does not, and there qwen-vl-utils refuses a video shorter than ``nframes``. qwen-vl-utils rounds ``nframes`` to an
    even number (half to even), which for a cap of 3, 7, 11, ... frames is one frame more than the video holds, and
    refuses that too: here the cap is then the even count below, so every video of 2 frames or more is read."""
    from qwen_vl_utils import process_vision_info

    item = {"type": "video", "video": path, **video_kwargs}
    if "nframes" in item:
        total = frame_count(path)
        item["nframes"] = min(item["nframes"], total)
        if round(item["nframes"] / 2) * 2 > total:  # qwen-vl-utils' rounding (round_by_factor) would overshoot
            item["nframes"] = total - 1
    _, videos, _ = process_vision_info(
        [[{"role": "user", "content": [item]}]],
        return_video_kwargs=True,
        image_patch_size=image_patch_size,
        return_video_metadata=True,
    )
    ((frames, metadata),) = videos
    return VideoFrames(frames, metadata)
