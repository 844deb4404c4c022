#!/usr/bin/env bash
# The one prepared GPU run of issue 17: correctness first, then speed, in one 10-minute device call.
#
#   OUT=/some/folder bash scripts/gpu_bench.sh            # on a CUDA machine (planned steps: 420 s)
#   OUT=/some/folder bash scripts/gpu_bench.sh --dry-run  # the same steps on the CPU, tiny model (tests)
#
# Before the device call, fill the ignored kit folder that the call carries (carry: [".gpu-kit"]):
#   mkdir -p .gpu-kit && cp /work/shared/ben2_reference/{input.png,expected_seed0.npz,make_checkpoint.py,manifest.json} .gpu-kit/
# The 380 MB seed-0 checkpoint is made on the GPU machine by the kit's make_checkpoint.py, into /tmp.
# Without the kit the run goes on with random ben2-base weights and says the reference check was skipped.
#
# Needs only what a bare CUDA machine has: python3 ($PYTHON overrides it), torch, timm, typer, rich,
# safetensors, huggingface_hub, numpy, pillow, opencv, pytest; no install (PYTHONPATH is the repo) and
# no network. Weights, ben's cache (BEN_CACHE_DIR: converted weights, compiled kernels) and the images live
# in $WORK (/tmp/ben-gpu-bench-work), never under $OUT, and are removed at the end.
#
# What comes back ($OUT holds three files; the device call returns at most 8):
#   results.jsonl  every measurement, one JSON line each, appended as it finishes ({"step", "what", ...});
#                  a step stopped at its limit keeps the lines it wrote; each step ends with a "step-end"
#                  line (rc, seconds, limit, timed_out); what cannot run here is a line with "skipped"
#   steps.log      start and end of each step;  log.txt  every step's output
# Every step runs under `timeout -k 5 LIMIT`; the python helper (scripts/gpu_checks.py) gets a deadline a few
# seconds earlier, so it stops a child process and writes its line before the kill. Exit status: 0 when every
# step exited 0, else 1 (the summary table at the end says which).
#
# How the limits are sized. Each step ran first as --dry-run on a 2-core CPU (tiny model, 256 px), which shows
# how many processes, model loads and forwards it does; those counts were then priced with the H200 figures
# of ../shared/FACTS.md (2026-11-26, torch 2.11): `import torch` 3.9 s, reading the 380 MB .pth and building
# the model 5.7 s, CUDA init 0.4 s, first 1024 forward 2.6 s (so about 12 s before a process's first result);
# BenBase at 1024, batch 16: fp16 cast 63.7 img/s (0.25 s a batch), fp16 autocast 54.9 (0.29 s), bf16 ~53,
# fp32 about 3x slower than fp16 (no figure: estimated); torch.compile of BenBase, fp16, batch 16: 137 s;
# `ben erase` on 1500x1000 JPEGs after start-up: 45-48 img/s. The planned (serial) limits add up to 420 s;
# the image generation runs beside the first GPU steps on the CPU and is not on that path.
set -u
DRY=0
[ "${1:-}" = --dry-run ] && DRY=1
REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO" || exit 2
OUT=${OUT:-/tmp/ben-gpu-bench}
WORK=${BEN_GPU_BENCH_WORK:-/tmp/ben-gpu-bench-work}
KIT=${BEN_GPU_KIT:-$REPO/.gpu-kit}
PY=${PYTHON:-python3}
mkdir -p "$OUT" "$WORK"
RESULTS=$OUT/results.jsonl LOG=$OUT/log.txt STEPS=$OUT/steps.log
: >"$RESULTS"; : >"$LOG"; : >"$STEPS"
export PYTHONPATH=$REPO:$REPO/scripts${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
export BEN_CACHE_DIR=$WORK/cache BEN_GPU_BENCH_RESULTS=$RESULTS
FAILED=()

log() { echo "== $(date +%T) $*" | tee -a "$STEPS"; }
# step NAME LIMIT CMD...: run CMD under `timeout -k 5 LIMIT`; DEADLINE (for the helper) is LIMIT - 4.
step() {
  local name=$1 limit=$2 start rc
  shift 2
  log "$name (limit ${limit}s)"
  echo "===== $name" >>"$LOG"
  start=$(date +%s.%N)
  BEN_GPU_BENCH_STEP=$name timeout -k 5 "$limit" "$@" >>"$LOG" 2>&1
  rc=$?
  end_line "$name" "$limit" "$start" "$rc"
}
end_line() {  # end_line NAME LIMIT START RC [END]: the step-end JSON line and the steps.log line
  local name=$1 limit=$2 start=$3 rc=$4 end=${5:-$(date +%s.%N)} secs timed=false
  secs=$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.1f", b - a }')
  { [ "$rc" = 124 ] || [ "$rc" = 137 ]; } && timed=true
  printf '{"step": "%s", "what": "step-end", "rc": %s, "seconds": %s, "limit": %s, "timed_out": %s}\n' \
    "$name" "$rc" "$secs" "$limit" "$timed" >>"$RESULTS"
  echo "rc=$rc ${secs}s $name" | tee -a "$STEPS"
  [ "$rc" = 0 ] || FAILED+=("$name")
}
helper() {  # helper STEP LIMIT SUBCOMMAND ARGS...: scripts/gpu_checks.py as a step
  local name=$1 limit=$2
  shift 2
  step "$name" "$limit" "$PY" scripts/gpu_checks.py --results "$RESULTS" --step "$name" \
    --deadline $((limit - 4)) "$@"
}

W=$WORK/weights
IMAGES=$WORK/images
NOCOMPILE="the dry run: torch.compile on this CPU takes minutes (dynamo alone traces the tiny model for ~25 s on 2 cores, inductor 210 s)"
if [ $DRY = 1 ]; then
  # The dry run: the same steps on the CPU with the tiny model at 256 px, batch 2, two images of each of two
  # sizes plus one (a short last batch), one repeat, two modes where the GPU run has four; the compiled steps
  # run eagerly and say so. Its limits are its own (this CPU is slow and shared).
  WEIGHTS=$W/tiny.safetensors
  MODEL=(--model tiny --weights "$WEIGHTS" --device cpu --resolution 256)
  BATCH=2 COUNT=2 SIZES=(--size 320x256 --size 256x192) PARTIAL=3 REPEATS=1
  CHECKS=(--correct-batch 2 --correct-modes bf16,bf16+autocast --speed-modes fp32 --image-size 320x256
          --sync-repeats 1)
  ERASE=(--model tiny --weights "$WEIGHTS" --device cpu --resolution 256 --batch-size "$BATCH" --workers 2)
  CKPT=(--random tiny)
  COMPILE=(--modes fp32 --repeats 0 --skip-compile "$NOCOMPILE")
  ERASE_COMPILE=(--skip-compile "$NOCOMPILE" -- "${ERASE[@]}")
  L_SETUP=60 L_CHECKS=120 L_PYTEST=60 L_STARTUP=90 L_ERASE=60 L_COMPILED=60 L_ERASE_COMPILED=60
  # Modules the GPU machine lacks, made unimportable for the pytest step, so the dry run proves that
  # `pytest -m gpu` collects without them.
  BLOCK=$WORK/absent
  mkdir -p "$BLOCK"
  for m in hypothesis ray pymatting av py_sod_metrics pillow_heif; do
    echo "raise ModuleNotFoundError('$m is not on the GPU machine (gpu_bench.sh --dry-run)', name='$m')" >"$BLOCK/$m.py"
  done
else
  WEIGHTS=$W/ref_seed0.pth
  MODEL=(--weights "$WEIGHTS" --device cuda --resolution 1024)
  # 64 JPEGs at 1.5 MP and 64 at 2.0 MP: 8 batches of 16 per erase run (3 s of model time at 45 img/s,
  # so each run's start-up and steady state both show); batch 16 as the FACTS throughput figures.
  BATCH=16 COUNT=64 SIZES=(--size 1500x1000 --size 1632x1224) PARTIAL=40 REPEATS=5
  CHECKS=(--correct-batch 4 --image-size 1500x1000 --sync-repeats 2)
  ERASE=(--weights "$WEIGHTS" --device cuda --resolution 1024 --batch-size "$BATCH")
  CKPT=(--kit "$KIT")
  [ -f "$KIT/make_checkpoint.py" ] || CKPT=(--random ben2-base)
  COMPILE=(--modes fp16 --compile)
  ERASE_COMPILE=(-- "${ERASE[@]}" --compile)
  L_SETUP=20 L_CHECKS=50 L_PYTEST=25 L_STARTUP=25 L_ERASE=25 L_COMPILED=175 L_ERASE_COMPILED=50
  BLOCK=
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,power.limit --format=csv >>"$LOG" 2>&1
fi

# setup, 20 s: versions (one torch import, 4 s) and the seed-0 checkpoint: the kit's make_checkpoint.py took 5.4 s
# on the 2-core CPU here (numpy fills 94.6M values; 380 MB to /tmp): about 5 s there. Dry run: a tiny model.
helper setup $L_SETUP checkpoint --to "$WEIGHTS" "${CKPT[@]}"

# images, 60 s, in the background beside the next two steps (CPU work, and nothing reads the images before
# startup): 128 JPEGs of 1.5-2 MP took 0.22 s each on the busy 2-core CPU here, ~30 s; one faster core: ~15 s.
(
  start=$(date +%s.%N)
  BEN_GPU_BENCH_STEP=images timeout -k 5 60 "$PY" scripts/gpu_checks.py --results "$RESULTS" --step images \
    --deadline 56 images --to "$IMAGES" --count "$COUNT" "${SIZES[@]}" >"$WORK/images.txt" 2>&1
  echo "$? $start $(date +%s.%N)" >"$WORK/images.rc"
) &
IMAGES_PID=$!

# checks, 50 s, one process (12 s to its first forward), correctness first:
# - correct: the test card in fp32 against the kit's expected output, then a batch of 4 at 1024 in fp32 and in
#   fp16 (cast), fp16+autocast, bf16, bf16+autocast against it: 6 forwards, under 2 s of model time plus 1-2 s
#   of first-call kernel selection per precision (~10 s);
# - speed: BenBase eager at batch 16, per mode 1 + 5 batches: fp32 ~0.75 s a batch (4.5 s), fp16 cast 0.25
#   (1.5 s), fp16 autocast 0.29 (1.8 s), bf16 ~0.3 (1.8 s): ~10 s;
# - syncs: the hot loop (predict 16 pictures of 1500x1000 with the default refiner, render each cutout with
#   decontamination on the GPU) once, then twice under the sync debug mode: ~1 s each at 45 img/s, slower
#   with a warning per sync: ~5 s.
helper checks $L_CHECKS checks "${MODEL[@]}" --batch "$BATCH" --repeats "$REPEATS" --kit "$KIT" "${CHECKS[@]}"

# pytest-gpu, 25 s: `pytest -m gpu` on the test modules that hold gpu-marked tests (collecting the whole suite
# took 13 s here for 2 GPU tests; these modules: ~5 s there), each test a JSON line (scripts/pytest_jsonl.py).
GPU_TESTS=$(grep -l 'mark\.gpu' tests/test_*.py)
# One process (-o addopts= drops the suite's "-n 2": the GPU machine has no pytest-xdist, and the JSON lines
# come from this process).
# shellcheck disable=SC2086  # GPU_TESTS is a list of paths without spaces
step pytest-gpu $L_PYTEST env ${BLOCK:+PYTHONPATH=$BLOCK:$PYTHONPATH} "$PY" -m pytest -m gpu -q -p no:cacheprovider \
  -o addopts= -p no:hypothesispytest -p pytest_jsonl $GPU_TESTS

wait "$IMAGES_PID"
read -r IMAGES_RC IMAGES_START IMAGES_END <"$WORK/images.rc"
cat "$WORK/images.txt" >>"$LOG"
end_line images 60 "$IMAGES_START" "$IMAGES_RC" "$IMAGES_END"
FIRST=$(find "$IMAGES" -name '*.jpg' | sort | head -n 1)
mkdir -p "$WORK/partial"
i=0
for f in $(find "$IMAGES" -name '*.jpg' | sort | head -n "$PARTIAL"); do  # names repeat across the size folders
  cp -l "$f" "$WORK/partial/p$i.jpg" && i=$((i + 1))
done

# startup, 25 s: `ben erase` on one 1.5 MP JPEG twice in fresh processes, the first with an empty ben cache
# (cold: the .pth read and converted, FACTS: ~12 s to the first output), the second warm (~8 s).
helper startup $L_STARTUP erase --input "$FIRST" --output "$WORK/out-startup" --runs 2 --batch 1 \
  --cache-dir "$WORK/cache-startup" --fresh-cache -- "${ERASE[@]}"

# erase-none / erase-default / erase-nodecon, 25 s each: 128 JPEGs (1.5 and 2 MP), batch 16: start-up ~8 s
# (warm cache) + 128 images at 45 img/s ~3 s + reading and writing; the default refiner and decontamination on
# the GPU may be several times slower (issue 17, fault 6): the deadline stops the run and its line still says
# how far it got.
helper erase-none $L_ERASE erase --input "$IMAGES" --output "$WORK/out-none" --batch "$BATCH" -- "${ERASE[@]}" \
  --refiner none
helper erase-default $L_ERASE erase --input "$IMAGES" --output "$WORK/out-default" --batch "$BATCH" -- "${ERASE[@]}"
helper erase-nodecon $L_ERASE erase --input "$IMAGES" --output "$WORK/out-nodecon" --batch "$BATCH" -- "${ERASE[@]}" \
  --no-decontaminate

# speed-compiled, 175 s: 12 s to start, compiling BenBase fp16 at batch 16 (137 s in FACTS, default mode; CUDA
# graphs add their capture), then 5 timed batches (~0.2 s each): the compile is the cold one, and it fills the
# inductor cache in $BEN_CACHE_DIR/compile that erase-compiled starts from.
helper speed-compiled $L_COMPILED speed "${MODEL[@]}" --batch "$BATCH" --repeats "$REPEATS" "${COMPILE[@]}"

# erase-compiled, 50 s: `ben erase --compile` from that cache (the cached second start: dynamo traces again,
# ~25 s by the CPU probe's share of the compile, the kernels load from disk) on 40 JPEGs at batch 16, so the last
# batch is short (8): TORCH_LOGS=recompiles must show no recompile for it (issue 17, fault 1).
helper erase-compiled $L_ERASE_COMPILED erase --input "$WORK/partial" --output "$WORK/out-compiled" \
  --batch "$BATCH" --count-recompiles "${ERASE_COMPILE[@]}" --refiner none

log "summary"
"$PY" scripts/gpu_checks.py --results "$RESULTS" --step summary summary | tee -a "$LOG"
[ "${BEN_GPU_BENCH_KEEP:-0}" = 1 ] || rm -rf "$WORK"
if [ ${#FAILED[@]} -gt 0 ]; then
  log "failed steps: ${FAILED[*]}"
  exit 1
fi
log "done"
