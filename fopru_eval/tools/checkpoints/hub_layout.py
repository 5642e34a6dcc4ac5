"""A tiny checkpoint re-laid as the Hugging Face hub stores a real one, for drop-in tests.

The builders in this package save checkpoints the way transformers 5 writes them: one ``processor_config.json`` that
nests the image and video processors, ``chat_template.jinja``, a tokenizer config without a template. The checkpoints
users run are stored in older layouts: ``preprocessor_config.json`` apart, a chat template in ``chat_template.json``
(read by the processor only), hub-specific keys such as Qwen2-VL's top-level ``min_pixels`` / ``max_pixels``, and a
``generation_config.json`` that may sample or penalise repetition. Each of these changes what a model answers.

``save_as_hub`` keeps the tiny checkpoint's weights, ``config.json`` and ``tokenizer.json`` (the architecture and
vocabulary), and writes the small files the hub repo holds (``HUB_LISTS``), each as the hub holds it where its
contents were recovered (``hub/<owner>--<name>/``, copied from public copies; ``hub/SOURCES.md`` says where each came
from and what is missing), else from the tiny checkpoint's own settings. In a recovered file only what must follow the
tiny architecture and vocabulary changes:
- in the processor files, the keys of ``ARCHITECTURE_KEYS`` that both files hold take the tiny checkpoint's values
  (a 336 px crop would not fit a 48 px tower);
- token ids (``added_tokens_decoder``, ``added_tokens.json``, ``generation_config.json``) are mapped by token text to
  the tiny vocabulary's ids; a hub token the tiny vocabulary lacks is left out.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from transformers import AutoTokenizer

HUB_FILES = Path(__file__).resolve().parent / "hub"

# The hub checkpoint each family's fixtures imitate.
HUB_REPOS = {
    "llava": "llava-hf/llava-1.5-7b-hf",
    "llava_next": "llava-hf/llava-v1.6-mistral-7b-hf",
    "llava_onevision": "llava-hf/llava-onevision-qwen2-7b-ov-hf",
    "qwen2_vl": "Qwen/Qwen2-VL-7B-Instruct",
    "qwen2_5_vl": "Qwen/Qwen2.5-VL-7B-Instruct",
    "qwen3_vl": "Qwen/Qwen3-VL-8B-Instruct",
}

# Processor keys whose values follow the model's architecture (patch grid, crop, anyres pinpoints, tokens per image).
ARCHITECTURE_KEYS = frozenset(
    {
        "crop_size", "size", "patch_size", "merge_size", "temporal_patch_size", "image_grid_pinpoints",
        "num_image_tokens", "image_seq_length", "vision_feature_select_strategy", "vision_aspect_ratio",
    }
)  # fmt: skip
# Where the hub keeps each processor's keys, and where transformers 5 nests them in the tiny checkpoint's
# processor_config.json (None: its top level).
PROCESSOR_FILES = {
    "preprocessor_config.json": "image_processor",
    "video_preprocessor_config.json": "video_processor",
    "processor_config.json": None,
}
# The small files each hub repo holds, as its file listing shows them (``hub/SOURCES.md``). Those whose contents were
# recovered are in ``hub/<owner>--<name>/``; the others are written from the tiny checkpoint's own settings, in the
# hub's file (``_from_tiny``), so the layout is the hub's even where a value is not.
HUB_LISTS = {
    "llava-hf/llava-1.5-7b-hf": (
        "added_tokens.json", "chat_template.json", "generation_config.json", "preprocessor_config.json",
        "processor_config.json", "special_tokens_map.json", "tokenizer_config.json",
    ),
    "llava-hf/llava-v1.6-mistral-7b-hf": (
        "added_tokens.json", "chat_template.json", "generation_config.json", "preprocessor_config.json",
        "processor_config.json", "special_tokens_map.json", "tokenizer_config.json",
    ),
    "llava-hf/llava-onevision-qwen2-7b-ov-hf": (
        "added_tokens.json", "chat_template.json", "generation_config.json", "preprocessor_config.json",
        "processor_config.json", "special_tokens_map.json", "tokenizer_config.json",
    ),
    "Qwen/Qwen2-VL-7B-Instruct": (
        "chat_template.json", "generation_config.json", "preprocessor_config.json", "tokenizer_config.json",
    ),
    "Qwen/Qwen2.5-VL-7B-Instruct": (
        "chat_template.json", "generation_config.json", "preprocessor_config.json", "tokenizer_config.json",
    ),
    "Qwen/Qwen3-VL-8B-Instruct": (
        "chat_template.json", "generation_config.json", "preprocessor_config.json", "tokenizer_config.json",
        "video_preprocessor_config.json",
    ),
}  # fmt: skip
# The tiny checkpoint's small files, all replaced by the hub's list.
SMALL_FILES = (
    "processor_config.json", "preprocessor_config.json", "video_preprocessor_config.json", "tokenizer_config.json",
    "chat_template.jinja", "chat_template.json", "generation_config.json", "special_tokens_map.json",
    "added_tokens.json",
)  # fmt: skip


def hub_folder(repo: str) -> Path:
    """Where the recovered files of ``repo`` are (the folder may hold only some of its files, or not exist)."""
    return HUB_FILES / repo.replace("/", "--")


def save_as_hub(checkpoint: str | Path, repo: str, output: str | Path) -> Path:
    """A copy of the tiny ``checkpoint`` in ``output``, its small files laid out as ``repo`` stores them on the hub."""
    if repo not in HUB_LISTS:
        raise ValueError(f"repo={repo!r} has no hub layout here; accepted values: {', '.join(HUB_LISTS)}")
    checkpoint, output = Path(checkpoint), Path(output)
    shutil.copytree(checkpoint, output, ignore=shutil.ignore_patterns(*SMALL_FILES))
    tiny_processor = _read_json(checkpoint / "processor_config.json")
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    hub = hub_folder(repo)
    hub_ids = _hub_token_texts(hub)
    for name in HUB_LISTS[repo]:
        source, target = hub / name, output / name
        if not source.exists():
            _write_json(target, _from_tiny(name, checkpoint, tiny_processor, tokenizer))
        elif name in PROCESSOR_FILES:
            section = PROCESSOR_FILES[name]
            tiny = _processor_section(tiny_processor, section)
            _write_json(target, _with_architecture(_read_json(source), tiny))
        elif name == "tokenizer_config.json":
            _write_json(target, _tokenizer_config(_read_json(source), tokenizer))
        elif name == "added_tokens.json":
            added = {text: tokenizer.convert_tokens_to_ids(text) for text in _read_json(source)}
            _write_json(target, {text: i for text, i in added.items() if i != tokenizer.unk_token_id})
        elif name == "generation_config.json":
            _write_json(target, _remap_ids(_read_json(source), hub_ids, tokenizer))
        else:
            shutil.copyfile(source, target)
    return output


def _processor_section(processor_config: dict[str, Any], section: str | None) -> dict[str, Any]:
    """One processor's settings from a processor_config.json as transformers 5 writes it (the top level: without the
    nested processors)."""
    if section is not None:
        return processor_config.get(section, {})
    return {key: value for key, value in processor_config.items() if key not in PROCESSOR_FILES.values()}


def _from_tiny(name: str, checkpoint: Path, processor_config: dict[str, Any], tokenizer: Any) -> dict[str, Any]:
    """A hub file whose contents were not recovered, written from the tiny checkpoint's own settings."""
    if name in PROCESSOR_FILES:
        return _processor_section(processor_config, PROCESSOR_FILES[name])
    if name == "chat_template.json":
        return {"chat_template": (checkpoint / "chat_template.jinja").read_text()}
    if name == "special_tokens_map.json":
        return {key: value for key, value in tokenizer.special_tokens_map.items() if isinstance(value, str)}
    if name == "added_tokens.json":
        return dict(sorted(tokenizer.get_added_vocab().items(), key=lambda item: item[1]))
    if name in ("tokenizer_config.json", "generation_config.json"):
        return _read_json(checkpoint / name)
    raise FileNotFoundError(f"{name}: neither recovered from the hub nor derivable from the tiny checkpoint")


