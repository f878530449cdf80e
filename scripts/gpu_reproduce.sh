#!/usr/bin/env bash
# What reproducing lightly's CIFAR-10 table costs on one GPU, measured on CIFAR-shaped synthetic data (a lent GPU
# has no internet and no CIFAR): 2 epochs of each of the 7 presets at batch 512 (kNN k=200 every epoch, as
# published), then seconds per epoch -> the whole table at 200 and 800 epochs. Accuracies on this data mean nothing.
# Same set-up as scripts/gpu_check.sh (its --prepare puts kornia wheels in scratch/gpu/wheels: carry scratch/gpu);
# it needs about 450 s of its own, so it is a second device call, not a stage of gpu_check.sh. Writes under $OUT.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
  scratch/gpu/wheels/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 REPBENCH_CACHE=/tmp/rbcache
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 scripts/fake_cifar.py /tmp/fakecifar > /dev/null || exit 1
S=$SECONDS
timeout 420 python3 -m bench reproduce --table lightly-cifar10-e200-b512 --seeds 0 --scale 0.01 --device cuda \
  --data-root /tmp/fakecifar --out $OUT/rep > $OUT/reproduce.log 2>&1; echo "reproduce rc=$? in $((SECONDS-S)) s"
grep -E "^\[|rror" $OUT/reproduce.log | cut -c1-200 | tail -12
python3 - "$OUT/rep" <<'PY'
import json, sys, pathlib
rows = []
for p in sorted(pathlib.Path(sys.argv[1]).rglob("record.json")):
    r = json.loads(p.read_text())
    t = r.get("training", {})
    ep = max(1, t.get("epochs", 1))
    per_epoch = r["timing"]["train_s"] / ep
    rows.append((r["config"]["method"], per_epoch, r.get("throughput", {}).get("images_per_s"),
                 r.get("throughput", {}).get("data_wait_share"), t.get("monitor_s", 0) / ep))
print("| method | s/epoch (train, incl. kNN monitor) | of which kNN s | img/s | data wait |")
print("|---|---|---|---|---|")
for m, s, ips, dw, mon in rows:
    print(f"| {m} | {s:.1f} | {mon:.1f} | {ips} | {dw} |")
total = sum(r[1] for r in rows)
print(f"table at 200 epochs: {200 * total / 3600:.1f} GPU-hours per seed; at 800 epochs: {800 * total / 3600:.1f}")
PY
cp $OUT/rep/reproduce/*/table.md $OUT/table.md 2>/dev/null
cd $OUT && rm -rf rep/runs/*/*/checkpoint.pt
