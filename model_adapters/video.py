"""Video files to frames, as lmms-eval's own adapters read them before the processor.

lmms-eval's ``llava_hf`` (``load_video``) reads a video with decord and keeps ``max_frames_num`` frames spaced evenly
over it: indices ``np.linspace(0, total - 1, max_frames_num, dtype=int)``, as (frames, height, width, 3) uint8 RGB.
decord is an optional extra here; without it, PyAV (a transformers video backend) decodes the same stream. Both decode
with FFmpeg, but their frame counts can differ on files whose container misreports it, and then so do the indices.
"""

from __future__ import annotations

import importlib.util

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

    with av.open(path) as container:
        total = sum(1 for _ in container.decode(video=0))
    wanted = uniform_frame_indices(total, count)
    kept = set(wanted)
    frames: dict[int, np.ndarray] = {}
    # A second pass keeps only the wanted frames, so a long video never sits in memory whole.
    with av.open(path) as container:
        for index, frame in enumerate(container.decode(video=0)):
            if index in kept:
                frames[index] = frame.to_ndarray(format="rgb24")
    return np.stack([frames[index] for index in wanted])
