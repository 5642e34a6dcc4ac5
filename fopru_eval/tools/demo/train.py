"""Train the demo vision-language model the way LLaVA-1.5 is built, at toy scale, on one CPU thread.

    python -m fopru_eval.tools.demo.train --output fopru_eval/tools/demo/checkpoint

The model has LLaVA-1.5's geometry: 336 px images, 14 px patches, 24 x 24 = 576 visual tokens plus CLS, features from
the ViT's second-to-last layer without CLS, so peers' budgets (192 / 128 / 64 tokens) apply as they are.

Stage 1 (the vision encoder, ``vision_pretraining.py``). A small CLIP ViT learns the synthetic scenes
(``scenes.py``) from its CLS token, which must attend to the few patches that hold objects, and optionally from
dense heads on its patch tokens. The heads are thrown away.

Stage 2 (the assistant). The ViT is frozen. LLaVA's projector (linear, GELU, linear) and a small Llama, both from
scratch, learn to answer questions about the scenes from the ViT's second-to-last layer without its CLS token
(``vision_feature_layer=-2``, ``"default"`` strategy, as in LLaVA-1.5), through ``LlavaForConditionalGeneration``'s
own forward. Prompts use the same chat template as inference. Each image carries ``questions_per_kind`` questions of
each kind, an existence pair and a description of the whole scene, the loss covering only the answer tokens. With
``turns="separate"`` (the default) each question is asked alone: one row stores the image once and every
question-answer turn attends to it and to itself only, so no answer can be read off another's text (LLaVA's
multi-turn conversations, ``turns="conversation"``, let "Is there a red circle?" be answered from "What shape is left
of the red circle?" asked before it, which a single-question benchmark never offers). Batches are
left-padded with the position ids ``generate`` uses. LLaVA first trains the projector alone to align it with a
pretrained LLM; our LLM starts from scratch, so projector and LLM train together from the start. Training never sees
a pruned image: FoPru is training-free.

Two choices make from-scratch training work at this width (both found by stalled runs of the earlier 64-token demo):
sine-cosine initial position embeddings for the ViT and a 1/sqrt(width) initialisation for the Llama (see the
comments there). Progress is reported on the dev split (``scenes.make_dev_docs``); the test split is never read here.

Finally the model and a ``LlavaProcessor`` are saved where ``from_pretrained`` loads them, with no hub access.
Everything is seeded and runs on one thread: the same command writes byte-identical weights on the same machine.
Measured on a 2-core CPU (the other core busy): see ``training_report.json`` beside the checkpoint and the README.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from transformers import LlavaForConditionalGeneration, LlavaProcessor, PreTrainedTokenizerFast

from fopru_eval.tools.checkpoints import llava as random_llava
from fopru_eval.tools.checkpoints.llava import LlavaSize, llava_processor, random_llava_model
from fopru_eval.tools.demo import scenes
from fopru_eval.tools.demo.vision_pretraining import (
    PATCH_CLASSES,
    cosine_lr,
    optimizer_step,
    pixels,
    pretrain_vision,
)

PATCH_SIZE = scenes.PATCH_SIZE
NUM_PATCHES = (scenes.IMAGE_SIZE // PATCH_SIZE) ** 2
# The settings stage 1 depends on; a run that reuses an earlier stage 1 must agree on all of them.
STAGE1_FIELDS = (
    "vision_hidden",
    "vision_layers",
    "vision_heads",
    "vision_steps",
    "vision_batch",
    "vision_lr",
    "patch_loss",
    "patch_classes",
    "patch_layer",
    "cell_loss",
    "seed",
)
TURNS = ("conversation", "separate")


@dataclass(frozen=True)
class TrainConfig:
    vision_hidden: int = 64
    vision_layers: int = 3
    vision_heads: int = 4
    text_hidden: int = 128
    text_layers: int = 4
    text_heads: int = 4
    vision_steps: int = 1500
    vision_batch: int = 32
    vision_lr: float = 2e-3
    # Optional dense objective: a linear head on every patch token predicts what covers it, "color" (the object
    # colour, or none) or "object" (colour and shape, or none), weighted by patch_loss, on the hidden state
    # patch_layer (-1 the last layer; -2 the one LLaVA's projector reads). cell_loss weights a second head there
    # that predicts each patch's grid cell, so "where" is linear in the features the LLM reads.
    patch_loss: float = 1.0
    patch_classes: str = "object"
    patch_layer: int = -2
    cell_loss: float = 1.0
    questions_per_kind: int = 8
    # How an image's questions are trained: "conversation" asks them in one multi-turn chat, as LLaVA's data does;
    # "separate" asks each alone in one packed row (see encode_separate_turns), so no answer can be read off an
    # earlier question's text, which inference never offers.
    turns: str = "separate"
    language_steps: int = 1100
    language_batch: int = 16
    language_lr: float = 2e-3
    seed: int = 0

    def __post_init__(self) -> None:
        if self.patch_classes not in PATCH_CLASSES:
            raise ValueError(f"patch_classes={self.patch_classes!r}; accepted values: {', '.join(PATCH_CLASSES)}")
        if not -self.vision_layers <= self.patch_layer <= -1:
            raise ValueError(f"patch_layer={self.patch_layer}; accepted values: -{self.vision_layers} to -1")
        if self.turns not in TURNS:
            raise ValueError(f"turns={self.turns!r}; accepted values: {', '.join(TURNS)}")


# ----- model and processor --------------------------------------------------------------------------------------


def build_tokenizer() -> PreTrainedTokenizerFast:
    """Byte-level BPE, trained in a second on the chat template's words and every question and answer, so each
    word of the demo is one token (short sequences train faster) and any other text still tokenizes into bytes."""
    return random_llava.build_tokenizer(512, (["USER: ASSISTANT:"] + scenes.vocabulary()) * 10)


def model_size(cfg: TrainConfig) -> LlavaSize:
    return LlavaSize(
        image_size=scenes.IMAGE_SIZE,
        patch_size=PATCH_SIZE,
        vision_hidden=cfg.vision_hidden,
        vision_layers=cfg.vision_layers,
        vision_heads=cfg.vision_heads,
        text_hidden=cfg.text_hidden,
        text_layers=cfg.text_layers,
        text_heads=cfg.text_heads,
    )


def build_model(tokenizer: PreTrainedTokenizerFast, cfg: TrainConfig) -> LlavaForConditionalGeneration:
    # Llama's default 0.02 suits 4096-wide models; at width 128 it leaves attention almost uniform and training
    # stalls for hundreds of steps. About 1/sqrt(width) gives healthy attention logits from step 0.
    return random_llava_model(
        model_size(cfg),
        tokenizer,
        cfg.seed,
        max_position_embeddings=512,
        initializer_range=1 / math.sqrt(cfg.text_hidden),
    )


def build_processor(tokenizer: PreTrainedTokenizerFast) -> LlavaProcessor:
    return llava_processor(tokenizer, LlavaSize(image_size=scenes.IMAGE_SIZE, patch_size=PATCH_SIZE))


# ----- stage 2: projector and LLM, on conversations about the scenes --------------------------------------------


def user_turn(processor: LlavaProcessor, question: str, with_image: bool) -> str:
    """The prompt exactly as the adapter renders it for lmms-eval's chat messages (images first, then text)."""
    content = ([{"type": "image"}] if with_image else []) + [{"type": "text", "text": question}]
    return processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)


