"""Model families: one small file per Hugging Face family, declaring only what differs, and the one driver.

``FAMILIES`` maps a checkpoint's ``model_type`` to its family; adding a family is one file and one entry here.
"""

from fopru_eval.families.base import EncodedImages, Family, Prompt, PrunedBatch
from fopru_eval.families.driver import keep_image, prune_batch
from fopru_eval.families.llava import Llava
from fopru_eval.families.llava_next import LlavaNext
from fopru_eval.families.llava_onevision import LlavaOnevision
from fopru_eval.families.qwen3_vl import Qwen3VL
from fopru_eval.families.qwen_vl import Qwen2_5_VL, Qwen2VL

FAMILIES: dict[str, type[Family]] = {
    family.model_type: family for family in (Llava, LlavaNext, LlavaOnevision, Qwen2VL, Qwen2_5_VL, Qwen3VL)
}

__all__ = ["FAMILIES", "EncodedImages", "Family", "Prompt", "PrunedBatch", "keep_image", "prune_batch"]
