"""Scoring for fopru_shapes_submit: exact match, plus a submission file as leaderboard tasks write one."""

from __future__ import annotations

import json
from typing import Any

from lmms_eval.tasks._task_utils.file_utils import generate_submission_file
from loguru import logger

SUBMISSION_FILE = "fopru_shapes_submission.json"


def _normalize(text: str) -> str:
    # As fopru_shapes_gen: models answer "Red." or " red"; the gold answers are lower-case single words.
    text = text.strip().lower()
    while text.endswith("."):
        text = text[:-1].rstrip()
    return text


def fopru_submit_process_results(doc: dict[str, Any], results: list[str]) -> dict[str, Any]:
    prediction = _normalize(results[0] if results else "")
    return {
        "exact_match": float(prediction == _normalize(doc["answer"])),
        "submission": {"question_id": doc["question_id"], "answer": prediction},
    }


def fopru_aggregate_submission(results: list[dict[str, Any]], args: Any) -> None:
    """Write every doc's answer to <output_path>/submissions/, as lmms-eval's textvqa_val does.

    ``args`` is the run's CLI namespace (``output_path``); without one the file lands in ./submissions/.
    Returns None: the score of a submission comes from the leaderboard, not from the harness.
    """
    path = generate_submission_file(SUBMISSION_FILE, args)
    with open(path, "w") as file:
        json.dump(sorted(results, key=lambda r: r["question_id"]), file, indent=1)
    logger.info(f"Submission file saved to {path}")