def encode_conversation(processor: LlavaProcessor, questions: list[scenes.Question]) -> tuple[list[int], list[int]]:
    """Token ids and labels of one image's conversation; labels are -100 except on the answers and their EOS.

    The processor would expand ``<image>`` to one placeholder per patch; we do the same expansion on the text so
    the first turn tokenizes exactly as at inference (checked in ``check_prompt_matches_processor``)."""
    tokenizer = processor.tokenizer
    ids: list[int] = []
    labels: list[int] = []
    for turn, question in enumerate(questions):
        prompt = user_turn(processor, question.text, with_image=turn == 0)
        prompt_ids = tokenizer.encode(prompt.replace("<image>", "<image>" * NUM_PATCHES), add_special_tokens=False)
        answer_ids = tokenizer.encode(" " + question.answer, add_special_tokens=False) + [tokenizer.eos_token_id]
        ids += prompt_ids + answer_ids
        labels += [-100] * len(prompt_ids) + answer_ids
    return ids, labels


def encode_separate_turns(
    processor: LlavaProcessor, questions: list[scenes.Question]
) -> tuple[list[int], list[int], list[int], list[int]]:
    """Each question as its own single-turn prompt and answer, packed into one row that stores their shared prefix
    (the chat template's opening and the image) once: token ids, labels, turn of each token (0 for the prefix, then
    1, 2, ...) and position ids. With ``turn_attention`` each turn sees the prefix and itself at the positions a
    single-turn prompt has, so it computes exactly what the single-turn sample would, at a fraction of the cost
    (the 576 image tokens are most of every sample)."""
    singles = [encode_conversation(processor, [question]) for question in questions]
    shared = shared_prompt_length(singles)
    ids, labels = singles[0][0][:shared], [-100] * shared
    turns, positions = [0] * shared, list(range(shared))
    for turn, (single_ids, single_labels) in enumerate(singles, start=1):
        ids += single_ids[shared:]
        labels += single_labels[shared:]
        turns += [turn] * (len(single_ids) - shared)
        positions += range(shared, len(single_ids))
    return ids, labels, turns, positions


