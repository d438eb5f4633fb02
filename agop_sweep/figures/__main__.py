"""Redraw the figures of one run from its files:

    python -m agop_sweep.figures RUN_DIR [--per-channel]

Bad input (no results.json, not one this version reads) gives one line on stderr, exit 1.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from agop_sweep.errors import exit_on_user_error
from agop_sweep.figures.run import save_run_figures
from agop_sweep.record import RunRecord

PROG = "python -m agop_sweep.figures"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog=PROG, description="Redraw the figures of one run from its files.")
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--per-channel", action="store_true",
                        help="show each colour channel of the feature images separately")
    args = parser.parse_args(argv)
    with exit_on_user_error(PROG):
        record = RunRecord.in_dir(args.run_dir)
        written = save_run_figures(record, args.run_dir, per_channel=args.per_channel)
    for path in written:
        print(path)


if __name__ == "__main__":
    main()
