"""``python -m featdistill.generate RECIPE --samples N``: the teacher's text for sequence-level KD (see
:mod:`featdistill.cli.generate`).

This short module keeps the command stable while the CLI lives in ``cli/``.
"""

from .cli.generate import main

__all__ = ["main"]

if __name__ == "__main__":
    raise SystemExit(main())
