"""``python -m featdistill.run RECIPE``: train a student from a recipe (see :mod:`featdistill.cli.run`).

This short module keeps the command and ``featdistill.run.main`` stable while the CLI lives in ``cli/``.
"""

from .cli.run import main

__all__ = ["main"]

if __name__ == "__main__":
    raise SystemExit(main())
