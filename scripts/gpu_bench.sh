#!/usr/bin/env bash
# One prepared GPU run for the throughput figures of BENCHMARKS.md (issue 10).
#
#   OUT=/some/folder bash scripts/gpu_bench.sh [quick|compile|full]
#
# Every step has its own time limit and writes JSON/text to $OUT, so a step that
# runs long or fails costs only itself. The weights are a random checkpoint of the
# full ben2-base network in the official layout (speed does not depend on the
# values; accuracy figures compare precisions against fp32 on the same weights).
# `quick` (default) skips torch.compile; its step limits add up to 540 s, so it
# fits one device call (600 s at most). `compile` runs only a compiled run and
# its second, cached start (limits 540 s: its own call); `full` runs both.
set -u
OUT=${OUT:-/tmp/ben-gpu-bench}
MODE=${1:-quick}
mkdir -p "$OUT"
PY=${PYTHON:-python}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
log() { echo "== $(date +%T) $*" | tee -a "$OUT/steps.log"; }
step() {  # step NAME SECONDS CMD...
  local name=$1 limit=$2; shift 2
  log "$name"
  timeout "$limit" "$@" >"$OUT/$name.txt" 2>&1
  echo "rc=$? $name" | tee -a "$OUT/steps.log"
  tail -n 25 "$OUT/$name.txt"
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
$PY - <<'EOF' | tee "$OUT/env.txt"
import importlib, sys
print(sys.version.split()[0])
for m in ("torch", "timm", "typer", "rich", "safetensors", "PIL", "cv2", "numpy"):
    try:
        mod = importlib.import_module(m)
        print(m, getattr(mod, "__version__", "?"))
    except Exception as e:  # noqa: BLE001
        print(m, "MISSING", e)
EOF

W=$OUT/weights
mkdir -p "$W"
step make-weights 60 $PY -c "
import torch
from ben_cli.models.registry import build_model
from ben_cli.checkpoints.load import save_checkpoint
torch.manual_seed(0)
save_checkpoint(build_model('ben2-base'), '$W/BEN2_Base.pth', official_keys=True)
"
COMMON=(--weights "$W/BEN2_Base.pth" --device cuda --resolution 1024)

if [ "$MODE" != compile ]; then
step precision 120 $PY scripts/bench_precision.py --device cuda --weights "$W/BEN2_Base.pth" --batch 16 \
  --repeats 5 --json "$OUT/precision.json"
step bench-none 150 $PY -m ben_cli bench "${COMMON[@]}" --refiner none --batch-size 1,16,32 --images 128 \
  --repeats 2 --json "$OUT/bench-none.json"
step bench-default 90 $PY -m ben_cli bench "${COMMON[@]}" --batch-size 16 --images 256 --repeats 2 \
  --no-official --json "$OUT/bench-default.json"
step bench-autocast 60 $PY -m ben_cli bench "${COMMON[@]}" --autocast --refiner none --batch-size 16 \
  --images 128 --no-official --no-startup --json "$OUT/bench-autocast.json"
step startup 60 $PY scripts/bench_startup.py --weights "$W/BEN2_Base.pth" --device cuda --runs 2 --json
fi
if [ "$MODE" = full ] || [ "$MODE" = compile ]; then
  step bench-compile 330 $PY -m ben_cli bench "${COMMON[@]}" --compile --refiner none --batch-size 16 \
    --images 256 --no-official --no-startup --json "$OUT/bench-compile.json"
  step bench-compile-cached 150 $PY -m ben_cli bench "${COMMON[@]}" --compile --refiner none --batch-size 16 \
    --images 256 --no-official --no-startup --json "$OUT/bench-compile-cached.json"
fi
rm -rf "$W"
log done