def shared_prompt_length(rows: list[tuple[list[int], list[int]]]) -> int:
    """How many leading tokens every (ids, labels) row has in common, all of them prompt (label -100)."""
    length = 0
    while all(len(ids) > length and labels[length] == -100 for ids, labels in rows):
        if len({ids[length] for ids, _ in rows}) > 1:
            break
        length += 1
    return length


def turn_attention(turns: torch.Tensor) -> torch.Tensor:
    """The (batch, 1, length, length) boolean mask of packed rows: a token attends causally to the shared prefix
    (turn 0) and to its own turn. Padding (turn -1) attends only to itself, which keeps its softmax finite."""
    length = turns.shape[1]
    query, key = turns[:, :, None], turns[:, None, :]
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    allowed = causal & (key >= 0) & ((key == 0) | (key == query))
    return (allowed | torch.eye(length, dtype=torch.bool))[:, None]


def left_pad(rows: list[list[int]], value: int) -> torch.Tensor:
    width = max(len(row) for row in rows)
    return torch.tensor([[value] * (width - len(row)) + row for row in rows])


def language_batch(processor: LlavaProcessor, seeds: range, per_kind: int, turns: str) -> dict[str, torch.Tensor]:
    """A left-padded batch with the position ids ``generate`` derives from the mask, so training sees the same
    positions as batched inference; with ``turns="separate"``, packed rows and their turn mask."""
    examples = [scenes.make_example(seed, per_kind) for seed in seeds]
    batch = {"pixel_values": pixels(processor, [scene.image for scene, _ in examples])}
    if turns == "separate":
        encoded = [encode_separate_turns(processor, questions) for _, questions in examples]
        turn_ids = left_pad([row[2] for row in encoded], -1)
        batch["attention_mask"] = turn_attention(turn_ids)
        batch["position_ids"] = left_pad([row[3] for row in encoded], 0)
    else:
        encoded = [encode_conversation(processor, questions) for _, questions in examples]
        mask = left_pad([[1] * len(row[0]) for row in encoded], 0)
        batch["attention_mask"] = mask
        batch["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0)
    batch["input_ids"] = left_pad([row[0] for row in encoded], processor.tokenizer.pad_token_id)
    batch["labels"] = left_pad([row[1] for row in encoded], -100)
    return batch


def check_prompt_matches_processor(processor: LlavaProcessor) -> None:
    scene, questions = scenes.make_example(0)
    prompt = user_turn(processor, questions[0].text, with_image=True)
    expected = processor(images=[scene.image], text=prompt)["input_ids"][0]
    ids, _ = encode_conversation(processor, questions[:1])
    assert ids[: len(expected)] == list(expected), "training prompt tokenizes differently from the processor"


def train_language(model: LlavaForConditionalGeneration, processor: LlavaProcessor, cfg: TrainConfig) -> None:
    model.model.vision_tower.requires_grad_(False)  # frozen, as in LLaVA: only projector and LLM learn
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.language_lr, weight_decay=0.01)
    validation = scenes.make_dev_docs(200)
    for step in range(cfg.language_steps):
        model.train()
        start = scenes.LANGUAGE_SEED_OFFSET + step * cfg.language_batch
        seeds = range(start, start + cfg.language_batch)
        batch = language_batch(processor, seeds, cfg.questions_per_kind, cfg.turns)
        loss = model(**batch).loss  # LLaVA's own forward: projector, placeholder merge, LLM, shifted CE on labels
        optimizer_step(optimizer, params, loss, cosine_lr(step, cfg.language_steps, cfg.language_lr))
        if step % 100 == 0 or step == cfg.language_steps - 1:
            accuracy = answer_accuracy(model, processor, validation)
            by_kind = "  ".join(f"{kind} {value:.2f}" for kind, value in accuracy.items())
            print(f"language step {step:5d}  loss {loss.item():.4f}  validation: {by_kind}", flush=True)
    model.eval()


