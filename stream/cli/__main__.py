"""``python -m stream.cli``: the same as the ``finpulse`` console script."""

from stream.cli.main import main

main()
