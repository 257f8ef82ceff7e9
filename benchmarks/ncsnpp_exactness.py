"""How exactly `bench convert ncsnpp-flax` reproduces openai's CIFAR-10 consistency models: writes a
random-weight checkpoint of the published NCSN++ (configs/cifar10_ve_cd.py: nf 128, ch_mult 2,2,2, 4 blocks,
attention at 16, 32×32) in flax's msgpack format, converts it with the CLI, and prints the max abs difference
between the converted consistency model (float32) and the numpy re-implementation of the original flax
consistency function (tests/reference/ncsnpp_flax.py, float64) on the same inputs.

    python benchmarks/ncsnpp_exactness.py [--width full|reduced] [--sigmas 0.5,2,80]

``reduced`` is the test suite's architecture (nf 16, ch_mult 1,2,2, 2 blocks, attention at 8, 16×16). The
numpy reference takes about half a minute per σ at full width on one CPU thread.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--width", choices=["full", "reduced"], default="full")
    parser.add_argument("--sigmas", default="0.5,2,80")
    args = parser.parse_args()
    from reference.flax_msgpack import write_train_state
    from reference.ncsnpp_flax import CD_CIFAR10, consistency_fn, init_params

    from benchbench.cli import main as bench
    from benchbench.models.consistency import load_consistency

    cfg, sets = CD_CIFAR10, []
    if args.width == "reduced":
        cfg = dict(CD_CIFAR10, nf=16, ch_mult=(1, 2, 2), num_res_blocks=2, attn_resolutions=(8,), image_size=16)
        sets = ["nf=16", "ch_mult=1,2,2", "num_res_blocks=2", "attn_resolutions=8", "image_size=16"]
    with tempfile.TemporaryDirectory() as tmp:
        params = init_params(cfg, seed=0)
        ckpt = write_train_state(Path(tmp) / "checkpoint_80", params)
        assert bench(["convert", "ncsnpp-flax", str(ckpt), "--out", f"{tmp}/cm", *sum((["--set", s] for s in sets), [])]) == 0
        model = load_consistency(f"{tmp}/cm")
        print(f"{args.width} width: {sum(p.numel() for p in model.unet.parameters()):,} parameters")
        size = cfg["image_size"]
        x = np.random.RandomState(2).randn(2, size, size, 3)
        worst = 0.0
        for sigma in map(float, args.sigmas.split(",")):
            ref = consistency_fn(params, x, np.full(2, sigma), cfg)
            with torch.no_grad():
                got = model(torch.from_numpy(x.transpose(0, 3, 1, 2)).float(), sigma).numpy().transpose(0, 2, 3, 1)
            diff = float(np.abs(got - ref).max())
            worst = max(worst, diff)
            print(f"σ={sigma:g}: max |converted − original| = {diff:.2e} (max |f| = {np.abs(ref).max():.2f})")
        print(f"worst: {worst:.2e}")


if __name__ == "__main__":
    main()
