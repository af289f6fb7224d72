"""finpulse query API: a read-only service over the worker's Redis windows and alert topic (``finpulse serve``)."""
