#!/usr/bin/env bash
# Prepare, on this (CPU) machine, what benchmarks/gpu/check.sh needs on the GPU machine, which
# has Python 3.12 and torch but no DeepSpeed, pydantic or hjson, and reaches no package index:
#   .whl/         the wheels it lacks, for CPython 3.12 on x86-64 Linux, installed there with
#                 --no-deps: DeepSpeed (built here as a pure-Python wheel; its C++ ops JIT-compile
#                 on first use), pydantic + pydantic-core, annotated-types, typing-inspection,
#                 typing-extensions (pydantic needs a recent one), hjson, and vitpipe itself
#   .gpu_shards/  a small JPEG shard set (fractal images) for the 3-minute pretraining run
# Both are ignored by git; the device call carries them (carry: [".whl", ".gpu_shards"]).
# Everything that travels (the working tree plus these) must stay under 64 MiB: checked here.
#
#   bash benchmarks/gpu/prepare.sh          # uses .venv/bin/python (PYTHON=... overrides)
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-.venv/bin/python}
WHL=.whl
SHARDS=.gpu_shards
LIMIT=$((64 * 1024 * 1024))

version() { "$PY" -c "import importlib.metadata as m; print(m.version('$1'))"; }

rm -rf "$WHL"
mkdir -p "$WHL"
pins=()
for name in pydantic pydantic-core annotated-types typing-inspection typing-extensions hjson; do
    pins+=("$name==$(version "$name")")
done
echo "downloading for CPython 3.12 manylinux x86-64: ${pins[*]}"
"$PY" -m pip download -q --no-deps --only-binary=:all: --dest "$WHL" \
    --python-version 3.12 --implementation cp --abi cp312 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 "${pins[@]}"
echo "building deepspeed==$(version deepspeed) and vitpipe as wheels"
"$PY" -m pip wheel -q --no-deps --no-build-isolation --wheel-dir "$WHL" \
    "deepspeed==$(version deepspeed)" .
rm -rf build ./*.egg-info

if [ ! -f "$SHARDS/manifest.json" ]; then
    "$PY" benchmarks/gpu/make_shards.py "$SHARDS" --classes 16 --per-class 160 --size 256
fi

ls -l "$WHL"
tree_bytes=$(git ls-files -z --cached --others --exclude-standard | du -cb --files0-from=- | tail -1 | cut -f1)
carried=$(du -cb "$WHL" "$SHARDS" | tail -1 | cut -f1)
total=$((tree_bytes + carried))
echo "travels: working tree $((tree_bytes / 1024)) KiB + .whl and $SHARDS $((carried / 1024)) KiB" \
    "= $((total / 1024 / 1024)) MiB of 64 MiB"
if [ "$total" -ge "$LIMIT" ]; then
    echo "prepare.sh: over the 64 MiB the device call carries; shrink $SHARDS" >&2
    exit 1
fi
