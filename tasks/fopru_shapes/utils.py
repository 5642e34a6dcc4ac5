"""Prompt, visual and scoring functions for the fopru_shapes tasks (see tasks/README.md)."""

from __future__ import annotations

from typing import Any

from PIL import Image, ImageOps


def fopru_doc_to_visual(doc: dict[str, Any]) -> list[Image.Image]:
    # A list, as lmms-eval adapters expect; RGB so every image processor accepts it.
    return [doc["image"].convert("RGB")]


def fopru_doc_to_text(doc: dict[str, Any], lmms_eval_specific_kwargs: dict[str, Any] | None = None) -> str:
    # pre/post prompt come from the YAML's lmms_eval_specific_kwargs (model-specific or "default").
    kwargs = lmms_eval_specific_kwargs or {}
    return f"{kwargs.get('pre_prompt', '')}{doc['question']}{kwargs.get('post_prompt', '')}"


def fopru_normalize(text: str) -> str:
    # Models often answer "Red." or " red"; the gold answers are lower-case single words.
    text = text.strip().lower()
    while text.endswith("."):
        text = text[:-1].rstrip()
    return text


def fopru_gen_process_results(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    # generate_until passes one generation per doc.
    prediction = fopru_normalize(results[0] if results else "")
    return {"exact_match": float(prediction == doc["answer"].strip().lower())}


def fopru_pair_doc_to_visual(doc: dict[str, Any]) -> list[Image.Image]:
    # The picture, then its mirror image (left and right swapped).
    image = doc["image"].convert("RGB")
    return [image, ImageOps.mirror(image)]


def fopru_pair_doc_to_text(doc: dict[str, Any], lmms_eval_specific_kwargs: dict[str, Any] | None = None) -> str:
    question = fopru_doc_to_text(doc, lmms_eval_specific_kwargs)
    return f"The second picture is the first one mirrored left to right. About the first picture: {question}"
