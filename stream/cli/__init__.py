"""The ``finpulse`` command line and what only it needs: demo, replay, console, worker supervision, model resolution.

This is the top floor: it may import every other package; nothing imports it back.
"""
