"""``finpulse backtest``: do the worker's negative-surge alerts precede bad returns? (issue 16, part 3)

:mod:`.analysis` holds the arithmetic (prices, joins, random baselines, bootstrap), :mod:`.report` the
numbers and the report folder, :mod:`.run` the replay through the real pipeline, :mod:`.command` the CLI.
"""
