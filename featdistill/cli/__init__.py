"""The command line: :mod:`.run` (``python -m featdistill.run``), :mod:`.teacher` (train or load the teacher,
and its cache) and :mod:`.report` (summary, latency, curves)."""
