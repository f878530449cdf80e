"""Time the linear protocol on Fashion-MNIST raw pixels (60k -> 10k) in one code tree; prints one JSON line.

``python scripts/time_linear_probe.py TREE CALLS [SPLIT]``: TREE is a checkout of repbench (this one or an
older one, so two versions can be timed in one sitting), CALLS the timed calls after one warm-up, SPLIT 0 to
turn the solver's CPU layout off (protocols/solvers/products.py, SPLIT_ON_CPU). Results:
results/benchmarks/linear-probe.md.
"""

import json
import sys
import time

sys.path.insert(0, sys.argv[1])
from bench.data import load_dataset  # noqa: E402
from protocols import PROTOCOLS  # noqa: E402
from protocols.base import Features  # noqa: E402

ds = load_dataset("fashion-mnist")
x, xt = ds.train_x.reshape(60000, -1).float(), ds.test_x.reshape(10000, -1).float()
try:
    train, test = Features(x, ds.train_y, 10, "train"), Features(xt, ds.test_y, 10, "test")
except TypeError:  # trees before the layout redesign: Features(x, y, meta)
    train, test = Features(x, ds.train_y, {"num_classes": 10}), Features(xt, ds.test_y, {"num_classes": 10})
if len(sys.argv) > 3:
    import protocols.solvers.products as products

    products.SPLIT_ON_CPU = sys.argv[3] == "1"
linear = PROTOCOLS.get("linear")
linear(train, test)  # warm-up
times = []
for _ in range(int(sys.argv[2])):
    t = time.perf_counter()
    out = linear(train, test)["linear"]
    times.append(round(time.perf_counter() - t, 3))
print(json.dumps({"tree": sys.argv[1], "times": times, "top1": out["top1"], "refit_steps": out["iterations"],
                  "fits": out["fits"], "regularisation": out["regularisation"], "matmul_dtype": out["matmul_dtype"]}))
