"""The models the benchmark builds: per adapter, its random checkpoints, its sizes, and lmms-eval's own adapter for
the family. Everything about the architecture comes from the adapter's family (``fopru_eval/families/``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from fopru_eval.families import Family
from fopru_eval.tools.checkpoints.full_size import full_size_config, save_random_full_size
from fopru_eval.tools.checkpoints.llava import MID, TINY, save_random_llava
from fopru_eval.tools.checkpoints.llava_next import save_random_llava_next
from fopru_eval.tools.checkpoints.llava_onevision import save_random_llava_onevision
from fopru_eval.tools.checkpoints.qwen3_vl import MID as QWEN3_MID
from fopru_eval.tools.checkpoints.qwen3_vl import TINY as QWEN3_TINY
from fopru_eval.tools.checkpoints.qwen3_vl import save_random_qwen3_vl
from fopru_eval.tools.checkpoints.qwen_vl import TINY as QWEN_TINY
from fopru_eval.tools.checkpoints.qwen_vl import QwenVLSize, save_random_qwen_vl

# A Qwen-VL on the scale of the LLaVA MID: an 8 x 512 LLM and an 8 x 256 tower (head widths 64 and 32, M-RoPE split as
# in the real 7B models), Qwen2.5-VL's full attention in blocks 3 and 7 and its real 112-pixel windows. Under
# QWEN_PIXELS["mid"] (Qwen2.5-VL's own defaults) a 336 x 336 image becomes 448 x 448: 32 x 32 patches in the tower,
# 16 x 16 = 256 visual tokens after the 2 x 2 merge.
QWEN_MID = QwenVLSize(
    vision_hidden=256, vision_layers=8, vision_heads=8, fullatt_block_indexes=(3, 7), window_size=112,
    text_hidden=512, text_layers=8, text_heads=8, text_kv_heads=4, mrope_section=(8, 12, 12), vocab_size=2000,
    initializer_range=0.02,
)  # fmt: skip
# Pixel limits, passed alike to our adapter and lmms-eval's: tiny keeps 336 x 336 images at 112 x 112 (8 x 8 patches,
# 16 visual tokens), mid and full upscale them to 448 x 448 (256 visual tokens).
QWEN_PIXELS = {
    "tiny": {"min_pixels": 3136, "max_pixels": 12544},
    "mid": {"min_pixels": 256 * 28 * 28, "max_pixels": 1605632},
    "full": {"min_pixels": 256 * 28 * 28, "max_pixels": 1605632},
}
# Qwen3-VL's factor is 32 pixels: tiny keeps 336 x 336 images at 128 x 128 (8 x 8 patches of 16, 16 visual tokens),
# mid upscales them to 448 x 448 (196 visual tokens). (lmms-eval's chat qwen3_vl ignores both for images.)
QWEN3_PIXELS = {"tiny": {"min_pixels": 4096, "max_pixels": 16384}, "mid": QWEN_PIXELS["mid"]}
# "full": the published 7B architecture of the family (checkpoints/full_size.py), random bf16 weights; on a CPU with a
# slice of its LLM (the bench scales it to full depth).
SIZES = ("tiny", "mid", "full")


@dataclass(frozen=True)
class BenchModel:
    """What the benchmark needs beyond the adapter itself."""

    adapter: str  # the lmms-eval model name
    save: Callable[[str, Any], Path]  # (directory, size) -> a random checkpoint there
    sizes: dict[str, Any]
    reference: str  # lmms-eval's own adapter for the family, for the parity run
    full_size_tower: str  # the family's published vision tower, in words
    adapter_args: dict[str, dict[str, Any]] = field(default_factory=dict)  # per size name

    def default_class(self) -> type:
        """The adapter's class as lmms-eval resolves it from our entry point by default: the chat class, or the simple
        one where that is the only one."""
        from lmms_eval.models import get_model

        return get_model(self.adapter, force_simple=False)

    @property
    def family(self) -> type[Family]:
        return self.default_class().family_class

    @property
    def label(self) -> str:
        return self.family.label

    @property
    def full_size(self) -> str:
        """The family's name in ``checkpoints/full_size.py``: its model_type."""
        return self.family.model_type

    def save_checkpoint(self, size: str, directory: str, device: str, llm_layers: int | None = None) -> Path:
        """A random checkpoint at ``size`` saved in ``directory``; the full size is built on ``device``, with only
        ``llm_layers`` of its LLM's decoder layers if given."""
        if size == "full":
            config = full_size_config(self.full_size, llm_layers)
            return save_random_full_size(directory, self.full_size, device=device, config=config)
        return self.save(directory, size=self.sizes[size])

    def full_llm_layers(self) -> int:
        """The decoder layers of the published LLM."""
        return full_size_config(self.full_size).text_config.num_hidden_layers


FAMILIES = {
    "llava_fopru": BenchModel(
        "llava_fopru", save_random_llava, {"tiny": TINY, "mid": MID}, "llava_hf", "CLIP ViT-L/14-336, 24 x 1024",
    ),
    # Crops as large as LLaVA-1.5's views: at mid, a 336 x 336 image is a base view and 1 x 2 crops of 24 x 24.
    "llava_next_fopru": BenchModel(
        "llava_next_fopru", save_random_llava_next, {"tiny": TINY, "mid": MID}, "llava_hf",
        "CLIP ViT-L/14-336, 24 x 1024",
    ),
    # SigLIP views as large as LLaVA-1.5's at mid (336 px, 24 x 24 patches); no published-size config yet ("full").
    "llava_onevision_fopru": BenchModel(
        "llava_onevision_fopru", save_random_llava_onevision, {"tiny": TINY, "mid": MID}, "llava_hf",
        "SigLIP so400m/14-384, 26 x 1152",
    ),
    "qwen2_vl_fopru": BenchModel(
        "qwen2_vl_fopru", partial(save_random_qwen_vl, family="qwen2_vl"), {"tiny": QWEN_TINY, "mid": QWEN_MID},
        "qwen2_vl", "Qwen2-VL-7B's, 32 x 1280", adapter_args=QWEN_PIXELS,
    ),
    "qwen2_5_vl_fopru": BenchModel(
        "qwen2_5_vl_fopru", partial(save_random_qwen_vl, family="qwen2_5_vl"), {"tiny": QWEN_TINY, "mid": QWEN_MID},
        "qwen2_5_vl", "Qwen2.5-VL-7B's, 32 x 1280, full attention in 4 blocks", adapter_args=QWEN_PIXELS,
    ),
    "qwen3_vl_fopru": BenchModel(
        "qwen3_vl_fopru", save_random_qwen3_vl, {"tiny": QWEN3_TINY, "mid": QWEN3_MID}, "qwen3_vl",
        "Qwen3-VL-8B's, 27 x 1152, DeepStack from 3 blocks", adapter_args=QWEN3_PIXELS,
    ),
}  # fmt: skip
