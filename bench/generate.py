"""Generator speed: 1M transactions generated in < 10 s on 2 cores; writes timed apart.

The measurement runs in a child process so the peak memory reported is the
generator's own, not that of other benchmark areas run before it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from bench._harness import Result

AREA = "generate"
TARGET_GENERATE_SECONDS_PER_MILLION = 10.0
REPEAT = 3

_CHILD = """
import json, shutil, sys, time, statistics
from pathlib import Path
from bench._harness import median_seconds, peak_rss_mb
from pipelines.data.datagen import GeneratorConfig, generate_transactions, write_landing_drops

size, workdir, repeat = int(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
config = GeneratorConfig(transactions=size)
kept = []
generate = lambda: kept.append(generate_transactions(config))  # noqa: E731
figures = {"generate_s": median_seconds(generate, repeat)}
table = kept[-1]
kept.clear()
for fmt, rate in (("csv", 0.0), ("csv", 0.01), ("parquet", 0.0)):
    out = workdir / f"{fmt}-{rate}"
    def write():
        shutil.rmtree(out, ignore_errors=True)
        write_landing_drops(table, out, fmt, rate, config.seed)
    figures[f"write_{fmt}_{rate}_s"] = median_seconds(write, repeat)
    figures[f"write_{fmt}_{rate}_mb"] = sum(p.stat().st_size for p in out.iterdir()) / 2**20
    shutil.rmtree(out, ignore_errors=True)
figures["peak_mb"] = peak_rss_mb()
print(json.dumps(figures))
"""


def run(size: int, workdir: Path) -> list[Result]:
    """Median generate and write times at ``size`` rows, and peak memory."""
    workdir.mkdir(parents=True, exist_ok=True)
    repo = Path(__file__).resolve().parent.parent
    completed = subprocess.run(
        [sys.executable, "-c", _CHILD, str(size), str(workdir), str(REPEAT)],
        cwd=repo,
        capture_output=True,
        text=True,
        check=True,
    )
    figures = json.loads(completed.stdout.strip().splitlines()[-1])
    target_s = TARGET_GENERATE_SECONDS_PER_MILLION * size / 1_000_000
    results = [
        Result(
            AREA,
            "generate",
            figures["generate_s"],
            "s",
            f"< {target_s:g} s",
            figures["generate_s"] < target_s,
        ),
        Result(AREA, "generate rate", size / figures["generate_s"], "rows/s"),
    ]
    for key, label in (
        ("csv_0.0", "write CSV"),
        ("csv_0.01", "write CSV, 1% malformed"),
        ("parquet_0.0", "write Parquet"),
    ):
        seconds = figures[f"write_{key}_s"]
        results.append(Result(AREA, label, seconds, "s"))
        results.append(Result(AREA, f"{label} rate", size / seconds, "rows/s"))
        results.append(Result(AREA, f"{label} size", figures[f"write_{key}_mb"], "MiB"))
    results.append(Result(AREA, "peak memory", figures["peak_mb"], "MiB"))
    return results
