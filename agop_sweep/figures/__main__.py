"""Redraw the figures of one run from its files:

    python -m agop_sweep.figures RUN_DIR [--per-channel]

Bad input (no results.json, not one this version reads) gives one line on stderr, exit 1.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from agop_sweep.figures.run import save_run_figures
from agop_sweep.record import FILENAME, RecordError, RunRecord

PROG = "python -m agop_sweep.figures"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog=PROG, description="Redraw the figures of one run from its files.")
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--per-channel", action="store_true",
                        help="show each colour channel of the feature images separately")
    args = parser.parse_args(argv)
    try:
        record = RunRecord.in_dir(args.run_dir)
    except RecordError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    except OSError as e:
        print(f"{PROG}: error: cannot read {args.run_dir / FILENAME}: {e.strerror or e}", file=sys.stderr)
        raise SystemExit(1) from None
    try:
        written = save_run_figures(record, args.run_dir, per_channel=args.per_channel)
    except OSError as e:
        print(f"{PROG}: error: cannot write {e.filename or args.run_dir}: {e.strerror or e}", file=sys.stderr)
        raise SystemExit(1) from None
    for path in written:
        print(path)


if __name__ == "__main__":
    main()
