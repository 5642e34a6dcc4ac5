"""The lmms-eval model class every FoPru adapter shares.

It turns lmms-eval requests into chat prompts, batches them, runs the wrapped model on the pruned inputs that a
family adapter prepares, and reports per-sample token counts. A family adapter (``llava.py``) only loads its model
and implements ``prepare``: images -> vision tower -> significance -> selection -> pruned model inputs.
"""

from __future__ import annotations

import dataclasses
import inspect
import itertools
import json
import os
import time
import zlib
from dataclasses import dataclass
from typing import Any

import torch
from accelerate import Accelerator, DistributedType
from lmms_eval.api.instance import GenerationResult, Instance, TokenCounts
from lmms_eval.api.model import lmms
from lmms_eval.models.model_utils.gen_metrics import log_metrics
from lmms_eval.protocol import ChatMessages
from loguru import logger as eval_logger
from PIL import Image
from tqdm import tqdm
from transformers import AutoConfig

from fopru_eval.config import PRUNING_ARGS, PruningConfig
from fopru_eval.selection import select_tokens

# lmms-eval forks workers to post-process docs; a Rust tokenizer thread pool that already ran batched calls then
# aborts the process at exit ("terminate called without an active exception"), which kills torchrun ranks.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@dataclass
class VisualTokenCounts(TokenCounts):
    """lmms-eval's per-sample token counts plus the visual tokens the LLM kept, summed over the sample's images."""

    visual_tokens_kept: int | None = None
    visual_tokens_total: int | None = None

    def to_dict(self) -> dict[str, int | None]:
        counts = super().to_dict()
        counts["visual_tokens_kept"] = self.visual_tokens_kept
        counts["visual_tokens_total"] = self.visual_tokens_total
        return counts


@dataclass
class Prompt:
    """One request as the model sees it: a chat conversation and the images it shows, in order."""

    messages: list[dict[str, Any]]
    images: list[Image.Image]
    # Which doc this is, to seed random selection identically across reruns, batch sizes and ranks.
    doc_key: str


@dataclass
class PreparedBatch:
    """Model inputs after pruning, and what the LLM saw of each sample."""

    inputs: dict[str, Any]
    visual_tokens_kept: list[int]
    visual_tokens_total: list[int]
    input_tokens: list[int]

    def token_counts(self, i: int, output_tokens: int | None = None) -> VisualTokenCounts:
        """Sample i's counts. An adapter whose batches know more (LLaVA-NeXT's newline tokens) returns a subclass."""
        return VisualTokenCounts(
            input_tokens=self.input_tokens[i],
            output_tokens=output_tokens,
            visual_tokens_kept=self.visual_tokens_kept[i],
            visual_tokens_total=self.visual_tokens_total[i],
        )


