#!/usr/bin/env bash
# The one prepared GPU check this project runs on a lent machine (see results/gpu/README.md). It expects
# kornia wheels in .whl/ (that machine has torch but no kornia) and writes under $OUT.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD REPBENCH_DATA=${REPBENCH_DATA:-$PWD/.gpu/data} PYTHONUNBUFFERED=1 REPBENCH_CACHE=/tmp/rbcache
R="python3 -m bench"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
S=$SECONDS
timeout 100 $R run --suite smoke --device cuda --out $OUT/smoke --no-progress > $OUT/smoke.log 2>&1; echo "smoke rc=$? in $((SECONDS-S)) s"; grep -E "^\[|Error|error" $OUT/smoke.log | cut -c1-160 | tail -25
timeout 60 python3 scripts/protocols_gpu.py 2>&1 | tail -6
for b in convnet resnet18; do timeout 40 $R throughput --method simclr --backbone $b --dataset fashion-mnist --batch-size 256 --steps 40 --device cuda 2>&1 | tail -1; done
S=$SECONDS
for m in raw simclr byol moco-v2 dino supervised; do
  [ $((SECONDS-S)) -gt 130 ] && { echo "skip $m (budget)"; continue; }
  T=$SECONDS; timeout 60 $R run --method $m --dataset fashion-mnist --per-class 2000 --epochs 10 --batch-size 256 --seed 0 --device cuda \
     --protocols knn,linear --out $OUT/long --no-progress > $OUT/long_$m.log 2>&1; echo "long $m rc=$? $((SECONDS-T)) s"; grep -E "ok knn|Error" $OUT/long_$m.log | tail -2
done
$R table --runs $OUT/long/runs 2>&1 | tail -12 > $OUT/long_table.md; cat $OUT/long_table.md
cd $OUT && tar czf runs.tgz --exclude='*.pt' --exclude='checkpoint*' long smoke 2>/dev/null; rm -rf long smoke
