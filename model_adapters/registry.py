"""lmms-eval entry point: the model manifests of the FoPru adapters.

lmms-eval loads every ``lmms_eval.models`` entry point at start-up and skips them all if one fails to import, so
this module imports nothing heavy: class paths are strings, resolved only when a model is asked for.
"""

from lmms_eval.models.registry_v2 import ModelManifest


def _manifest(model_id: str, module: str, class_name: str, chat: bool = True) -> ModelManifest:
    # Chat classes answer generation tasks with prompts built as lmms-eval's own chat adapters build them; the
    # simple classes (lmms-eval --force_simple) also answer loglikelihood and multiple-choice tasks. An adapter whose
    # lmms-eval counterpart has a simple class only has none either, so lmms-eval builds the same requests for both.
    return ModelManifest(
        model_id=model_id,
        simple_class_path=f"fopru_model_adapters.{module}.{class_name}",
        chat_class_path=f"fopru_model_adapters.{module}.{class_name}Chat" if chat else None,
    )


MANIFESTS = [
    _manifest("llava_fopru", "llava", "LlavaFoPru"),
    _manifest("llava_next_fopru", "llava_next", "LlavaNextFoPru"),
    _manifest("llava_onevision_fopru", "llava_onevision", "LlavaOnevisionFoPru"),
    _manifest("qwen2_vl_fopru", "qwen_vl", "Qwen2VLFoPru", chat=False),
    _manifest("qwen2_5_vl_fopru", "qwen_vl", "Qwen2_5_VLFoPru"),
    _manifest("qwen3_vl_fopru", "qwen3_vl", "Qwen3VLFoPru"),
]
