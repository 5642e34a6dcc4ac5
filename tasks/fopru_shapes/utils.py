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


# Image modes that real benchmarks hold (transparent PNG charts and icons, palettes, print scans, 16-bit greys): each
# must reach the model as the wrapped model's own processing would turn it into RGB.
ODD_MODES = ("RGBA", "LA", "P+transparency", "CMYK", "I;16", "RGB")


def as_mode(image: Image.Image, mode: str) -> Image.Image:
    """``image`` in ``mode``. Where the mode has transparency, the left half is fully transparent and stores black (as
    many PNG encoders store transparent pixels) and a band is half transparent, so that compositing onto white and
    dropping the alpha give different pixels."""
    image = image.convert("RGB")
    if mode in ("RGBA", "LA"):
        converted = image.convert("RGBA")
        converted.paste((0, 0, 0, 0), (0, 0, image.width // 2, image.height))
        band = converted.crop((0, image.height // 3, image.width, image.height // 2))
        band.putalpha(128)
        converted.paste(band, (0, image.height // 3))
        return converted.convert(mode)
    if mode == "P+transparency":
        image.paste((0, 0, 0), (0, 0, image.width // 2, image.height))
        converted = image.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
        # The palette entry of the black half is transparent.
        converted.info["transparency"] = converted.getpixel((0, 0))
        return converted
    if mode == "I;16":
        return image.convert("L").point(lambda value: value * 257, mode="I").convert("I;16")
    return image.convert(mode)


def fopru_modes_doc_to_visual(doc: dict[str, Any]) -> list[Image.Image]:
    # Doc n (question_id ..._000n) in mode n mod 6.
    number = int(doc["question_id"].rsplit("_", 1)[1])
    return [as_mode(doc["image"], ODD_MODES[number % len(ODD_MODES)])]
