"""`python -m text2brain.bench NAME [options]`: run one benchmark."""

from __future__ import annotations

import importlib
import sys

BENCHMARKS = {
    "render": "text2brain.bench.render",
    "data": "text2brain.bench.data",
    "inference": "text2brain.bench.inference",
    "serve": "text2brain.bench.serve",
    "export": "text2brain.bench.export",
}


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in BENCHMARKS:
        names = ", ".join(BENCHMARKS)
        sys.exit(f"usage: python -m text2brain.bench {{{names}}} [options]")
    importlib.import_module(BENCHMARKS[sys.argv[1]]).main(sys.argv[2:])


if __name__ == "__main__":
    main()
