"""Training throughput of ResNet50 on this machine: images/s per input size (SGD momentum step, fp32
channels-last on the CPU; fp16 autocast on a GPU). Synthetic inputs, so it measures the network, not decoding.

    python bench/train.py [--sizes 64,96,128,224] [--threads 1,2] [--batch 32] [--steps 3]
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


def measure(size: int, batch: int, steps: int, device: torch.device) -> float:
    torch.manual_seed(0)
    network = build_network(2).to(device, memory_format=torch.channels_last).train()
    optimizer = torch.optim.SGD(network.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda")
    inputs = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=torch.channels_last)
    targets = torch.randint(0, 2, (batch,), device=device)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.float16, enabled=device.type == "cuda"):
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
    parser.add_argument("--sizes", default="64,96,128,224")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--device", default="")
    parser.add_argument("--threads", default="", help="comma-separated CPU thread counts to compare, e.g. 1,2")
    args = parser.parse_args()
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    threads = [int(t) for t in args.threads.split(",") if t] or [torch.get_num_threads()]
    print(f"ResNet50 training (SGD momentum step), batch {args.batch}, {args.steps} timed steps after one warm-up, "
          f"device {device} ({name}), torch {torch.__version__}")
    print(f"| {'size':>5} | {'threads':>7} | {'images/s':>9} | {'min per 5,000 images':>21} |")
    print(f"|{'-' * 7}|{'-' * 9}|{'-' * 11}|{'-' * 23}|")
    for size in (int(s) for s in args.sizes.split(",")):
        for count in threads:
            torch.set_num_threads(count)
            rate = measure(size, args.batch, args.steps, device)
            print(f"| {size:>5} | {count:>7} | {rate:>9.1f} | {5000 / rate / 60:>21.1f} |", flush=True)


if __name__ == "__main__":
    main()
