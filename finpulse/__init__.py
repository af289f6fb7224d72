"""Facts every finpulse package shares: project paths, usable CPU cores, percentiles.

This is the bottom floor: it imports only the standard library and numpy, and every other package
(``engine``, ``stream``, ``training``, ``build_engine``, ``bench``) may import it.
"""
