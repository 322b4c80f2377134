"""The command line: :mod:`.run` (``python -m featdistill.run``), :mod:`.build` (the recipe's Distiller),
:mod:`.teacher` (train or load the teacher, and its cache), :mod:`.report` (summary, latency, curves),
:mod:`.inspect` and :mod:`.inspect_output` (``python -m featdistill.inspect``: dark knowledge and layer
similarity before training, and after a run), :mod:`.generate` and :mod:`.sampling` (``python -m
featdistill.generate``: the teacher's text for sequence-level KD)."""
