"""A task's prompts as lmms-eval builds them for the model a FoPru adapter is a drop-in for.

lmms-eval picks a task's model-keyed settings by the ``--model`` string (``Task._prepare_model_specific_config``):
``lmms_eval_specific_kwargs`` (prompts), ``model_specific_generation_kwargs`` and ``model_specific_target_kwargs``. A
``qwen3_vl_fopru`` run would get a task's defaults where the task gives ``qwen3_vl`` prompts of its own (mmmu_val,
videomme, ...), so its unpruned score would not be Qwen3-VL's. lmms-eval offers no way for a model to name the key
it should be read under, and it builds a request's context before the model sees it. So the adapter rebuilds the
request from the task itself: the task object is the owner of the bound ``doc_to_visual`` / ``doc_to_messages`` in
every request, and a shallow copy of it with the wrapped model's prompt kwargs renders the doc again (the task itself
is never changed). Generation kwargs keyed by the wrapped model are laid over the request's. Target kwargs (what a
loglikelihood request scores) cannot be rebuilt this way: a task that keys them by the wrapped model gets a warning.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from loguru import logger as eval_logger


@dataclass
class KeyedTask:
    """One task, as lmms-eval would have built it for the model ``lmms_model``."""

    task: Any  # the shallow copy of lmms-eval's task object, with the wrapped model's prompt kwargs
    original: Any  # lmms-eval's task object, as it built the requests
    generation_kwargs: dict[str, Any]

    def context(self, ctx: str, doc: dict[str, Any]) -> str:
        """A simple request's context, its doc text rendered with the wrapped model's kwargs (what comes before the
        doc text, e.g. a task description, stays)."""
        default_text = self.original.doc_to_text(doc)
        if isinstance(default_text, str) and ctx.endswith(default_text):
            return ctx[: len(ctx) - len(default_text)] + self.task.doc_to_text(doc)
        raise ValueError(
            f"task {self.original.config.task}: its context does not end with the doc's text, so it cannot be "
            "rebuilt with the wrapped model's prompts"
        )


class TaskPrompts:
    """Per task, whether and how an adapter's requests are rebuilt with the prompts of ``lmms_model``."""

    def __init__(self, model_name: str, lmms_model: str) -> None:
        self.model_name = model_name
        self.lmms_model = lmms_model
        self.tasks: dict[str, KeyedTask | None] = {}

    def request(
        self, ctx: str | None, doc_function: Any, gen_kwargs: dict[str, Any], doc: Callable[[], dict[str, Any]]
    ) -> tuple[str | None, Any, dict[str, Any]]:
        """A request's context (None for a chat request, which has none to rebuild), its task's bound
        ``doc_to_visual`` / ``doc_to_messages`` and its gen_kwargs, as lmms-eval builds them for ``lmms_model`` where
        the task keys them by that name; ``doc`` gives the request's doc."""
        keyed = self.keyed(doc_function)
        if keyed is None:
            return ctx, doc_function, gen_kwargs
        if ctx is not None:
            ctx = keyed.context(ctx, doc())
        rebuilt = getattr(keyed.task, doc_function.__name__)
        return ctx, rebuilt, {**gen_kwargs, **keyed.generation_kwargs}

    def keyed(self, bound_method: Any) -> KeyedTask | None:
        """The task behind a request's bound ``doc_to_visual`` / ``doc_to_messages``, rebuilt for ``lmms_model``;
        None where lmms-eval already built it so (the task keys nothing by either model name, or keys ours)."""
        task = getattr(bound_method, "__self__", None)
        config = getattr(task, "config", None)
        name = getattr(config, "task", None)
        if config is None or name is None:
            return None
        if name not in self.tasks:
            self.tasks[name] = self._rebuild(task, config, name)
        return self.tasks[name]

    def _rebuild(self, task: Any, config: Any, name: str) -> KeyedTask | None:
        if getattr(task, "model_name", None) == self.lmms_model:
            return None
        prompts = _keyed(config.lmms_eval_specific_kwargs, self.lmms_model, self.model_name)
        generation = _keyed(config.model_specific_generation_kwargs, self.lmms_model, self.model_name)
        if _keyed(config.model_specific_target_kwargs, self.lmms_model, self.model_name) is not None:
            eval_logger.warning(
                f"{self.model_name}: task {name} keys model_specific_target_kwargs by {self.lmms_model!r}; lmms-eval "
                f"gave this run its default targets, which {self.model_name} cannot rebuild"
            )
        if prompts is None and generation is None:
            return None
        twin = copy.copy(task)
        if prompts is not None:
            twin.lmms_eval_specific_kwargs = prompts
        eval_logger.info(
            f"{self.model_name}: task {name} prompts as for lmms-eval's {self.lmms_model} (its "
            f"{'lmms_eval_specific_kwargs' if prompts is not None else 'model_specific_generation_kwargs'}"
            f"[{self.lmms_model!r}]), not with the defaults lmms-eval picked for the model name {self.model_name!r}"
        )
        return KeyedTask(twin, task, generation or {})


def _keyed(settings: Any, lmms_model: str, model_name: str) -> dict[str, Any] | None:
    """``settings[lmms_model]`` where the task keys settings by the wrapped model and not by ours."""
    if isinstance(settings, dict) and lmms_model in settings and model_name not in settings:
        return settings[lmms_model]
    return None
