"""``python -m featdistill.inspect RECIPE``: dark knowledge and layer similarity before (and after) training (see
:mod:`featdistill.cli.inspect`).

This short module keeps the command and ``featdistill.inspect.main`` stable while the CLI lives in ``cli/``.
"""

from .cli.inspect import main

__all__ = ["main"]

if __name__ == "__main__":
    raise SystemExit(main())
