"""``python -m agop_sweep.analyze DIR [key=value ...] [--force]``: the command line of
:mod:`agop_sweep.analyze.command`."""

from agop_sweep.analyze.command import main

if __name__ == "__main__":
    main()
