"""The ideal reference's epoch speed of two checkouts, alternating in one run (a refactor's no-slower check).

    git worktree add /tmp/wt_old <commit>
    NEUROMORPH_DATA=../shared/data python benchmarks/speed_before_after.py configs/mnist_official_recipe.toml \\
        /tmp/wt_old .

One epoch of 20,000 training images per run, three runs per checkout, alternating; prints samples/s and the test
accuracy of each run and the medians.
"""
import os
import statistics
import subprocess
import sys

CODE = r'''
import sys, os
sys.path.insert(0, sys.argv[1])
import neuromorph
from neuromorph.config import load_config
from neuromorph.train import Trainer
cfg = load_config(sys.argv[2], ["train.epochs=1", "train.progress=false", "output.checkpoint=false",
                                f'output.dir="/tmp/speed_ab/{os.getpid()}"', "data.n_train=20000", "data.n_test=1000"])
kw = {"overwrite": True} if "overwrite" in Trainer.__dataclass_fields__ else {}
h = Trainer(cfg, **kw).fit(log=None)
print(h[0]["samples_per_s"], h[0]["test_acc"])
'''


def main() -> None:
    config, old, new = sys.argv[1], sys.argv[2], sys.argv[3]
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    res = {"old": [], "new": []}
    for _ in range(3):
        for name, path in (("old", old), ("new", new)):
            out = subprocess.run([sys.executable, "-c", CODE, os.path.abspath(path), config], capture_output=True,
                                 text=True, env=env, check=True)
            sps, acc = out.stdout.split()
            res[name].append(float(sps))
            print(f"{name}: {float(sps):,.0f} samples/s, test accuracy {acc}", flush=True)
    print({k: round(statistics.median(v)) for k, v in res.items()})


if __name__ == "__main__":
    main()
