"""``fopru-eval``: the package's own commands (the lmms-eval adapters need none; they run under ``lmms-eval``)."""

from __future__ import annotations

import argparse
import sys

from fopru_eval import bench, sweep
from fopru_eval.random_llava import MID, TINY, save_random_llava


def make_random_llava(args: argparse.Namespace) -> int:
    path = save_random_llava(args.path, size={"tiny": TINY, "mid": MID}[args.size], seed=args.seed)
    print(f"saved a random-weight {args.size} LLaVA-1.5-architecture checkpoint to {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fopru-eval", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    bench.add_arguments(commands.add_parser("bench", help=bench.__doc__.splitlines()[0]))
    sweep.add_arguments(commands.add_parser("sweep", help=sweep.__doc__.splitlines()[0]))

    random_llava = commands.add_parser(
        "make-random-llava", help="save a random-weight LLaVA checkpoint, built offline, to try the adapters on"
    )
    random_llava.add_argument("path", help="directory to save the checkpoint and processor to")
    random_llava.add_argument("--size", choices=("tiny", "mid"), default="tiny")
    random_llava.add_argument("--seed", type=int, default=0)
    random_llava.set_defaults(run=make_random_llava)

    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
