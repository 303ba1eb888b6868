"""bf16 against fp32 inference on the CPU: does bf16 keep the scores, and how fast is each here?

Scores the validation images of a training run (its ``split.json``) through the serving path in fp32 and in bf16
autocast, and prints the largest absolute score difference, both AUCs and images/s. Where the CPU has no native
bf16 the bf16 column is emulated (slow) but its scores are the same, so agreement can be measured on any machine.

    python bench/precision.py --split var/train/RUN/split.json [--model CKPT] [--limit 300]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from model.checkpoint import SHIPPED_CHECKPOINT, load_checkpoint  # noqa: E402
from model.folders import DEFAULT_POSITIVE  # noqa: E402
from model.inference import positive_probabilities  # noqa: E402
from model.metrics import roc_auc  # noqa: E402
from model.precision import cpu_has_native_bf16  # noqa: E402
from model.preparation import file_display  # noqa: E402
from model.preprocess import to_model_input  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", type=Path, required=True)
    parser.add_argument("--model", type=Path, default=SHIPPED_CHECKPOINT)
    parser.add_argument("--limit", type=int, default=0, help="every n-th image so that at most this many are used")
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    paths = [Path(p) for p in json.loads(args.split.read_text())["val"]]
    if args.limit and len(paths) > args.limit:
        paths = paths[:: -(-len(paths) // args.limit)]
    labels = np.array([int(p.parent.name in DEFAULT_POSITIVE) for p in paths])
    loaded = load_checkpoint(args.model)
    network = loaded.network.to(memory_format=torch.channels_last)
    spec = loaded.metadata.preprocess_spec
    inputs = torch.stack([to_model_input(file_display(p), spec) for p in paths])
    device = torch.device("cpu")
    results = {}
    for name, precision in (("fp32", None), ("bf16", torch.bfloat16)):
        started = time.perf_counter()
        scores = np.concatenate([positive_probabilities(network, inputs[i:i + args.batch], device,
                                                        precision=precision)
                                 for i in range(0, len(inputs), args.batch)])
        results[name] = (scores, len(inputs) / (time.perf_counter() - started))
    difference = np.abs(results["fp32"][0] - results["bf16"][0])
    print(f"model {loaded.metadata.version} sha256 {loaded.sha256[:12]}…, {len(paths)} validation images "
          f"({labels.sum()} positive), input {spec.size}px, native bf16: {cpu_has_native_bf16()}")
    print("| precision | AUC | images/s |\n|---|---|---|")
    for name, (scores, rate) in results.items():
        print(f"| {name} | {roc_auc(scores, labels):.4f} | {rate:.1f} |")
    threshold = loaded.metadata.threshold
    flips = int(np.sum((results["fp32"][0] >= threshold) != (results["bf16"][0] >= threshold)))
    print(f"max |score difference| {difference.max():.4f}, mean {difference.mean():.5f}, "
          f"flag changes at threshold {threshold:.3f}: {flips}")


if __name__ == "__main__":
    main()
