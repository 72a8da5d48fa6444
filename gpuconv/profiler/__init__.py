"""Static and modelled performance facts of gpuconv's kernels, without a GPU.

* ``toolchain``  finds nvcc, NVRTC, cuobjdump and nvdisasm (a CUDA toolkit or the pip packages);
* ``resources``  registers, spills, stack and shared memory of every kernel name expression;
* ``sass``       the SASS instruction mix of a kernel and of its innermost hot loop;
* ``occupancy``  theoretical occupancy by the CUDA occupancy rules of sm_80/86/89/90;
* ``static``     the three above for one .cu file, compiled once and cached on disk;
* ``model``      a time estimate from measured access counts and the static facts.

The dynamic side (sectors, wavefronts per source line) is ``gpuconv.emulator.profile``; the
``gpuconv profile`` command puts both together for the benchmark suite (docs/profiling.md).
"""
