"""Copy the paper-scale figures' PNGs and JSON records next to paper_figures/RESULTS.md, small enough to commit.

    python scripts/results_pictures.py FIGURES_DIR [--out paper_figures/results] [--width 1100] [--colors 48]
                                       [--max-json-kib 512]

FIGURES_DIR holds the scripts' output folders (``gradients_explode/``, ``shattered_gradients/`` or the PNGs
themselves). Each PNG is scaled down to at most ``--width`` pixels and stored with an adaptive palette (Pillow,
which matplotlib already needs; octree quantisation, which keeps matplotlib's line colours apart: median cut
turned its blue and green lines into one teal). Each figure's JSON record (every plotted series, the settings
and the machine: ``nablax.figures``) is copied beside its picture, so that RESULTS.md's numbers can be read
again: as it is, or, when it is larger than ``--max-json-kib`` (SG Fig. 4's holds its Gram images: 7 MB),
without its largest series, each replaced by a note of its size (``slim``). The per-run folders stay where they
are.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from PIL import Image


def shrink(src: Path, dst: Path, width: int, colors: int) -> int:
    img = Image.open(src).convert("RGB")
    if img.width > width:
        img = img.resize((width, round(img.height * width / img.width)), Image.LANCZOS)
    img.quantize(colors=colors, method=Image.Quantize.FASTOCTREE).save(dst, optimize=True)
    return dst.stat().st_size


def slim(record: dict, max_bytes: int) -> dict:
    """A copy of the record without its largest series (largest first) until the rest fits in ``max_bytes`` of JSON."""
    record = {**record, "panels": {k: {**p, "series": dict(p["series"])} for k, p in record["panels"].items()}}
    series = [(len(json.dumps(v)), key, name) for key, panel in record["panels"].items()
              for name, v in panel["series"].items()]
    size = len(json.dumps(record))
    for n, key, name in sorted(series, reverse=True):
        if size <= max_bytes:
            break
        record["panels"][key]["series"][name] = {"left_out": f"{n} bytes of JSON; the full record has it"}
        size -= n
    return record


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("figures", type=Path)
    p.add_argument("--out", type=Path, default=Path("paper_figures/results"))
    p.add_argument("--width", type=int, default=1100)
    p.add_argument("--colors", type=int, default=48)
    p.add_argument("--max-json-kib", type=int, default=512)
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    total = 0
    for src in sorted(args.figures.rglob("*.png")):
        prefix = {"gradients_explode": "ge", "shattered_gradients": "sg"}.get(src.parent.name, src.parent.name)
        if src.parent.name.startswith("."):  # caches
            continue
        dst = args.out / f"{prefix}_{src.name}"
        total += shrink(src, dst, args.width, args.colors)
        print(f"{dst}: {dst.stat().st_size / 1024:.0f} KiB")
        record, copy = src.with_suffix(".json"), dst.with_suffix(".json")
        if record.exists() and record.stat().st_size <= args.max_json_kib * 1024:
            shutil.copyfile(record, copy)
        elif record.exists():
            copy.write_text(json.dumps(slim(json.loads(record.read_text()), args.max_json_kib * 1024)))
            print(f"{record}: {record.stat().st_size / 1024:.0f} KiB, over --max-json-kib: its largest series left out")
        if record.exists():
            total += copy.stat().st_size
            print(f"{copy}: {copy.stat().st_size / 1024:.0f} KiB")
    print(f"{total / 1024 / 1024:.2f} MiB in all")


if __name__ == "__main__":
    main()
