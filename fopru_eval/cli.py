"""``fopru-eval``: the package's own commands (the lmms-eval adapters need none; they run under ``lmms-eval``)."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fopru-eval", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    from fopru_eval import bench

    bench.add_arguments(commands.add_parser("bench", help=bench.__doc__.splitlines()[0]))

    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
