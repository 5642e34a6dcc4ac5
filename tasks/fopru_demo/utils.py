"""Prompt, visual and scoring functions for the fopru_demo tasks.

A doc stores its scene's seed, not its pixels: ``fopru_eval.tools.demo.scenes`` draws the same 336 px image from the
same seed every time (``tests/test_demo.py`` checks it), which keeps the benchmark a few kilobytes instead of the
60 MB its noisy textures take as PNGs. ``scenes.scene_image`` draws each scene once per process.
"""

from __future__ import annotations

from typing import Any

from PIL import Image

from fopru_eval.tools.demo import scenes


def demo_doc_to_visual(doc: dict[str, Any]) -> list[Image.Image]:
    return [scenes.scene_image(doc["scene_seed"])]


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
    """``exact_match`` over every doc, and the same score under the doc's question kind (``attribute``,
    ``existence``, ``count`` or ``relation``), which lmms-eval then averages over the docs of that kind only."""
    hit = float(demo_normalize(results[0] if results else "") == doc["answer"])
    return {"exact_match": hit, doc["question_kind"]: hit}
