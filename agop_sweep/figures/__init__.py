"""Figures of runs, built as :class:`matplotlib.figure.Figure` objects (no pyplot: no global
state, safe in worker processes) and written atomically.

- :mod:`agop_sweep.figures.style`: the shared look and the helpers the per-run figures and
  the aggregate both use.
- :mod:`agop_sweep.figures.run`: a run's plots/training_analysis and plots/features
  (:func:`~agop_sweep.figures.run.save_run_figures`).
- ``python -m agop_sweep.figures RUN_DIR [--per-channel]`` redraws one run's figures.
"""
