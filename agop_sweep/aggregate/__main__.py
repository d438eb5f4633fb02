"""``python -m agop_sweep.aggregate DIR [DIR ...]``: the command line of
:mod:`agop_sweep.aggregate.command` (defined there, so that the package can export ``main`` for the
``agop-aggregate`` console script without importing this module twice)."""

from agop_sweep.aggregate.command import main

if __name__ == "__main__":
    main()
