"""The lmms-eval model class every FoPru adapter shares.

It turns lmms-eval requests into chat prompts, batches them, runs the wrapped model on the inputs that
``fopru_eval.families.prune_batch`` prunes, and reports per-sample token counts. An adapter (``llava.py``) names its
family (``fopru_eval/families/``) and, at most, how lmms-eval's own adapter for the family builds prompts and
finishes answers.
"""

from __future__ import annotations

import inspect
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any, ClassVar

import torch
from accelerate import Accelerator, DistributedType
from lmms_eval.api.instance import GenerationResult, Instance
from lmms_eval.api.model import lmms
from lmms_eval.models.model_utils.gen_metrics import log_metrics
from loguru import logger as eval_logger
from PIL import Image
from tqdm import tqdm

from fopru_eval.core.config import PRUNING_ARGS, PruningConfig
from fopru_eval.families import Family, Prompt, prune_batch
from fopru_model_adapters.args import positive_int, torch_dtype
from fopru_model_adapters.multi_round import MultiRoundMixin
from fopru_model_adapters.requests import (
    LoglikelihoodAnswer,
    PreparedBatch,
    VideoReader,
    VisualTokenLedger,
    prompt_from_messages,
    prompt_from_visuals,
    prompt_size,
)
from fopru_model_adapters.task_prompts import TaskPrompts

__all__ = ["FoPruLMM", "PreparedBatch", "Prompt"]

# lmms-eval forks workers to post-process docs; a Rust tokenizer thread pool that already ran batched calls then
# aborts the process at exit ("terminate called without an active exception"), which kills torchrun ranks.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


