"""Packaging is declared in setup.cfg; this adds what setup.cfg cannot say: the CUDA sources of the
top-level cuda/ directory ship inside the package as gpuconv/kernels (with cuda/emu as
gpuconv/kernels/emu), where gpuconv._paths finds them in an installed copy."""
from setuptools import find_namespace_packages, setup

setup(
    packages=(find_namespace_packages(include=["gpuconv", "gpuconv.*"])
              + ["gpuconv.kernels", "gpuconv.kernels.emu"]),
    package_dir={"gpuconv.kernels": "cuda"},
    package_data={"gpuconv._data": ["*.npz", "*.txt"], "gpuconv.kernels": ["*.cu", "*.cuh"],
                  "gpuconv.kernels.emu": ["*.h", "*.cpp"]},
)
