"""Prompt, visual and scoring functions for the fopru_demo task."""

from __future__ import annotations

from typing import Any

from PIL import Image


def demo_doc_to_visual(doc: dict[str, Any]) -> list[Image.Image]:
    return [doc["image"].convert("RGB")]


def demo_doc_to_text(doc: dict[str, Any], lmms_eval_specific_kwargs: dict[str, Any] | None = None) -> str:
    kwargs = lmms_eval_specific_kwargs or {}
    return f"{kwargs.get('pre_prompt', '')}{doc['question']}{kwargs.get('post_prompt', '')}"


def demo_normalize(text: str) -> str:
    # Gold answers are single lower-case words; tolerate case, surrounding space and a trailing full stop.
    text = text.strip().lower()
    while text.endswith("."):
        text = text[:-1].rstrip()
    return text


def demo_process_results(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    prediction = demo_normalize(results[0] if results else "")
    return {"exact_match": float(prediction == doc["answer"])}
