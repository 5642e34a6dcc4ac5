"""The benchmark's workload: synthetic docs and the lmms-eval requests for them, in chat and simple form."""

from __future__ import annotations

from typing import Any

from lmms_eval.api.instance import Instance
from PIL import Image, ImageDraw

TASK, SPLIT = "fopru_bench", "test"
COLORS = ["red", "green", "blue", "orange", "purple", "black"]
QUESTIONS = ["What color is the shape?", "Which shape is in the center?", "Is there a red circle?"]


def synthetic_docs(count: int, size: int = 336) -> list[dict[str, Any]]:
    """One coloured shape on white per image, placed and coloured by the doc index: the same every run."""
    docs = []
    for i in range(count):
        image = Image.new("RGB", (size, size), "white")
        draw = ImageDraw.Draw(image)
        left, top = (i * 67) % (size // 2), (i * 41) % (size // 2)
        right, bottom = left + size // 2, top + size // 2
        color = COLORS[i % len(COLORS)]
        if i % 3 == 0:
            draw.ellipse((left, top, right, bottom), fill=color)
        elif i % 3 == 1:
            draw.rectangle((left, top, right, bottom), fill=color)
        else:
            draw.polygon([(left, bottom), (right, bottom), ((left + right) // 2, top)], fill=color)
        docs.append({"image": image, "question": QUESTIONS[i % len(QUESTIONS)]})
    return docs


def doc_to_messages(doc: dict[str, Any]) -> list[dict[str, Any]]:
    content = [{"type": "image", "url": doc["image"]}, {"type": "text", "text": doc["question"]}]
    return [{"role": "user", "content": content}]


def chat_requests(docs: list[dict[str, Any]], max_new_tokens: int) -> list[Instance]:
    """Chat-model requests as lmms-eval builds them; new ones each call, since llava_hf edits gen_kwargs."""
    requests = []
    for i, doc in enumerate(docs):
        gen_kwargs = {"max_new_tokens": max_new_tokens, "temperature": 0}
        args = (doc["question"], doc_to_messages, gen_kwargs, i, TASK, SPLIT)
        metadata = {"task": TASK, "doc_id": i, "repeats": 1}
        requests.append(Instance("generate_until", args, idx=0, metadata=metadata))
    return requests


def simple_requests(docs: list[dict[str, Any]], max_new_tokens: int) -> list[Instance]:
    """The same requests as ``chat_requests`` in lmms-eval's simple form (text, then the doc's images first)."""
    requests = []
    for i, doc in enumerate(docs):
        gen_kwargs = {"max_new_tokens": max_new_tokens, "temperature": 0}
        args = (doc["question"], gen_kwargs, lambda d: [d["image"]], i, TASK, SPLIT)
        metadata = {"task": TASK, "doc_id": i, "repeats": 1}
        requests.append(Instance("generate_until", args, idx=0, metadata=metadata))
    return requests


def requests_for(adapter: Any, docs: list[dict[str, Any]], max_new_tokens: int) -> list[Instance]:
    """The requests lmms-eval builds for ``adapter``'s class: chat requests, or simple ones for a simple class (the
    only class of an adapter whose lmms-eval counterpart has no other, e.g. qwen2_vl_fopru)."""
    build = simple_requests if adapter.is_simple else chat_requests
    return build(docs, max_new_tokens)