def _with_architecture(hub: dict[str, Any], tiny: dict[str, Any]) -> dict[str, Any]:
    return {key: tiny[key] if key in ARCHITECTURE_KEYS and key in tiny else value for key, value in hub.items()}


def _tokenizer_config(hub: dict[str, Any], tokenizer: Any) -> dict[str, Any]:
    config = dict(hub)
    if "added_tokens_decoder" in config:
        decoder = {}
        for entry in config["added_tokens_decoder"].values():
            token_id = tokenizer.convert_tokens_to_ids(entry["content"])
            if token_id != tokenizer.unk_token_id or entry["content"] == tokenizer.unk_token:
                decoder[str(token_id)] = entry
        config["added_tokens_decoder"] = decoder
    return config


# The special tokens of Qwen2's vocabulary, which every Qwen-VL repo here uses (Qwen2-VL's config.json names 151652 to
# 151656 too): where a repo's tokenizer_config.json was not recovered, its generation_config.json's ids map by these.
QWEN_SPECIAL_TOKENS = {
    151643: "<|endoftext|>", 151644: "<|im_start|>", 151645: "<|im_end|>", 151652: "<|vision_start|>",
    151653: "<|vision_end|>", 151654: "<|vision_pad|>", 151655: "<|image_pad|>", 151656: "<|video_pad|>",
}  # fmt: skip


def _hub_token_texts(hub: Path) -> dict[int, str]:
    """The hub vocabulary's special tokens, id -> text, as its tokenizer config and added_tokens.json list them (Qwen's
    by ``QWEN_SPECIAL_TOKENS`` where neither was recovered)."""
    texts: dict[int, str] = dict(QWEN_SPECIAL_TOKENS) if hub.name.startswith("Qwen--") else {}
    config = hub / "tokenizer_config.json"
    if config.exists():
        texts |= {int(i): entry["content"] for i, entry in _read_json(config).get("added_tokens_decoder", {}).items()}
    if (hub / "added_tokens.json").exists():
        texts |= {int(i): text for text, i in _read_json(hub / "added_tokens.json").items()}
    return texts


def _remap_ids(config: dict[str, Any], hub_texts: dict[int, str], tokenizer: Any) -> dict[str, Any]:
    """``*_token_id`` values mapped from the hub vocabulary to the tiny one, by token text."""

    def remap(token_id: int) -> int:
        if token_id not in hub_texts:
            raise KeyError(f"token id {token_id} of the hub's generation_config.json is not a listed special token")
        return tokenizer.convert_tokens_to_ids(hub_texts[token_id])

    remapped = dict(config)
    for key, value in config.items():
        if key.endswith("token_id") and value is not None:
            remapped[key] = [remap(v) for v in value] if isinstance(value, list) else remap(value)
    return remapped


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.exists() else {}


def _write_json(path: Path, content: dict[str, Any]) -> None:
    path.write_text(json.dumps(content, indent=2, ensure_ascii=False) + "\n")