class FoPruLMM(MultiRoundMixin, lmms):
    """Shared request handling for the FoPru adapters. Subclasses set ``model_name`` and ``family_class``."""

    is_simple = True
    model_name = "fopru"
    family_class: ClassVar[type[Family]]
    # The lmms-eval model this adapter is a drop-in for: where a task keys its prompts by that name, requests are
    # rebuilt with them (``task_prompts.py``), so strategy=none scores as that model does.
    lmms_model: ClassVar[str]
    # What dtype=... defaults to: what lmms-eval's own adapter for the family loads, so strategy=none is a drop-in.
    default_dtype = "auto"

    def __init__(
        self,
        pretrained: str,
        revision: str = "main",
        device: str | None = None,
        dtype: str | None = None,
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
        # Every argument is checked before any weights load, so a typo costs seconds, not a model load; a misspelt
        # name is reported first, since it may be the budget the config would otherwise say is missing.
        if unknown := sorted(set(kwargs) - set(PRUNING_ARGS)):
            accepted = ", ".join((*_init_arguments(type(self)), *PRUNING_ARGS))
            raise ValueError(f"{self.model_name}: unknown model args {unknown}; accepted: {accepted}")
        self.pruning, _ = PruningConfig.from_model_args(kwargs)
        self.batch_size_per_gpu = positive_int("batch_size", batch_size, also=" ('auto' is not supported)")
        model_dtype = torch_dtype(dtype or self.default_dtype)
        self.use_cache = bool(use_cache)
        self.visual_tokens = VisualTokenLedger()
        self.task_prompts = TaskPrompts(self.model_name, self.lmms_model)
        self.family_class.check_checkpoint(
            pretrained, self.model_name, self.pruning, revision=revision, trust_remote_code=trust_remote_code
        )

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

        self.family = self.family_class.load(
            pretrained,
            processor_kwargs=self.processor_kwargs(),
            family_kwargs=self.family_kwargs(),
            revision=revision,
            dtype=model_dtype,
            device_map=device_map,
            attn_implementation=attn_implementation,
            trust_remote_code=trust_remote_code,
        )
        self.model, self.processor = self.family.model, self.family.processor
        self.tokenizer = self.processor.tokenizer
        self._config = self.model.config
        # As lmms-eval's adapters take it: the template that renders every prompt (the processor's, and the
        # tokenizer's where an adapter renders prompts with the tokenizer, as the simple LLaVA class does).
        self.chat_template = chat_template
        if chat_template is not None:
            self.processor.chat_template = chat_template
        self.tokenizer.padding_side = "left"
        if device_map == "auto":
            self._device = self.model.device
        eval_logger.info(f"{self.model_name}: pruning {self.pruning.to_dict()}")
        # Under `lmms-eval --wandb_args ...` lmms-eval's WandbLogger opens the run before the model loads, and records
        # model_args as one string: add what this adapter prunes as fields W&B can group and plot runs by.
        wandb = sys.modules.get("wandb")
        if wandb is not None and wandb.run is not None:
            about = {"adapter": self.model_name, "pretrained": pretrained, **self.pruning.to_dict()}
            wandb.run.config.update({"fopru": about}, allow_val_change=True)

    # ----- what an adapter may change ------------------------------------------------------------------------------

    def processor_kwargs(self) -> dict[str, Any]:
        """Arguments for the processor's ``from_pretrained``, e.g. the pixel limits lmms-eval's adapter uses."""
        return {}

    def family_kwargs(self) -> dict[str, Any]:
        """Arguments for the family's constructor."""
        return {}

    def prepare(self, prompts: list[Prompt], continuations: list[str] | None = None) -> PreparedBatch:
        """Processor, vision tower, significance, selection: the pruned inputs for one batch of prompts.

        With ``continuations``, each one's tokens follow its prompt (for loglikelihood), after the assistant turn
        opens."""
        continuation_ids = [self.tok_encode(c) for c in continuations] if continuations is not None else None
        return PreparedBatch(**vars(prune_batch(self.family, self.pruning, prompts, continuation_ids)))

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
    # (fopru_eval/tools/sweep/run.py) sets keep_loaded so that one loaded model serves all its pruning configs.
    keep_loaded = False

    def clean(self) -> None:
        # lmms-eval's evaluator calls clean() on every process once all requests have run, and only then summarises
        # its throughput block: the moment to gather the per-request visual token counts and log them once.
        if metrics := self.visual_tokens.gathered_metrics():
            log_metrics(total_elapsed_time=0.0, total_gen_tokens=0, avg_speed=0.0, additional_metrics=metrics)
        self.visual_tokens = VisualTokenLedger()
        if not self.keep_loaded:
            super().clean()

    # ----- requests -> prompts -------------------------------------------------------------------------------------

    def _doc(self, task: str, split: str, doc_id: int) -> dict[str, Any]:
        return self.task_dict[task][split][doc_id]

    def _prompt_from_visuals(self, ctx: str, doc_to_visual: Any, doc_id: int, task: str, split: str) -> Prompt:
        visuals = doc_to_visual(self._doc(task, split, doc_id)) if doc_to_visual is not None else []
        prompt = prompt_from_visuals(ctx, visuals or [], self.model_name, task, split, doc_id, self.video_reader())
        return self._as_sent(prompt)

    def _prompt_from_messages(self, messages: Any, doc_id: int, task: str, split: str) -> Prompt:
        prompt = prompt_from_messages(messages, self.model_name, task, split, doc_id, self.video_reader())
        return self._as_sent(prompt)

    def video_reader(self) -> VideoReader | None:
        """How a video path becomes frames, as lmms-eval's own adapter for the family reads it; None where this
        adapter reads no videos (they are refused, naming it)."""
        return None

    def _as_sent(self, prompt: Prompt) -> Prompt:
        prompt.images[:] = [self.image_as_sent(image) for image in prompt.images]
        return prompt

    def image_as_sent(self, image: Image.Image) -> Image.Image:
        """An image as lmms-eval's own adapter for the family hands it to the model's processing, whatever its mode
        (RGBA, LA, P with transparency, CMYK, I;16, ...). lmms-eval's ``llava_hf`` hands it over as it is, and the
        processor converts it to RGB (transformers' ``convert_to_rgb``): so here too."""
        return image

    def generation_prompt(self, request: Instance) -> tuple[Prompt, dict[str, Any]]:
        if self.is_simple:
            ctx, gen_kwargs, doc_to_visual, doc_id, task, split = request.args
            doc = partial(self._doc, task, split, doc_id)
            ctx, doc_to_visual, gen_kwargs = self.task_prompts.request(ctx, doc_to_visual, gen_kwargs, doc)
            return self._prompt_from_visuals(ctx, doc_to_visual, doc_id, task, split), gen_kwargs
        ctx, doc_to_messages, gen_kwargs, doc_id, task, split = request.args
        doc = partial(self._doc, task, split, doc_id)
        _, doc_to_messages, gen_kwargs = self.task_prompts.request(None, doc_to_messages, gen_kwargs, doc)
        messages = doc_to_messages(self._doc(task, split, doc_id))
        return self._prompt_from_messages(messages, doc_id, task, split), gen_kwargs

    # ----- generation ----------------------------------------------------------------------------------------------

    def generate_until(self, requests: list[Instance]) -> list[GenerationResult]:
        prompts, all_gen_kwargs = (
            zip(*(self.generation_prompt(r) for r in requests), strict=True) if requests else ((), ())
        )
        return self._in_batches(
            requests,
            self._batches(prompts, all_gen_kwargs),
            lambda indices: self._generate([prompts[i] for i in indices], all_gen_kwargs[indices[0]]),
            "generating",
        )

    def _in_batches(
        self,
        requests: list[Instance],
        batches: list[list[int]],
        run_batch: Callable[[list[int]], list[GenerationResult]],
        doing: str,
    ) -> list[GenerationResult]:
        """Each batch of request indices through ``run_batch``, results back in request order, token counts
        recorded."""
        results: list[GenerationResult | None] = [None] * len(requests)
        progress = tqdm(total=len(requests), disable=self.rank != 0, desc=f"{self.model_name} {doing}")
        for indices in batches:
            for i, output in zip(indices, run_batch(indices), strict=True):
                results[i] = output
            progress.update(len(indices))
        progress.close()
        self.visual_tokens.record(requests, results)  # type: ignore[arg-type]
        return results  # type: ignore[return-value]

    @contextmanager
    def _failing_loudly(self, prompts: list[Prompt], doing: str) -> Iterator[None]:
        """Any failure in a batch fails the run, naming the docs it was on: no answer is ever left blank."""
        try:
            with torch.inference_mode():
                yield
        except Exception as error:
            docs = ", ".join(p.doc_key for p in prompts)
            eval_logger.error(f"{self.model_name}: {doing} failed for {docs}: {error!r}")
            raise RuntimeError(f"{self.model_name}: {doing} failed for {docs}") from error

    def _generate(self, prompts: list[Prompt], gen_kwargs: dict[str, Any]) -> list[GenerationResult]:
        """One batch: prune, generate, decode."""
        with self._failing_loudly(prompts, "generation"):
            batch = self.prepare(prompts)
            prompt_length = batch.inputs["input_ids"].shape[1]
            started = time.perf_counter()
            with batch.running():
                sequences = self.model.generate(**batch.inputs, **self.generation_kwargs(gen_kwargs))
            new_tokens = sequences[:, prompt_length:].cpu()
            elapsed = time.perf_counter() - started
        texts = self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
        output_tokens = [_count_until_eos(row, self.eot_token_id) for row in new_tokens]
        log_metrics(
            total_elapsed_time=elapsed,
            total_gen_tokens=sum(output_tokens),
            avg_speed=sum(output_tokens) / elapsed if elapsed > 0 else 0.0,
        )
        return [
            GenerationResult(text=text, token_counts=batch.token_counts(i, output_tokens[i]))
            for i, text in enumerate(texts)
        ]

    def generation_kwargs(self, gen_kwargs: dict[str, Any]) -> dict[str, Any]:
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
            indices.sort(key=lambda i: -prompt_size(prompts[i]))
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
            doc = partial(self._doc, task, split, doc_id)
            ctx, doc_to_visual, _ = self.task_prompts.request(ctx, doc_to_visual, {}, doc)
            prompts.append(self._prompt_from_visuals(ctx, doc_to_visual, doc_id, task, split))
            target = doc_to_target if isinstance(doc_to_target, str) else doc_to_target(self._doc(task, split, doc_id))
            continuations.append(target)
        return self._in_batches(
            requests,
            self._batches(tuple(prompts), tuple({} for _ in prompts)),
            lambda indices: self._score([prompts[i] for i in indices], [continuations[i] for i in indices]),
            "scoring",
        )

    def _score(self, prompts: list[Prompt], continuations: list[str]) -> list[GenerationResult]:
        with self._failing_loudly(prompts, "loglikelihood"):
            batch = self.prepare(prompts, continuations)
            targets = [self.tok_encode(c) for c in continuations]
            longest = max(len(t) for t in targets)
            # Left padding puts every continuation at the end of its row; the logits that predict it are the
            # ``len(target)`` positions before the last.
            with batch.running():
                logits = self.model(**batch.inputs, logits_to_keep=longest + 1).logits[:, :-1].float()
        results = []
        for i, target in enumerate(targets):
            target_ids = torch.tensor(target, device=logits.device)
            row = logits[i, logits.shape[1] - len(target) :]
            loss = -row.log_softmax(dim=-1).gather(-1, target_ids.unsqueeze(-1)).mean().item()
            is_greedy = bool((row.argmax(dim=-1) == target_ids).all())
            counts = batch.token_counts(i)
            answer = LoglikelihoodAnswer(loss, is_greedy)
            results.append(GenerationResult(text=answer, token_counts=counts))  # type: ignore[arg-type]
        return results


def _count_until_eos(tokens: torch.Tensor, eos_id: int) -> int:
    """Generated tokens up to and including the first EOS; what follows it is batch padding."""
    eos = (tokens == eos_id).nonzero()
    return int(eos[0, 0]) + 1 if eos.numel() else tokens.numel()


def _init_arguments(cls: type) -> list[str]:
    """The named arguments of ``cls.__init__`` and of every FoPru class above it, e.g. Qwen's pixel limits."""
    names: list[str] = []
    for klass in cls.__mro__:
        if issubclass(klass, FoPruLMM) and "__init__" in vars(klass):
            params = inspect.signature(klass.__init__).parameters
            names += [name for name in params if name not in ("self", "kwargs", *names)]
    return names
