"""The ``gpuconv`` command-line tools: train, check, bench, info.

The library (``gpuconv.functional``, ``nn``, ``backends``, ...) never imports this package; the
tools import the library. ``harness`` holds what the tools share: the backend factory, the timers,
the tolerance of a result, and writing and validating the JSON documents they produce.
"""
