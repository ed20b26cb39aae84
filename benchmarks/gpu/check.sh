#!/usr/bin/env bash
# The prepared GPU check: everything vitpipe needs a GPU to show, in one device call of about
# five minutes (so that a rerun fits a 15-minute lease). Prepare first, here:
#   bash benchmarks/gpu/prepare.sh
# then on the GPU machine (the device tool's `run`, from the repository root):
#   command: bash benchmarks/gpu/check.sh     carry: [".whl", ".gpu_shards"]     timeout_s: 330
# and here, or in CI, the same steps on the CPU with tiny sizes (no CUDA, no wheels installed):
#   bash benchmarks/gpu/check.sh --dry-run
#
# Steps, each with a time budget, each followed by a re-rendered report (a timeout or a failed
# step keeps everything that finished): install the carried wheels; tests/gpu (DeepSpeed bf16
# engine step per ZeRO stage, bit-exact resume, compiled vs eager losses, device decode vs CPU
# decode, prefetch ordering); benchmarks/train_step.py (ViT-S/B/L/16 at 224, bf16, vit_core vs
# timm, eager and compiled, ViT-B/16 first, its compiled top 15 kernels); benchmarks/host_syncs.py
# (host syncs per ZeRO step); a time-boxed `vitpipe pretrain --launcher local` of ViT-B/16 on
# the carried shards with every fast-path switch on (benchmarks/gpu/pretrain_vit_b16.yaml),
# stopped through its STOP file (it checkpoints and writes summary.json).
#
# $OUT (default runs/gpu_check) receives at most 8 files: gpu_report.md, check.log, steps.tsv,
# tests_gpu.txt, train_step.json, host_syncs.json, metrics.jsonl, summary.json.
set -uo pipefail
cd "$(dirname "$0")/../.."
DRY=0
if [ "${1:-}" = "--dry-run" ]; then DRY=1; fi
OUT=${OUT:-$PWD/runs/gpu_check}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
: >"$OUT/check.log"
: >"$OUT/steps.tsv"
WORK=$(mktemp -d)
RUN=$WORK/pretrain
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
trap 'rm -rf "$WORK"' EXIT

# Time budgets (s), each overridable from the environment. On the GPU the limits add up to 300 s
# (install 20, shards 10, tests 50, train_step 65, host syncs 20, pretrain 120 + 15 to stop),
# so a rerun fits a 15-minute lease with the machine's start-up. The dry run's limits only
# bound a runaway step.
if [ "$DRY" = 0 ]; then
    B_INSTALL=${B_INSTALL:-20} B_TESTS=${B_TESTS:-50} B_TRAIN_STEP=${B_TRAIN_STEP:-65}
    B_HOST=${B_HOST:-20} B_PRETRAIN=${B_PRETRAIN:-120} B_STOP=${B_STOP:-15}
else
    B_TESTS=120 B_TRAIN_STEP=180 B_HOST=180 B_PRETRAIN=300 B_STOP=60
fi

report() {
    "$PY" benchmarks/gpu/report.py "$OUT" --dry-run "$DRY" >>"$OUT/check.log" 2>&1 || true
}

record() { # record NAME RC SECONDS
    printf '%s\t%s\t%s\n' "$1" "$2" "$3" >>"$OUT/steps.tsv"
    echo "== $1: exit status $2 after $3 s" >>"$OUT/check.log"
    report
}

step() { # step NAME LIMIT COMMAND...: run under a time limit, log, record, re-render the report
    local name=$1 limit=$2 start rc
    shift 2
    start=$(date +%s)
    echo "== $name (limit ${limit} s): $*" >>"$OUT/check.log"
    timeout -k 5 "$limit" "$@" >>"$OUT/check.log" 2>&1
    rc=$?
    record "$name" "$rc" $(($(date +%s) - start))
}

