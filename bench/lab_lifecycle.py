"""Lab lifecycle figures: image build (cold), up (cached image, cold machines), second up,
memory of the running lab, down. Prints one JSON object; run as root on an idle machine.

    .venv/bin/python bench/lab_lifecycle.py [--skip-image]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from hastack.lab import image
from hastack.lab.lab import Lab

HASTACK = str(Path(sys.executable).parent / "hastack")


def timed(*args: str) -> float:
    started = time.monotonic()
    subprocess.run([HASTACK, *args], check=True, stdout=subprocess.DEVNULL)
    return round(time.monotonic() - started, 1)


def cold_image_build() -> float:
    """Build the image from nothing into a scratch cache (the real cache is left alone)."""
    scratch = Path(tempfile.mkdtemp(prefix="hastack-bench-"))
    os.environ["HASTACK_CACHE"] = str(scratch)
    try:
        started = time.monotonic()
        image.build(image.image_root().parent, lambda _msg: None)
        return round(time.monotonic() - started, 1)
    finally:
        del os.environ["HASTACK_CACHE"]
        shutil.rmtree(scratch, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--skip-image", action="store_true", help="skip the cold image build")
    args = parser.parse_args()
    figures: dict[str, float | int | str] = {}
    if not args.skip_image:
        figures["image_build_cold_s"] = cold_image_build()
    timed("down")
    timed("up")  # makes sure the image is cached and the wheelhouse built
    timed("down")
    figures["up_cached_image_cold_machines_s"] = timed("up")
    figures["second_up_s"] = timed("up")
    lab = Lab()
    topo = lab.require_topology()
    total = sum(m.memory_bytes() for m in lab.machines(topo))
    figures["lab_memory_pss_mib"] = round(total / 2**20)
    figures["machines"] = len(topo.machines)
    figures["down_s"] = timed("down")
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