@torch.no_grad()
def answer_accuracy(
    model: LlavaForConditionalGeneration, processor: LlavaProcessor, docs: list[tuple[scenes.Scene, scenes.Question]]
) -> dict[str, float]:
    """Single-turn greedy accuracy of the first answer token (each answer is one token), overall and per kind.

    A fast stand-in for lmms-eval's exact match, used to report progress; the shipped score comes from lmms-eval."""
    tokenizer = processor.tokenizer
    model.eval()
    hits: Counter[str] = Counter()
    totals: Counter[str] = Counter()
    for start in range(0, len(docs), 64):
        chunk = docs[start : start + 64]
        prompts = [user_turn(processor, q.text, with_image=True) for _, q in chunk]
        inputs = processor(images=[s.image for s, _ in chunk], text=prompts, padding=True, return_tensors="pt")
        inputs["position_ids"] = (inputs["attention_mask"].cumsum(-1) - 1).clamp(min=0)
        predicted = model(**inputs, logits_to_keep=1).logits[:, -1].argmax(-1).tolist()
        for (_, question), token in zip(chunk, predicted, strict=True):
            ok = token == tokenizer.encode(" " + question.answer, add_special_tokens=False)[0]
            hits[question.kind] += ok
            hits["all"] += ok
            totals[question.kind] += 1
            totals["all"] += 1
    return {kind: hits[kind] / totals[kind] for kind in totals}


def training_docs(num_docs: int, per_kind: int) -> list[tuple[scenes.Scene, scenes.Question]]:
    """Single-turn docs from the first scenes stage 2 trained on, to compare train and held-out accuracy. The same
    seed draws the same scene and the same first questions, so each doc's question was asked in its training
    conversation."""
    docs = []
    for seed in range(scenes.LANGUAGE_SEED_OFFSET, scenes.LANGUAGE_SEED_OFFSET + num_docs):
        scene, questions = scenes.make_example(seed, per_kind)
        docs.append((scene, next(q for q in questions if q.kind != "describe")))
    return docs


# ----- main -----------------------------------------------------------------------------------------------------