if [ "$DRY" = 0 ]; then
    step install "$B_INSTALL" "$PY" -m pip install -q --no-index --no-deps --no-compile \
        --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
    export DS_ACCELERATOR=cuda
    SHARDS=$WORK/shards # the carried set listed 20 times: epochs of ~51k images, not 2.5k
    step shards 10 "$PY" benchmarks/gpu/make_shards.py "$SHARDS" --replicate .gpu_shards --copies 20
else
    export DS_ACCELERATOR=cpu
    SHARDS=$WORK/shards # a tiny set, listed twice, as on the GPU
    step shards 120 bash -c '"$0" benchmarks/gpu/make_shards.py "$1.base" --classes 4 \
        --per-class 12 --size 40 --per-shard 16 --points 2000 &&
        "$0" benchmarks/gpu/make_shards.py "$1" --replicate "$1.base" --copies 2' "$PY" "$SHARDS"
fi

step tests_gpu "$B_TESTS" bash -c '"$0" -m pytest -q -rA -p no:cacheprovider tests/gpu >"$1" 2>&1' \
    "$PY" "$OUT/tests_gpu.txt"

if [ "$DRY" = 0 ]; then
    # ViT-B/16 first (the goal), eager before compiled (compiling costs ~30 s per model and impl)
    pairs=(vit_base_patch16@eager vit_base_patch16@compiled vit_small_patch16@eager)
    pairs+=(vit_large_patch16@eager vit_small_patch16@compiled vit_large_patch16@compiled)
    sizes=(--device cuda --steps 10 --windows 3 --warmup 3 --kernels-pair vit_base_patch16@compiled)
    syncs=(--device cuda --precision bf16 --stages 0 1 2 3 --steps 3)
else
    pairs=(vit_tiny_patch16_32:depth=2@eager)
    sizes=(--device cpu --batch 4 --steps 1 --windows 1 --warmup 1 --threads 1)
    syncs=(--device cpu --stages 2 --steps 1)
fi
step train_step "$B_TRAIN_STEP" "$PY" benchmarks/train_step.py --pairs "${pairs[@]}" "${sizes[@]}" \
    --kernels 15 --json "$OUT/train_step.json"
step host_syncs "$B_HOST" "$PY" benchmarks/host_syncs.py "${syncs[@]}" --json "$OUT/host_syncs.json"

sets=(--set "data.train_shards=$SHARDS")
if [ "$DRY" = 1 ]; then # the same run, shrunk: a tiny ViT, 32 px, a few steps, no GPU switches
    for kv in model.name=vit_tiny_patch16 model.img_size=32 model.patch_size=8 model.depth=2 \
        train.micro_batch_size=8 train.global_batch_size=8 train.total_steps=6 \
        train.log_every_n_steps=2 train.compile=false schedule.warmup_steps=1 \
        data.num_workers=1 data.decode_device=cpu cluster.use_gpu=false; do
        sets+=(--set "$kv")
    done
fi
start=$(date +%s)
echo "== pretrain (stopped after ${B_PRETRAIN} s)" >>"$OUT/check.log"
"$PY" -m launch.cli pretrain -c benchmarks/gpu/pretrain_vit_b16.yaml "${sets[@]}" \
    --run-dir "$RUN" --launcher local --resume never --no-progress >>"$OUT/check.log" 2>&1 &
pid=$!
collect() { # the run's metrics so far (a timeout of the whole call keeps them), then the report
    for name in metrics.jsonl summary.json; do
        if [ -f "$RUN/$name" ]; then cp "$RUN/$name" "$OUT/$name"; fi
    done
    report
}
for i in $(seq "$B_PRETRAIN"); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 1
    if [ $((i % 20)) = 0 ]; then collect; fi
done
if kill -0 "$pid" 2>/dev/null; then # ask it to stop: it checkpoints and writes summary.json
    mkdir -p "$RUN" && touch "$RUN/STOP"
    for _ in $(seq "$B_STOP"); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
    kill -9 "$pid" 2>/dev/null
fi
wait "$pid"
rc=$?
collect
record pretrain "$rc" $(($(date +%s) - start))
echo "report: $OUT/gpu_report.md"
grep -v '^$' "$OUT/steps.tsv"
