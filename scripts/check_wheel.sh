#!/usr/bin/env bash
# The package as users install it: build the wheel, install it into a fresh virtual environment,
# and from a directory outside the checkout train on the emulator, compare backends layer by
# layer, and run the test suite against the installed copy (not the checkout's sources).
#     bash scripts/check_wheel.sh            (PYTHON=python3 by default)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-python3}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

# Build from a copy of the files git knows (tracked, or untracked and not ignored), so that no
# leftover build/ directory of the checkout slips stale modules into the wheel.
mkdir "$WORK/src"
git -C "$ROOT" ls-files -z --cached --others --exclude-standard \
    | tar -C "$ROOT" --null --ignore-failed-read -T - -cf - | tar -xf - -C "$WORK/src"
"$PYTHON" -m pip wheel -q --no-deps -w "$WORK/dist" "$WORK/src"
"$PYTHON" -m venv "$WORK/venv"
PIP="$WORK/venv/bin/python -m pip"
$PIP install -q --upgrade pip
WHEEL=$(ls "$WORK"/dist/gpuconv-*.whl)
$PIP install -q "$WHEEL[test]"

mkdir "$WORK/elsewhere"
cd "$WORK/elsewhere"
where=$("$WORK/venv/bin/python" -c "import gpuconv, os; print(os.path.dirname(gpuconv.__file__))")
case "$where" in
    "$ROOT"*) echo "check_wheel: gpuconv was imported from the checkout ($where), not the wheel" >&2; exit 1 ;;
esac
echo "check_wheel: gpuconv $("$WORK/venv/bin/gpuconv" --version) imported from $where"
"$WORK/venv/bin/gpuconv" info
"$WORK/venv/bin/gpuconv" train --epochs 1 --backend emulator
"$WORK/venv/bin/gpuconv" check --model lenet --backends numpy,emulator
# The suite against the installed package: pytest puts tests/ (not the checkout) on sys.path.
rc=0
"$WORK/venv/bin/python" -m pytest -q -p no:cacheprovider -c "$ROOT/setup.cfg" --rootdir "$ROOT" "$ROOT/tests" || rc=$?
if [ "$rc" -eq 5 ]; then echo "check_wheel: no tests collected" >&2; exit 1; fi
exit "$rc"
