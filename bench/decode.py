"""Decode and preprocessing cost per transfer syntax for a 2500×2048 12-bit chest radiograph.

    .venv/bin/python bench/decode.py [--repeats 5]

For each encoding: median milliseconds to read + decode the file (pydicom with the fastest installed plugin),
and to go on to the model input (display image via pydicom's LUT functions, then 224×224 tensor). The image is a
real chest radiograph from ../shared/data/kermany-val-fullres scaled to 12 bits and resized to 2500×2048
(falling back to a synthetic chest when the data folder is absent).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom import dcmread
from pydicom.uid import UID, JPEGBaseline8Bit
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from dicom_io.display import render  # noqa: E402
from dicom_io.synthetic import chest_pixels  # noqa: E402
from model.preprocess import PreprocessSpec, to_model_input  # noqa: E402

from pixel_samples import LOSSLESS, LOSSY, dataset_from_pixels, encode, real_chest_12bit  # noqa: E402

ROWS, COLUMNS = 2500, 2048


def source_pixels() -> tuple[np.ndarray, str]:
    pixels = real_chest_12bit(max_side=4096)
    if pixels is None:
        return chest_pixels(ROWS, COLUMNS), "synthetic chest"
    resized = Image.fromarray(pixels.astype(np.int32)).resize((COLUMNS, ROWS), Image.Resampling.BILINEAR)
    return np.asarray(resized).astype(np.uint16), "Kermany val NORMAL, scaled to 12 bits"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    pixels, origin = source_pixels()
    spec = PreprocessSpec()
    table = Table(title=f"Decode and preprocess a {ROWS}×{COLUMNS} 12-bit CR ({origin}); median of {args.repeats}")
    for column in ("transfer syntax", "file MB", "read + decode ms", "→ model input ms", "total ms"):
        table.add_column(column, justify="left" if column == "transfer syntax" else "right")
    with tempfile.TemporaryDirectory() as work:
        for syntax in LOSSLESS + LOSSY + [JPEGBaseline8Bit]:
            folder = Path(work) / syntax
            folder.mkdir()
            encode(dataset_from_pixels(pixels, monochrome1=True, window=(2048, 4096)), syntax, folder)
            path = folder / f"{syntax}.dcm"
            decode_ms, prepare_ms = [], []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                ds = dcmread(path)
                _ = ds.pixel_array  # decode: that is what is timed
                t1 = time.perf_counter()
                to_model_input(render(ds).image, spec)
                t2 = time.perf_counter()
                decode_ms.append((t1 - t0) * 1000)
                prepare_ms.append((t2 - t1) * 1000)
            decode, prepare = statistics.median(decode_ms), statistics.median(prepare_ms)
            table.add_row(UID(syntax).keyword, f"{path.stat().st_size / 1e6:.1f}", f"{decode:.0f}", f"{prepare:.0f}",
                          f"{decode + prepare:.0f}")
    Console(width=120).print(table)


if __name__ == "__main__":
    main()
