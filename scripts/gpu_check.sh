#!/usr/bin/env bash
# The one prepared check for a lent GPU (results/gpu/README.md), in ONE device call of at most 540 s: the throughput
# table (bench/throughput_table.py), the protocol timings (scripts/protocols_gpu.py) and the standard suite with
# --jobs (as many of its seed-major runs as fit). Every stage has its own `timeout`; everything lands under $OUT.
#
#   bash scripts/gpu_check.sh --prepare   # here, once: kornia wheels + Fashion-MNIST into scratch/gpu (git-ignored)
#   bash scripts/gpu_check.sh             # on the device: run(command="bash scripts/gpu_check.sh", carry=["scratch/gpu"])
#   bash scripts/gpu_check.sh --dry-run   # here, on CPU at toy sizes, so it is known to work before a GPU is lent
#
# The lent machine has torch but no kornia and no internet: --prepare packs the venv's kornia and kornia_rs as wheels
# (kornia_rs is compiled for this venv's Python 3.11; a device with another Python needs a kornia_rs wheel for it in
# scratch/gpu/wheels, and the script says so). Lent GPUs so far had 15 minutes in all, start-up included: the stages
# total 520 s.
set -u
MODE=${1:-gpu}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PREP=$ROOT/scratch/gpu
PY=${PYTHON:-python3}
[ -x "$ROOT/.venv/bin/python" ] && [ "$MODE" != gpu ] && PY=$ROOT/.venv/bin/python

prepare() {
  mkdir -p "$PREP/wheels" "$PREP/data"
  cp /usr/share/datasets/fashion-mnist/*.gz "$PREP/data/" || { echo "no Fashion-MNIST in /usr/share/datasets"; exit 1; }
  "$PY" - "$PREP/wheels" <<'PY'
import importlib.metadata as md, pathlib, sys, zipfile
out = pathlib.Path(sys.argv[1])
for name in ("kornia", "kornia_rs"):
    dist = md.distribution(name)
    tags = (pathlib.Path(dist._path) / "WHEEL").read_text().split("Tag: ")[1].split()[0]  # first tag of the wheel
    wheel = out / f"{name}-{dist.version}-{tags}.whl"
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as z:
        for f in dist.files:
            if "__pycache__" not in str(f):
                z.write(f.locate(), str(f))
    print(wheel, wheel.stat().st_size // 2**20, "MiB")
PY
}

case "$MODE" in
  --prepare) prepare; exit 0 ;;
  --dry-run) DEV=cpu; OUT=${OUT:-$(mktemp -d)} ;;
  gpu) DEV=cuda; OUT=${OUT:?set OUT to the folder results go to} ;;
  *) echo "usage: bash scripts/gpu_check.sh [--prepare|--dry-run]" >&2; exit 2 ;;
esac
cd "$ROOT" || exit 1
export PYTHONUNBUFFERED=1 REPBENCH_CACHE=${REPBENCH_CACHE:-/tmp/rbcache}
START=$SECONDS
stage() {  # stage NAME SECONDS COMMAND...: run under its own budget, log to $OUT/NAME.log, note rc and seconds
  local name=$1 budget=$2 t=$SECONDS; shift 2
  timeout -k 10 "$budget" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  echo "$name rc=$rc $((SECONDS - t)) s (budget $budget s)" | tee -a "$OUT/stages.txt"
}
left() { echo $(( ${TOTAL:-520} - (SECONDS - START) )); }

if [ "$DEV" = cuda ]; then
  if ! "$PY" -c "import kornia" 2>/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site "$PREP"/wheels/kornia-*.whl || exit 1
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site "$PREP"/wheels/kornia_rs-*.whl
  fi
  export PYTHONPATH=/tmp/site:$ROOT REPBENCH_DATA=${REPBENCH_DATA:-$PREP/data}
  # kornia imports kornia_rs, a compiled wheel for one Python: say which one is missing rather than fail per stage.
  "$PY" -c "import kornia" || { echo "kornia does not import on Python $("$PY" -V 2>&1): put a kornia_rs wheel for it in $PREP/wheels"; exit 1; }
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
  DATA=fashion-mnist; TOY=(); T1=(--batch-size 256 --steps 20 --warmup 5); T2=(--batch-size 512 --steps 20 --warmup 5)
  METHODS=simclr,byol,dino,mae; PRESETS=convnet-28,resnet18-cifar-32,resnet50-224,vit-s16-224,vit-tiny-32; JOBS=4
else
  export PYTHONPATH=$ROOT
  DATA=digits; TOY=(--per-class 10 --test-per-class 5 --epochs 1 --batch-size 50 --protocols knn,linear)
  T1=(--batch-size 16 --steps 2 --warmup 1 --matmul-size 128)
  METHODS=simclr; PRESETS=convnet-28; JOBS=2; export OMP_NUM_THREADS=1
fi
R=("$PY" -m bench)
"$PY" -c "import torch, bench; print('torch', torch.__version__, 'device', '$DEV')" | tee "$OUT/env.txt" || exit 1

# 1. protocols on raw pixels, 2. the throughput table (eager, every preset), 3. compiled rows at the targets' batch.
stage protocols 45 "$PY" scripts/protocols_gpu.py --device "$DEV" --dataset "$DATA"
stage table 150 "${R[@]}" throughput --table --device "$DEV" --dataset "$DATA" --methods "$METHODS" --presets "$PRESETS" \
  --no-compile "${T1[@]}" --out "$OUT/table"
if [ "$DEV" = cuda ]; then
  stage table_compiled 100 "${R[@]}" throughput --table --device cuda --dataset "$DATA" --methods simclr \
    --presets resnet18-cifar-32 "${T2[@]}" --out "$OUT/table_compiled"
else  # torch.compile of one step takes minutes on a 2-core CPU: tests/test_throughput_table.py has it, opted in
  echo "table_compiled skipped on CPU" | tee -a "$OUT/stages.txt"
fi

# 4. the standard suite in what is left, N runs at once; the records that finished make the table.
B=$(left); [ "$B" -lt 30 ] && B=30
if [ "$DEV" = cuda ]; then
  stage standard "$B" "${R[@]}" run --suite standard --device cuda --jobs "$JOBS" --out "$OUT/standard" --no-progress
else
  stage standard "$B" "${R[@]}" run --method simclr --dataset "$DATA" "${TOY[@]}" --device cpu --jobs "$JOBS" \
    --out "$OUT/standard" --no-progress
fi
n=$(find "$OUT/standard" -name record.json 2>/dev/null | wc -l)
echo "standard: $n record(s) in $(grep '^standard' "$OUT/stages.txt" | tail -1)" | tee -a "$OUT/stages.txt"
[ "$n" -gt 0 ] && "${R[@]}" table --runs "$OUT/standard/runs" --out "$OUT/standard_table" > /dev/null 2>> "$OUT/standard.log"
find "$OUT/standard" \( -name 'checkpoint*' -o -name '*.pt' \) -delete 2>/dev/null
echo "total $((SECONDS - START)) s" | tee -a "$OUT/stages.txt"
grep -h -E "rc=|img/s|: [0-9.]+ s " "$OUT"/*.log "$OUT/stages.txt" 2>/dev/null | cut -c1-200 | tail -40
echo "results under $OUT"
