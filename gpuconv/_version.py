"""gpuconv's version: one definition, read by the package, the build (setup.cfg) and the caches."""
__version__ = "0.1.0"
