"""Redraw the figures of one run from its files:

    python -m agop_sweep.figures RUN_DIR [--per-channel] [--metric M]

``--metric``: the per-layer curve of training_analysis, a name in ``metrics``
(agop_sweep.analyze.nfa.METRICS), weight_change, alpha_star, alpha_corr or, for runs that recorded
every kind, alpha_star_<nfm>_<corr> / alpha_corr_<nfm>_<corr> (default: the run's primary).

Bad input (no results.json, not one this version reads, a features.npz that is not one) gives
one line on stderr naming the file, exit 1, and draws nothing.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from agop_sweep.errors import UserError, exit_on_user_error
from agop_sweep.figures.run import save_run_figures
from agop_sweep.figures.style import LAYER_KEYS, alpha_keys_of
from agop_sweep.store.record import RunRecord

PROG = "python -m agop_sweep.figures"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog=PROG, description="Redraw the figures of one run from its files.")
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--per-channel", action="store_true",
                        help="show each colour channel of the feature images separately")
    parser.add_argument("--metric", default=None,
                        help="the per-layer curve of training_analysis: a correlation variant or "
                             f"{', '.join(LAYER_KEYS)}, alpha_star_raw_cos, ... (default: the run's primary)")
    args = parser.parse_args(argv)
    with exit_on_user_error(PROG):
        record = RunRecord.in_dir(args.run_dir)
        _check_metric(record, args.metric)
        written = save_run_figures(record, args.run_dir, per_channel=args.per_channel, metric=args.metric,
                                   strict=True)
    for path in written:
        print(path)



def _check_metric(record: RunRecord, metric: str | None) -> None:
    known = [*record.metric_names(), *(k for k in LAYER_KEYS if any(
        k in entry for _, entry in record.layer_entries())), *alpha_keys_of(record)]
    if metric is not None and metric not in known:
        raise UserError(f"--metric {metric} is not in this run; choose one of {', '.join(known) or '(none)'}")


if __name__ == "__main__":
    main()
