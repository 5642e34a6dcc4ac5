"""``fopru-eval``: the package's own commands (the lmms-eval adapters need none; they run under ``lmms-eval``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fopru_eval.tools import bench, sweep


def make_random(args: argparse.Namespace) -> int:
    """A random-weight checkpoint of the adapter's family, built offline, to try the adapters on."""
    model = bench.FAMILIES[args.model]
    path = model.save(args.path, size=model.sizes[args.size])
    print(f"saved a random-weight {args.size} {model.label} checkpoint for {args.model} to {path}")
    return 0


def demo(args: argparse.Namespace) -> int:
    """The shipped demo model on the shipped fopru_demo benchmark: every method at peers' budgets, the curve, the
    table per question kind and a picture of the tokens each method keeps."""
    from fopru_eval.tools.demo.run import run_demo

    checkpoint = Path(args.checkpoint) if args.checkpoint else None
    return run_demo(Path(args.output_path), args.split, args.limit, args.wandb_project, checkpoint)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fopru-eval", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    bench.add_arguments(commands.add_parser("bench", help=bench.__doc__.splitlines()[0]))
    sweep.add_arguments(commands.add_parser("sweep", help=sweep.__doc__.splitlines()[0]))

    demo_parser = commands.add_parser("demo", help=demo.__doc__.splitlines()[0])
    demo_parser.add_argument("--output-path", default="fopru-demo", help="where the curve and results go")
    demo_parser.add_argument("--wandb-project", help="also log the curve to this W&B project")
    demo_parser.add_argument(
        "--split", choices=("test", "dev"), default="test", help="dev: the split choices are made on (default test)"
    )
    demo_parser.add_argument("--limit", type=int, help="questions to run, for a quick look (default all 500)")
    demo_parser.add_argument(
        "--checkpoint",
        help="a demo model of your own (python -m fopru_eval.tools.demo.train --output DIR); default: the shipped one",
    )
    demo_parser.set_defaults(run=demo)

    for command, default_model in (("make-random", None), ("make-random-llava", "llava_fopru")):
        maker = commands.add_parser(command, help=make_random.__doc__ + (" (LLaVA-1.5)" if default_model else ""))
        if default_model is None:
            maker.add_argument("model", choices=sorted(bench.FAMILIES), help="the adapter the checkpoint is for")
        maker.add_argument("path", help="directory to save the checkpoint and processor to")
        maker.add_argument("--size", choices=("tiny", "mid"), default="tiny")
        maker.set_defaults(run=make_random, model=default_model)

    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
