#!/usr/bin/env bash
# Install Open MPI (Debian/Ubuntu packages) and mpi4py into a Python environment, for the
# data-parallel tests and `mpirun -np N gpuconv train`. Idempotent and non-interactive.
#
#   scripts/install_mpi.sh [PYTHON]      (default: .venv/bin/python, else python3)
#
# apt-get needs root (or sudo); without either, an Open MPI already on PATH is used as it is.
# mpi4py is pip's (gpuconv's `mpi` extra); where pip has no wheel for this Python it builds
# mpi4py from source against Open MPI's mpicc.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${1:-}"
if [ -z "$PY" ]; then
    if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi

if ! command -v mpirun >/dev/null 2>&1 || ! command -v mpicc >/dev/null 2>&1; then
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then
        if command -v sudo >/dev/null 2>&1; then SUDO="sudo -n"; else
            echo "install_mpi: Open MPI is missing and apt-get needs root: install openmpi-bin and libopenmpi-dev" >&2
            exit 1
        fi
    fi
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -q
    $SUDO apt-get install -y -q openmpi-bin libopenmpi-dev
fi

if ! "$PY" -c "import mpi4py" >/dev/null 2>&1; then
    MPICC="$(command -v mpicc)" "$PY" -m pip install -q "mpi4py>=3.1"
fi
"$PY" -c "import mpi4py; print('install_mpi: mpi4py', mpi4py.__version__)"
mpirun --version | head -n1