class FoPruLMM(lmms):
    """Shared request handling for the FoPru adapters. Subclasses set ``model_name`` and implement
    ``check_checkpoint``, ``load`` and ``prepare``."""

    is_simple = True
    model_name = "fopru"

    def __init__(
        self,
        pretrained: str,
        revision: str = "main",
        device: str | None = None,
        dtype: str = "auto",
        device_map: str = "",
        attn_implementation: str | None = None,
        batch_size: int | str = 1,
        max_batch_size: int | None = None,  # lmms-eval always passes it; batches are fixed-size here
        chat_template: str | None = None,
        use_cache: bool = True,
        trust_remote_code: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        # Every argument is checked before any weights load, so a typo costs seconds, not a model load.
        self.pruning, unknown = PruningConfig.from_model_args(kwargs)
        if unknown:
            accepted = ", ".join((*_init_arguments(type(self)), *PRUNING_ARGS))
            raise ValueError(f"{self.model_name}: unknown model args {sorted(unknown)}; accepted: {accepted}")
        self.batch_size_per_gpu = _positive_int("batch_size", batch_size)
        torch_dtype = _torch_dtype(dtype)
        self.use_cache = bool(use_cache)
        self.check_checkpoint(pretrained, revision=revision, trust_remote_code=trust_remote_code)

        self.accelerator = Accelerator()
        # Under torchrun on CPUs accelerate reports a single process (MULTI_CPU needs cpu=True), while lmms-eval's
        # evaluator shards requests by the launcher's environment: follow the environment, as it does.
        self._rank = int(os.environ.get("RANK", self.accelerator.process_index))
        self._world_size = int(os.environ.get("WORLD_SIZE", self.accelerator.num_processes))
        if self._world_size > 1:
            # Data parallel: every process holds a full copy of the model and scores its share of the requests.
            supported = (DistributedType.NO, DistributedType.MULTI_GPU, DistributedType.MULTI_CPU)
            if self.accelerator.distributed_type not in supported:
                raise ValueError(
                    f"{self.model_name} runs data parallel (one model copy per process); distributed type "
                    f"{self.accelerator.distributed_type} is not supported: use MULTI_GPU or MULTI_CPU"
                )
            local_rank = int(os.environ.get("LOCAL_RANK", self.accelerator.local_process_index))
            self._device = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
        else:
            self._device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        device_map = device_map or str(self._device)
        eval_logger.info(f"{self.model_name}: rank {self._rank} of {self._world_size} on {self._device}")

        self.load(
            pretrained,
            revision=revision,
            dtype=torch_dtype,
            device_map=device_map,
            attn_implementation=attn_implementation,
            trust_remote_code=trust_remote_code,
        )
        if chat_template is not None:
            self.processor.chat_template = chat_template
        self.tokenizer.padding_side = "left"
        if device_map == "auto":
            self._device = self.model.device
        eval_logger.info(f"{self.model_name}: pruning {self.pruning.to_dict()}")

    # ----- what a family adapter provides -------------------------------------------------------------------------

    # Which checkpoints an adapter wraps, for the check before any weights load.
    model_type: str
    model_class: type
    example_checkpoint: str

    def check_checkpoint(self, pretrained: str, **kwargs: Any) -> None:
        """Raise a clear error if ``pretrained`` is not a checkpoint this adapter wraps (reads the config only)."""
        config = AutoConfig.from_pretrained(pretrained, **kwargs)
        if config.model_type != self.model_type:
            raise ValueError(
                f"{self.model_name}: pretrained={pretrained} is a {config.model_type!r} checkpoint; {self.model_name} "
                f"wraps {self.model_class.__name__} checkpoints (model_type {self.model_type!r}, e.g. "
                f"{self.example_checkpoint})"
            )
        self.check_config(config, pretrained)

    def check_config(self, config: Any, pretrained: str) -> None:
        """Family-specific checks of a checkpoint's config, e.g. that its vision tower can give FoPru its map."""

    def load(self, pretrained: str, **kwargs: Any) -> None:
        """Set ``self.model``, ``self.processor`` and ``self.tokenizer``."""
        raise NotImplementedError

    def prepare(self, prompts: list[Prompt], continuations: list[str] | None = None) -> PreparedBatch:
        """Processor, vision tower, significance, selection: the pruned inputs for one batch of prompts.

        With ``continuations``, each one's tokens follow its prompt (for loglikelihood), after the assistant turn
        opens."""
        raise NotImplementedError

    def select_image_tokens(
        self, significance: torch.Tensor | None, grid: tuple[int, int], doc_key: str, image_index: int
    ) -> torch.Tensor:
        """Kept token indices, sorted, of one image (or view) laid out on ``grid``; random draws are seeded per doc
        and image, so they do not depend on batch composition or rank."""
        generator = None
        if self.pruning.strategy == "random":
            generator = torch.Generator().manual_seed(random_seed_for(self.pruning.seed, doc_key, image_index))
        return select_tokens(self.pruning, grid, significance, generator).to(self.device)

    # ----- lmms-eval plumbing --------------------------------------------------------------------------------------

    @property
    def batch_size(self) -> int:
        return self.batch_size_per_gpu

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    def tok_encode(self, string: str, **kwargs: Any) -> list[int]:
        return self.tokenizer.encode(string, add_special_tokens=False)

    def tok_decode(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens)

    # lmms-eval's evaluator calls clean() at the end of every evaluation, which deletes the model's modules; a sweep
    # (fopru_eval/sweep.py) sets keep_loaded so that one loaded model serves all its pruning configs.
    keep_loaded = False

    def clean(self) -> None:
        if not self.keep_loaded:
            super().clean()

    # ----- requests -> prompts -------------------------------------------------------------------------------------

    def _doc(self, task: str, split: str, doc_id: int) -> dict[str, Any]:
        return self.task_dict[task][split][doc_id]

    def _prompt_from_visuals(self, ctx: str, doc_to_visual: Any, doc_id: int, task: str, split: str) -> Prompt:
        """A simple-model request: build the user turn the way lmms-eval's chat tasks do (images, then the text)."""
        visuals = doc_to_visual(self._doc(task, split, doc_id)) if doc_to_visual is not None else []
        images = _as_images(visuals or [], self.model_name, task, doc_id)
        content = [{"type": "image", "url": image} for image in images] + [{"type": "text", "text": ctx}]
        return Prompt([{"role": "user", "content": content}], images, f"{task}/{split}/{doc_id}")

    def _prompt_from_messages(self, messages: Any, doc_id: int, task: str, split: str) -> Prompt:
        """A chat-model request: lmms-eval's messages, validated by its own protocol class."""
        chat = ChatMessages(messages=messages)
        images, videos, audios = chat.extract_media()
        if videos or audios:
            raise ValueError(
                f"{self.model_name}: {task} doc {doc_id} has video or audio input; only images are supported"
            )
        images = _as_images(images, self.model_name, task, doc_id)
        return Prompt(chat.model_dump()["messages"], images, f"{task}/{split}/{doc_id}")

    def generation_prompt(self, request: Instance) -> tuple[Prompt, dict[str, Any]]:
        if self.is_simple:
            ctx, gen_kwargs, doc_to_visual, doc_id, task, split = request.args
            return self._prompt_from_visuals(ctx, doc_to_visual, doc_id, task, split), gen_kwargs
        ctx, doc_to_messages, gen_kwargs, doc_id, task, split = request.args
        messages = doc_to_messages(self._doc(task, split, doc_id))
        return self._prompt_from_messages(messages, doc_id, task, split), gen_kwargs

    # ----- generation ----------------------------------------------------------------------------------------------

    def generate_until(self, requests: list[Instance]) -> list[GenerationResult]:
        prompts, all_gen_kwargs = (
            zip(*(self.generation_prompt(r) for r in requests), strict=True) if requests else ((), ())
        )
        results: list[GenerationResult | None] = [None] * len(requests)
        progress = tqdm(total=len(requests), disable=self.rank != 0, desc=f"{self.model_name} generating")
        for indices in self._batches(prompts, all_gen_kwargs):
            batch = [prompts[i] for i in indices]
            outputs = self._generate(batch, all_gen_kwargs[indices[0]])
            for i, output in zip(indices, outputs, strict=True):
                results[i] = output
            progress.update(len(indices))
        progress.close()
        return results  # type: ignore[return-value]

    def _generate(self, prompts: list[Prompt], gen_kwargs: dict[str, Any]) -> list[GenerationResult]:
        """One batch: prune, generate, decode. Any failure fails the run, naming the docs it was on."""
        try:
            with torch.inference_mode():
                batch = self.prepare(prompts)
                prompt_length = batch.inputs["input_ids"].shape[1]
                started = time.perf_counter()
                sequences = self.model.generate(**batch.inputs, **self._generation_config(gen_kwargs))
                new_tokens = sequences[:, prompt_length:].cpu()
                elapsed = time.perf_counter() - started
        except Exception as error:
            docs = ", ".join(p.doc_key for p in prompts)
            eval_logger.error(f"{self.model_name}: generation failed for {docs}: {error!r}")
            raise RuntimeError(f"{self.model_name}: generation failed for {docs}") from error
        texts = self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
        output_tokens = [_count_until_eos(row, self.eot_token_id) for row in new_tokens]
        log_metrics(
            total_elapsed_time=elapsed,
            total_gen_tokens=sum(output_tokens),
            avg_speed=sum(output_tokens) / elapsed if elapsed > 0 else 0.0,
            additional_metrics=_visual_token_metrics(batch),
        )
        return [
            GenerationResult(text=text, token_counts=batch.token_counts(i, output_tokens[i]))
            for i, text in enumerate(texts)
        ]

    def _generation_config(self, gen_kwargs: dict[str, Any]) -> dict[str, Any]:
        """lmms-eval gen_kwargs -> ``generate`` arguments, with the defaults of lmms-eval's own ``llava_hf``.

        As there, ``until`` is not applied (generation ends at EOS or max_new_tokens) and sampling is on only for a
        temperature above 0, so ``strategy=none`` answers exactly as ``llava_hf`` does.
        """
        temperature = float(gen_kwargs.get("temperature", 0) or 0)
        do_sample = temperature > 0
        return {
            "do_sample": do_sample,
            "temperature": temperature if do_sample else None,
            "top_p": gen_kwargs.get("top_p"),
            "num_beams": int(gen_kwargs.get("num_beams", 1) or 1),
            "max_new_tokens": int(gen_kwargs.get("max_new_tokens", 1024)),
            "use_cache": self.use_cache,
            "pad_token_id": self.eot_token_id,
            "eos_token_id": self.eot_token_id,
        }

    def _batches(self, prompts: tuple[Prompt, ...], all_gen_kwargs: tuple[dict, ...]) -> list[list[int]]:
        """Request indices in batches of equal gen_kwargs, longest prompts first so padding stays small."""
        groups: dict[str, list[int]] = {}
        for i, gen_kwargs in enumerate(all_gen_kwargs):
            groups.setdefault(json.dumps(gen_kwargs, sort_keys=True, default=str), []).append(i)
        batches = []
        for indices in groups.values():
            indices.sort(key=lambda i: -_prompt_size(prompts[i]))
            batches += [indices[start : start + self.batch_size] for start in range(0, len(indices), self.batch_size)]
        return batches

    # ----- loglikelihood -------------------------------------------------------------------------------------------

    def loglikelihood(self, requests: list[Instance]) -> list[GenerationResult]:
        """``(loss, is_greedy)`` per request: the continuation's mean negative log-likelihood per token after its
        prompt (lmms-eval's convention, as in its llava_hf: its multiple-choice scorer takes the argmin), and
        whether greedy decoding would produce the continuation.

        Results are wrapped in ``GenerationResult`` because lmms-eval 0.7.3 turns bare ``(ll, is_greedy)`` tuples
        into strings, which breaks multiple-choice tasks; the wrapper passes the tuple through untouched.
        """
        prompts, continuations = [], []
        for request in requests:
            ctx, doc_to_target, doc_to_visual, doc_id, task, split = request.args
            prompts.append(self._prompt_from_visuals(ctx, doc_to_visual, doc_id, task, split))
            target = doc_to_target if isinstance(doc_to_target, str) else doc_to_target(self._doc(task, split, doc_id))
            continuations.append(target)
        results: list[GenerationResult | None] = [None] * len(requests)
        progress = tqdm(total=len(requests), disable=self.rank != 0, desc=f"{self.model_name} scoring")
        for indices in self._batches(tuple(prompts), tuple({} for _ in prompts)):
            outputs = self._score([prompts[i] for i in indices], [continuations[i] for i in indices])
            for i, output in zip(indices, outputs, strict=True):
                results[i] = output
            progress.update(len(indices))
        progress.close()
        return results  # type: ignore[return-value]

    def _score(self, prompts: list[Prompt], continuations: list[str]) -> list[GenerationResult]:
        try:
            with torch.inference_mode():
                batch = self.prepare(prompts, continuations)
                targets = [self.tok_encode(c) for c in continuations]
                longest = max(len(t) for t in targets)
                # Left padding puts every continuation at the end of its row; the logits that predict it are the
                # ``len(target)`` positions before the last.
                logits = self.model(**batch.inputs, logits_to_keep=longest + 1).logits[:, :-1].float()
        except Exception as error:
            docs = ", ".join(p.doc_key for p in prompts)
            eval_logger.error(f"{self.model_name}: loglikelihood failed for {docs}: {error!r}")
            raise RuntimeError(f"{self.model_name}: loglikelihood failed for {docs}") from error
        results = []
        for i, target in enumerate(targets):
            target_ids = torch.tensor(target, device=logits.device)
            row = logits[i, logits.shape[1] - len(target) :]
            loss = -row.log_softmax(dim=-1).gather(-1, target_ids.unsqueeze(-1)).mean().item()
            is_greedy = bool((row.argmax(dim=-1) == target_ids).all())
            counts = batch.token_counts(i)
            results.append(GenerationResult(text=(loss, is_greedy), token_counts=counts))  # type: ignore[arg-type]
        return results

    # ----- multi-round ---------------------------------------------------------------------------------------------

    def generate_until_multi_round(self, requests: list[Instance]) -> list[GenerationResult]:
        """lmms-eval's multi-round protocol: after each answer the task's doc_to_text (simple) or doc_to_messages
        (chat) gives the next round, until it signals the end. Rounds of one doc depend on each other, so each doc
        runs on its own."""
        results = []
        for request in tqdm(requests, disable=self.rank != 0, desc=f"{self.model_name} multi-round"):
            if self.is_simple:
                ctx, gen_kwargs, doc_to_visual, doc_to_text, doc_id, task, split = request.args
                prompt = self._prompt_from_visuals(ctx, doc_to_visual, doc_id, task, split)
            else:
                ctx, doc_to_messages, gen_kwargs, doc_id, task, split = request.args
                prompt = self._prompt_from_messages(
                    doc_to_messages(self._doc(task, split, doc_id)), doc_id, task, split
                )
            doc = self._doc(task, split, doc_id)
            outputs: list[str] = []
            round_info = None
            counts: TokenCounts | None = None
            for round_idx in itertools.count(1):
                answer = self._generate([prompt], gen_kwargs)[0]
                outputs.append(answer.text)
                counts = _add_counts(counts, answer.token_counts)
                if self.is_simple:
                    visuals, next_ctx, terminal, outputs, round_info = doc_to_text(
                        doc, previous_output=outputs, round_idx=round_idx, previous_round_info=round_info
                    )
                    if terminal:
                        break
                    prompt = self._prompt_from_visuals(next_ctx, lambda _doc, v=visuals: v, doc_id, task, split)
                else:
                    messages, terminal, outputs, round_info = doc_to_messages(
                        doc, round_idx=round_idx, previous_output=outputs, previous_round_info=round_info
                    )
                    if terminal:
                        break
                    prompt = self._prompt_from_messages(messages, doc_id, task, split)
                outputs = list(outputs)
            results.append(GenerationResult(text=list(outputs), token_counts=counts))  # type: ignore[arg-type]
        return results


def _as_images(visuals: list[Any], model_name: str, task: str, doc_id: int) -> list[Image.Image]:
    images = []
    for visual in visuals:
        if not isinstance(visual, Image.Image):
            raise TypeError(
                f"{model_name}: {task} doc {doc_id} gives a {type(visual).__name__}; only PIL images are supported"
            )
        images.append(visual.convert("RGB"))
    return images


def _prompt_size(prompt: Prompt) -> int:
    text = sum(len(part.get("text", "")) for message in prompt.messages for part in _content(message))
    return text + 10_000 * len(prompt.images)


def _content(message: dict[str, Any]) -> list[dict[str, Any]]:
    content = message.get("content", [])
    return [{"type": "text", "text": content}] if isinstance(content, str) else content


def _count_until_eos(tokens: torch.Tensor, eos_id: int) -> int:
    """Generated tokens up to and including the first EOS; what follows it is batch padding."""
    eos = (tokens == eos_id).nonzero()
    return int(eos[0, 0]) + 1 if eos.numel() else tokens.numel()


def _visual_token_metrics(batch: PreparedBatch) -> dict[str, float]:
    total = sum(batch.visual_tokens_total)
    return {
        "visual_tokens_kept": sum(batch.visual_tokens_kept) / len(batch.visual_tokens_kept),
        "visual_tokens_total": total / len(batch.visual_tokens_total),
        "visual_keep_fraction": sum(batch.visual_tokens_kept) / total if total else 1.0,
    }


def _add_counts(total: TokenCounts | None, counts: TokenCounts | None) -> TokenCounts | None:
    """Field-wise sum of two rounds' counts (of the same class); a field missing in both stays missing."""
    if total is None or counts is None:
        return counts if total is None else total
    summed = {}
    for field in dataclasses.fields(total):
        mine, theirs = getattr(total, field.name), getattr(counts, field.name)
        summed[field.name] = None if mine is None and theirs is None else (mine or 0) + (theirs or 0)
    return type(total)(**summed)


def _positive_int(name: str, value: Any) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = 0
    if number < 1 or str(value).strip() != str(number):
        raise ValueError(f"{name}={value!r} is not supported; accepted values: integers >= 1 ('auto' is not supported)")
    return number


def _init_arguments(cls: type) -> list[str]:
    """The named arguments of ``cls.__init__`` and of every FoPru class above it, e.g. Qwen's pixel limits."""
    names: list[str] = []
    for klass in cls.__mro__:
        if issubclass(klass, FoPruLMM) and "__init__" in vars(klass):
            params = inspect.signature(klass.__init__).parameters
            names += [name for name in params if name not in ("self", "kwargs", *names)]
    return names


DTYPES = ("auto", "float32", "float16", "bfloat16")


def _torch_dtype(dtype: str) -> str | torch.dtype:
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r} is not supported; accepted values: {', '.join(DTYPES)}")
    return dtype if dtype == "auto" else getattr(torch, dtype)


def random_seed_for(seed: int, doc_key: str, image_index: int) -> int:
    """A per-image seed that depends only on the doc, so random selection is the same at any batch size or rank."""
    return zlib.crc32(f"{seed}/{doc_key}/{image_index}".encode())
