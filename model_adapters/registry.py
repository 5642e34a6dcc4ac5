"""lmms-eval entry point: the model manifests of the FoPru adapters.

lmms-eval loads every ``lmms_eval.models`` entry point at start-up and skips them all if one fails to import, so
this module imports nothing heavy: class paths are strings, resolved only when a model is asked for.
"""

from lmms_eval.models.registry_v2 import ModelManifest

# Chat classes answer generation tasks with prompts built as lmms-eval's chat llava_hf builds them; the simple
# classes (lmms-eval --force_simple) also answer loglikelihood and multiple-choice tasks.
MANIFESTS = [
    ModelManifest(
        model_id="llava_fopru",
        simple_class_path="fopru_model_adapters.llava.LlavaFoPru",
        chat_class_path="fopru_model_adapters.llava.LlavaFoPruChat",
    ),
]
