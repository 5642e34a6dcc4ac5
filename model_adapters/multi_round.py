"""lmms-eval's multi-round protocol, for every FoPru adapter."""

from __future__ import annotations

import itertools

from lmms_eval.api.instance import GenerationResult, Instance, TokenCounts
from tqdm import tqdm

from fopru_model_adapters.requests import add_counts


class MultiRoundMixin:
    """``generate_until_multi_round`` on top of ``FoPruLMM``'s ``_generate``, ``_doc`` and prompt builders."""

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
                counts = add_counts(counts, answer.token_counts)
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
        self.visual_tokens.record(requests, results)
        return results
