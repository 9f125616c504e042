"""Fingerprint of a short ideal and hardware training on four devices: a refactor that claims "same bits" runs this
before and after and compares the output.

    python benchmarks/hil_hash.py > before.json   # ... change the code ...
    python benchmarks/hil_hash.py > after.json && diff before.json after.json

Digits, 600 training images, 2 epochs of ``configs/compare_digits.toml``: ReRAM ES (dense), TaOx/HfOx (pulse
trains), PCMO (a conv layer) and Ag:a-Si (dropout, squared error). Per device: sha256 of the reference's and the
hardware's final weights, both sides' test accuracies and the hardware's pulses per epoch.
"""

import hashlib
import json
from pathlib import Path

from neuromorph.config import load_config
from neuromorph.hil import HardwareTrainer
from neuromorph.train import Trainer

ROOT = Path(__file__).resolve().parents[1]
CASES = (("reram_es", []), ("taox_hfox", ["hardware.update=pulse_train"]),
         ("pcmo", ["model.conv_channels=[4]", "model.conv_kernels=[3]", "model.conv_padding=[1]", "model.layers=[10]",
                   "train.lr=[0.1,0.05]"]),
         ("ag_a_si", ["model.dropout=[0.1,0.1]", "model.loss=mse"]))


def digest(net) -> str:
    return hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in net.param_list())).hexdigest()[:16]


def main() -> None:
    out = {}
    for dev, extra in CASES:
        cfg = load_config(ROOT / "configs/compare_digits.toml", [
            "train.epochs=2", "train.progress=false", f'hardware.device="{dev}"', "data.n_train=600",
            f'output.dir="{ROOT / "runs/bench/hil_hash"}"', *extra])
        ref = Trainer(cfg, overwrite=True)
        h = ref.fit(log=None)
        hw = HardwareTrainer(cfg, dataset=ref.dataset, out=ROOT / "runs/bench/hil_hash/hw")
        hh = hw.fit(log=None)
        out[dev] = [digest(ref.net), digest(hw.net), [x["test_acc"] for x in h], [x["test_acc"] for x in hh],
                    [x["pulses"] for x in hh]]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