def reuse_vision(model: LlavaForConditionalGeneration, checkpoint: Path, cfg: TrainConfig) -> tuple[float, float]:
    """Load stage 1's tower from an earlier run with the same stage-1 settings, for trying stage-2 settings without
    paying stage 1 again (it is deterministic, so this is the tower the full command trains). Returns that run's
    stage-1 time and held-out cell accuracy."""
    report = json.loads((checkpoint / "training_report.json").read_text())
    defaults = TrainConfig()  # a report from before a field existed ran with its default
    stage1 = [f for f in STAGE1_FIELDS if report["config"].get(f, getattr(defaults, f)) != getattr(cfg, f)]
    if stage1:
        raise ValueError(f"--vision-from {checkpoint}: its stage 1 differs from this run's in {', '.join(stage1)}")
    earlier = LlavaForConditionalGeneration.from_pretrained(checkpoint)
    model.model.vision_tower.load_state_dict(earlier.model.vision_tower.state_dict())
    return report["stage1_seconds"], report["stage1_heldout_cell_accuracy"]


def train(output: Path, cfg: TrainConfig, dev_docs: int = 500, vision_from: Path | None = None) -> dict[str, object]:
    # One thread: the small matrices here gain little from more, and on a shared CPU extra threads mostly wait
    # on each other (a step ran 3-10x slower with 2 threads on a busy 2-core machine). It also pins the float
    # summation order, so the same command gives the same weights.
    torch.set_num_threads(1)
    torch.manual_seed(cfg.seed)  # scenes carry their own seeds; torch's seeds the weights and the pretraining head
    tokenizer = build_tokenizer()
    for word in scenes.answer_words():
        # One token per answer keeps answers short and makes answer_accuracy's first-token check exact.
        assert len(tokenizer.encode(" " + word, add_special_tokens=False)) == 1, word
    processor = build_processor(tokenizer)
    model = build_model(tokenizer, cfg)
    check_prompt_matches_processor(processor)

    if vision_from is None:
        started = time.perf_counter()
        cell_score = pretrain_vision(model, processor, cfg)
        vision_seconds = time.perf_counter() - started
        print(f"stage 1 done in {vision_seconds:.0f}s: held-out per-cell accuracy {cell_score:.3f}", flush=True)
    else:
        vision_seconds, cell_score = reuse_vision(model, vision_from, cfg)
        print(f"stage 1 reused from {vision_from} (it took {vision_seconds:.0f}s there)", flush=True)

    started = time.perf_counter()
    train_language(model, processor, cfg)
    language_seconds = time.perf_counter() - started
    train_acc = answer_accuracy(model, processor, training_docs(dev_docs, cfg.questions_per_kind))
    dev_acc = answer_accuracy(model, processor, scenes.make_dev_docs(dev_docs))
    print(f"stage 2 done in {language_seconds:.0f}s: train {train_acc}\n  dev {dev_acc}", flush=True)

    model.save_pretrained(output)
    processor.save_pretrained(output)
    report = {
        "config": asdict(cfg),
        "torch_threads": torch.get_num_threads(),
        "parameters": sum(p.numel() for p in model.parameters()),
        "stage1_seconds": round(vision_seconds),
        "stage1_reused_from": None if vision_from is None else str(vision_from),
        "stage1_heldout_cell_accuracy": round(cell_score, 4),
        "stage2_seconds": round(language_seconds),
        "peak_memory_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "train_first_token_accuracy": {k: round(v, 4) for k, v in train_acc.items()},
        "dev_first_token_accuracy": {k: round(v, 4) for k, v in dev_acc.items()},
    }
    (output / "training_report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", type=Path, default=Path(__file__).resolve().parent / "checkpoint")
    parser.add_argument("--vision-from", type=Path, help="reuse stage 1 from this checkpoint (same stage-1 settings)")
    defaults = TrainConfig()
    for name, value in asdict(defaults).items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)
    args = parser.parse_args(argv)
    cfg = TrainConfig(**{name: getattr(args, name) for name in asdict(defaults)})
    train(args.output, cfg, vision_from=args.vision_from)


if __name__ == "__main__":
    main()
