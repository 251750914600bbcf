"""What `cxr.training.runtime.keep_freed_memory` buys: glibc's default allocator against the
setting the stages use (`configure` applies it), in fresh processes, alternating.

Each process builds one architecture with random weights (seeded), then times inference over
random images (what the evaluate, gradcam, embed and audit stages do) and training steps on
them, with PyTorch's threads and reproducible mode's kernel pins as the stages run them. It
prints per variant the median seconds, the minor page faults and the kernel (sys) seconds, and
the ratio of default to kept; then whether both variants computed the same bytes.

    python benchmarks/freed_memory.py                                  # the recipe: lite0, 288 px
    python benchmarks/freed_memory.py --model resnet18 --size 64 --images 64 --repeats 1
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

from cxr.training.kernels import pinned_environment

VARIANTS = ("glibc default", "kept (stages)")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--size", type=int, default=288, help="image side, pixels")
    parser.add_argument("--images", type=int, default=256, help="images scored per process")
    parser.add_argument("--batch-size", type=int, default=64, help="inference batch")
    parser.add_argument("--train-batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=6, help="training steps per process")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="processes per variant")
    parser.add_argument("--worker", choices=VARIANTS, help=argparse.SUPPRESS)
    return parser.parse_args()


def usage() -> tuple[float, int]:
    now = resource.getrusage(resource.RUSAGE_SELF)
    return now.ru_stime, now.ru_minflt


def measure(step: Callable[[], str]) -> dict:
    """Wall seconds, kernel seconds and minor page faults of `step()`, and its result."""
    sys_before, faults_before = usage()
    start = time.perf_counter()
    result = step()
    seconds = time.perf_counter() - start
    sys_after, faults_after = usage()
    return {
        "seconds": seconds,
        "sys": sys_after - sys_before,
        "faults": faults_after - faults_before,
        "result": result,
    }


def worker(args: argparse.Namespace) -> None:
    """One process, one variant: the numbers as JSON on stdout."""
    import torch

    from cxr.training.inference import normalized_batches, predict_logits
    from cxr.training.models import build_model
    from cxr.training.runtime import keep_freed_memory

    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    if args.worker == VARIANTS[1] and not keep_freed_memory():
        raise SystemExit("keep_freed_memory did not apply: this C library is not glibc")
    torch.manual_seed(0)
    model = build_model(args.model, 3, "none").to(memory_format=torch.channels_last)
    pixels = torch.randint(0, 256, (args.images, 1, args.size, args.size), dtype=torch.uint8)
    labels = torch.randint(0, 3, (args.images,))
    cpu = torch.device("cpu")
    predict_logits(model, args.model, pixels[: args.batch_size], args.batch_size, cpu)  # warm-up

    def infer() -> str:
        logits = predict_logits(model, args.model, pixels, args.batch_size, cpu)
        return hashlib.sha256(logits.numpy().tobytes()).hexdigest()

    def train() -> str:
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), 1e-3)
        batches = normalized_batches(pixels, args.model, args.train_batch, cpu)
        for (index, inputs), _ in zip(batches, range(args.steps), strict=False):
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(inputs), labels[index])
            loss.backward()
            optimizer.step()
        weights = torch.cat([p.detach().flatten() for p in model.parameters()])
        return hashlib.sha256(weights.numpy().tobytes()).hexdigest()

    print(json.dumps({"inference": measure(infer), "training": measure(train)}))


def run_worker(args: argparse.Namespace, variant: str) -> dict:
    command = [sys.executable, __file__, "--worker", variant]
    for name in ("model", "size", "images", "batch_size", "train_batch", "steps", "threads"):
        command += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    env = {**os.environ, **pinned_environment(args.threads)}
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{variant} worker failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    args = parse_args()
    if args.worker:
        worker(args)
        return
    print(
        f"{args.model}, {args.size} px, {args.threads} threads, reproducible mode's kernels: "
        f"{args.images} images scored in batches of {args.batch_size}, {args.steps} training "
        f"steps of {args.train_batch}; {args.repeats} processes per variant, alternating"
    )
    runs: dict[str, list[dict]] = {v: [] for v in VARIANTS}
    for _ in range(args.repeats):
        for variant in VARIANTS:
            runs[variant].append(run_worker(args, variant))
    differ = []
    print(f"\n{'phase':<11}{'variant':<16}{'seconds':>9}{'sys s':>8}{'page faults':>13}")
    for phase in ("inference", "training"):
        medians = {}
        for variant in VARIANTS:
            rows = [run[phase] for run in runs[variant]]
            medians[variant] = statistics.median(r["seconds"] for r in rows)
            faults = statistics.median(r["faults"] for r in rows)
            kernel = statistics.median(r["sys"] for r in rows)
            print(f"{phase:<11}{variant:<16}{medians[variant]:>9.2f}{kernel:>8.2f}{faults:>13,.0f}")
        ratio = medians[VARIANTS[0]] / medians[VARIANTS[1]]
        results = {run[phase]["result"] for variant in VARIANTS for run in runs[variant]}
        if len(results) != 1:
            differ.append(phase)
        same = "RESULTS DIFFER" if phase in differ else "same bytes in every process"
        print(f"{phase:<11}kept is {ratio:.2f}x as fast as the default; {same}")
    if differ:
        raise SystemExit(f"the allocator setting changed what {' and '.join(differ)} computed")


if __name__ == "__main__":
    main()
