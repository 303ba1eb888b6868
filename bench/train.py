"""Training throughput of ResNet50 on this machine: images/s per input size and precision (SGD momentum step,
channels-last; fp32 or bf16 autocast on the CPU, fp16 autocast on a GPU). Synthetic inputs, so it measures the
network, not decoding. The precision training picks by itself (``model.precision``) is marked in the table.

    python bench/train.py [--sizes 128,224] [--precisions fp32,bf16] [--threads 1,2] [--batch 32] [--steps 3]
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from model.network import build_network  # noqa: E402
from model.precision import autocast_dtype, cpu_has_native_bf16, precision_name  # noqa: E402

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def measure(size: int, batch: int, steps: int, device: torch.device, precision: torch.dtype | None) -> float:
    torch.manual_seed(0)
    network = build_network(2).to(device).to(memory_format=torch.channels_last).train()
    optimizer = torch.optim.SGD(network.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    scaler = torch.amp.GradScaler("cuda", enabled=precision is torch.float16)
    inputs = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=torch.channels_last)
    targets = torch.randint(0, 2, (batch,), device=device)

    def step() -> None:
        with torch.autocast(device.type, dtype=precision or torch.float32, enabled=precision is not None):
            loss = F.cross_entropy(network(inputs).float(), targets)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    step()  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="128,224")
    parser.add_argument("--precisions", default="fp32,bf16", help="comma-separated: fp32, bf16 (CPU), fp16 (GPU)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--device", default="")
    parser.add_argument("--threads", default="", help="comma-separated CPU thread counts to compare, e.g. 1,2")
    args = parser.parse_args()
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    threads = [int(t) for t in args.threads.split(",") if t] or [torch.get_num_threads()]
    chosen = precision_name(autocast_dtype(device))
    print(f"ResNet50 training (SGD momentum step), batch {args.batch}, {args.steps} timed steps after one warm-up, "
          f"device {device} ({name}), native bf16: {cpu_has_native_bf16()}, training would use {chosen}, "
          f"torch {torch.__version__}")
    print(f"| {'size':>5} | {'precision':>14} | {'threads':>7} | {'images/s':>9} | {'min per 10,000 images':>22} |")
    print(f"|{'-' * 7}|{'-' * 16}|{'-' * 9}|{'-' * 11}|{'-' * 24}|")
    for size in (int(s) for s in args.sizes.split(",")):
        for precision_key in args.precisions.split(","):
            precision = PRECISIONS[precision_key.strip()]
            label = precision_name(precision) + (" *" if precision_name(precision) == chosen else "")
            for count in threads:
                torch.set_num_threads(count)
                rate = measure(size, args.batch, args.steps, device, precision)
                print(f"| {size:>5} | {label:>14} | {count:>7} | {rate:>9.1f} | {10000 / rate / 60:>22.1f} |",
                      flush=True)
    print("* = the precision training and serving choose on this machine")


if __name__ == "__main__":
    main()
