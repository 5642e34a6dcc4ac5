"""The visual-token statistics of lmms-eval's throughput block: per request, text-only requests and rank padding
left out, whatever the batching."""

from __future__ import annotations

from lmms_eval.api.instance import GenerationResult, Instance

from fopru_model_adapters.requests import VisualTokenCounts, VisualTokenLedger


def request(doc_id: int, idx: int = 0, padding: bool = False) -> Instance:
    metadata = {"task": "t", "doc_id": doc_id, "repeats": 1, **({"__padding_only__": True} if padding else {})}
    return Instance("generate_until", (), idx=idx, metadata=metadata)


def result(kept: int, total: int) -> GenerationResult:
    return GenerationResult("answer", VisualTokenCounts(visual_tokens_kept=kept, visual_tokens_total=total))


def test_statistics_are_per_request_and_leave_out_text_only_and_padding_requests() -> None:
    ledger = VisualTokenLedger()
    # Two batches of different sizes: averaging per batch would give (9 + 6) / 2 kept; per request it is 8 of 32.
    ledger.record([request(0), request(1)], [result(9, 36), result(9, 36)])
    ledger.record([request(2)], [result(6, 24)])
    # A text-only request has no visual tokens to keep: it counts neither as kept nor as pruned.
    ledger.record([request(3)], [result(0, 0)])
    # The padding request an uneven rank runs again, and a request seen twice, are counted once.
    ledger.record([request(2, padding=True), request(0)], [result(6, 24), result(9, 36)])
    assert ledger.gathered_metrics() == {
        "visual_tokens_kept": 8,
        "visual_tokens_total": 32,
        "visual_keep_fraction": 0.25,
    }


def test_a_run_with_only_text_reports_no_visual_statistics() -> None:
    ledger = VisualTokenLedger()
    ledger.record([request(0)], [result(0, 0)])
    assert ledger.gathered_metrics() == {}
