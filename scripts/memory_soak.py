"""Hold a long training run and measure its resident memory: it must stay flat after warm-up.

Trains a zoo model on the bundled digits with Adam, as ``gpuconv train`` does (shuffled batches,
a smaller last batch every epoch, an evaluation pass after each epoch, so several shapes recur),
and reads the resident set size (/proc/self/statm) after warm-up and every ``--every`` steps.
Growth past ``--limit-mb`` after warm-up (a cache keyed by shape, a retained graph, a module handle
per launch) exits with status 1.

    python scripts/memory_soak.py --backend numpy --steps 2000
    python scripts/memory_soak.py --backend emulator --steps 200 --warmup 40
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time

import numpy as np

from gpuconv import datasets, nn, optim, use_backend
from gpuconv.models import MODEL_NAMES, build_model


def rss_bytes() -> int:
    """Resident set size of this process, from /proc/self/statm (Linux)."""
    with open("/proc/self/statm", encoding="ascii") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def soak(backend: str, model_name: str, steps: int, warmup: int, batch_size: int, every: int, seed: int):
    data = datasets.load_digits()
    samples = []
    with use_backend(backend) as be:
        model = build_model(model_name, data.in_channels, data.image_size, data.num_classes, seed=seed)
        opt = optim.Adam(model.parameters(), lr=2e-3)
        loss_fn = nn.SoftmaxCrossEntropy()
        step, epoch, baseline = 0, 0, None
        t0 = time.perf_counter()
        while step < steps:
            epoch += 1
            for xb, yb in datasets.iterate_batches(data.train.images, data.train.labels, batch_size,
                                                   seed=seed, epoch=epoch):
                loss_fn.forward(model.forward(be.asarray(xb)), be.asarray(yb))
                model.backward(loss_fn.backward())
                opt.step()
                step += 1
                if step == warmup or (step > warmup and (step - warmup) % every == 0) or step == steps:
                    gc.collect()
                    rss = rss_bytes()
                    baseline = rss if step == warmup else baseline
                    samples.append({"step": step, "rss_mb": rss / 2**20})
                if step == steps:
                    break
            model.eval()
            for xb, _ in datasets.iterate_batches(data.test.images, data.test.labels, 1000, shuffle=False):
                be.to_numpy(model.forward(be.asarray(xb)))
            model.train()
        be.synchronize()
    seconds = time.perf_counter() - t0
    after = [s["rss_mb"] for s in samples if s["step"] >= warmup]
    return {"backend": backend, "model": model_name, "steps": steps, "warmup_steps": warmup,
            "batch_size": batch_size, "epochs": epoch, "seconds": round(seconds, 1),
            "rss_after_warmup_mb": round(after[0], 2), "rss_end_mb": round(after[-1], 2),
            "rss_max_after_warmup_mb": round(max(after), 2),
            "growth_mb": round(max(after) - after[0], 2), "samples": samples}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backend", default="numpy", choices=("numpy", "emulator", "cuda"))
    p.add_argument("--model", default="lenet", choices=MODEL_NAMES)
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--warmup", type=int, default=200, help="steps before the baseline (default 200)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--every", type=int, default=100, help="steps between RSS samples (default 100)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit-mb", type=float, default=10.0, help="allowed growth after warm-up (default 10)")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the result as JSON")
    args = p.parse_args(argv)
    if not 1 <= args.warmup < args.steps:
        p.error("need 1 <= --warmup < --steps")
    res = soak(args.backend, args.model, args.steps, args.warmup, args.batch_size, max(1, args.every),
               args.seed)
    res["limit_mb"] = args.limit_mb
    res["passed"] = res["growth_mb"] <= args.limit_mb
    print(f"{res['backend']} {res['model']}: {res['steps']} steps ({res['epochs']} epochs, "
          f"{res['seconds']} s); RSS after {res['warmup_steps']} warm-up steps "
          f"{res['rss_after_warmup_mb']:.1f} MB, at the end {res['rss_end_mb']:.1f} MB, max "
          f"{res['rss_max_after_warmup_mb']:.1f} MB: growth {res['growth_mb']:.2f} MB "
          f"(limit {args.limit_mb} MB) {'PASS' if res['passed'] else 'FAIL'}")
    if args.json:
        from gpuconv import fileio
        fileio.write_text(args.json, json.dumps(res, indent=1) + "\n", "--json")
    return 0 if res["passed"] else 1


if __name__ == "__main__":
    np.seterr(all="ignore")
    sys.exit(main())
