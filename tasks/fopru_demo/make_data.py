"""Write the fopru_demo test split (or its dev split): held-out scenes and questions from
``fopru_eval.tools.demo.scenes``.

The test scenes use seeds from ``scenes.TEST_SEED_OFFSET`` upwards and the dev scenes from ``scenes.DEV_SEED_OFFSET``;
training draws neither. The four question kinds come in turn, 125 of each. A row holds its scene's seed and the
objects placed, not the pixels: ``utils.demo_doc_to_visual`` draws the image from the seed. The output is
deterministic, so rerunning the script rewrites the same rows.

    HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 python tasks/fopru_demo/make_data.py [--split dev]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import datasets

from fopru_eval.tools.demo import scenes

NUM_DOCS = 500


def build_dataset(num_docs: int = NUM_DOCS, split: str = "test") -> datasets.Dataset:
    make_docs = scenes.make_dev_docs if split == "dev" else scenes.make_test_docs
    rows = []
    for index, (scene, question) in enumerate(make_docs(num_docs)):
        layout = [{**vars(o), "position": scenes.position_name(o.row, o.col)} for o in scene.objects]
        rows.append(
            {
                "question_id": f"fopru_demo{'_dev' if split == 'dev' else ''}_{index:04d}",
                "scene_seed": scene.seed,
                "question": question.text,
                "answer": question.answer,
                "question_kind": question.kind,
                "num_objects": len(scene.objects),
                "layout": json.dumps(layout),
            }
        )
    features = datasets.Features(
        {
            "question_id": datasets.Value("string"),
            "scene_seed": datasets.Value("int64"),
            "question": datasets.Value("string"),
            "answer": datasets.Value("string"),
            "question_kind": datasets.Value("string"),
            "num_objects": datasets.Value("int64"),
            "layout": datasets.Value("string"),
        }
    )
    return datasets.Dataset.from_dict({name: [row[name] for row in rows] for name in features}, features=features)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--split", choices=("test", "dev"), default="test")
    parser.add_argument("--out", type=Path, help="default data/fopru_demo.parquet, or data/fopru_demo_dev.parquet")
    args = parser.parse_args()
    name = "fopru_demo_dev.parquet" if args.split == "dev" else "fopru_demo.parquet"
    args.out = args.out or Path(__file__).resolve().parent / "data" / name
    args.out.parent.mkdir(parents=True, exist_ok=True)
    build_dataset(split=args.split).to_parquet(str(args.out))
    print(f"wrote {args.out} ({args.out.stat().st_size / 1024:.1f} KiB)")


if __name__ == "__main__":
    main()
