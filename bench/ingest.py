"""Ingest speed: >= 300k rows/s from CSV at 1M rows on 2 cores, peak memory <= 4 GB.

Landing data comes from ``pipelines.data.datagen`` (one CSV per day, 1 % malformed
rows) or, if the generator is not installed, from a small local helper. Each
measurement runs in a child process, so the peak memory reported is the
ingest's own, not the generator's.

At 5M (2026-12-03, 90 daily CSV files from ``fraudops generate``, load 1.0-1.5,
``pipelines.data.ingest.ingest`` alone, six runs): 16-33 s wall (the shared
disk and cores), 21.5-26.8 s CPU; 1.75M took 6-9 s in ``fraudops run``. The
profile at 5M: reading 4.8-6.8 s, classify 8.8-10.3 s, of which 4.4-4.6 s is
dictionary-encoding the 5M ids to find in-batch repeats (1.2 s at 1.75M: the
one clearly superlinear part, a hash table of strings outgrowing the caches).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from bench._harness import Result

AREA = "ingest"
TARGET_ROWS_PER_SECOND = 300_000
TARGET_PEAK_MB = 4096
REPEAT = 3
MALFORMED_RATE = 0.01

_GENERATE = f"""
import sys
from pathlib import Path
size, out = int(sys.argv[1]), Path(sys.argv[2])
try:
    from pipelines.data.datagen import GeneratorConfig, generate_transactions, write_landing_drops
except ImportError:
    from bench.ingest import write_simple_drops
    write_simple_drops(size, out)
else:
    config = GeneratorConfig(transactions=size, days=30)
    write_landing_drops(generate_transactions(config), out, "csv", {MALFORMED_RATE!r}, config.seed)
"""

_INGEST = """
import json, resource, shutil, statistics, sys, warnings
from pathlib import Path
from bench._harness import median_seconds, peak_rss_mb
from pipelines.data.ingest import ingest
from pipelines.core.workspace import Workspace

warnings.simplefilter("ignore")
landing, workdir, repeat = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
reports, cpu = [], []

def cpu_seconds():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime

def fresh_run():
    shutil.rmtree(workdir, ignore_errors=True)
    start = cpu_seconds()
    reports.append(ingest(Workspace.open(workdir), [landing]))
    cpu.append(cpu_seconds() - start)

figures = {"ingest_s": median_seconds(fresh_run, repeat)}
figures["cpu_s"] = statistics.median(cpu)
figures["reingest_s"] = median_seconds(
    lambda: reports.append(ingest(Workspace.open(workdir), [landing])), 1)
first, again = reports[0], reports[-1]
figures.update(rows=first.rows_read, curated=first.rows_curated,
               quarantined=first.rows_quarantined, balanced=first.balanced and again.balanced,
               reingest_added=again.rows_curated, peak_mb=peak_rss_mb())
print(json.dumps(figures))
"""


def write_simple_drops(size: int, out: Path, days: int = 30) -> None:
    """Fallback landing data: valid rows with Luhn-valid cards, one CSV per day."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.csv as pcsv

    rng = np.random.default_rng(0)
    body = rng.integers(10**13, 10**14, 5_000)
    cards = np.array([_with_luhn_digit(f"4{b}") for b in body])
    seconds = np.sort(rng.integers(0, days * 86_400, size)) + 1_767_225_600  # 2026-01-01
    day_of_row = seconds // 86_400
    out.mkdir(parents=True, exist_ok=True)
    for day in np.unique(day_of_row):
        rows = np.flatnonzero(day_of_row == day)
        stamps = np.datetime_as_string(seconds[rows].astype("datetime64[s]")) + "Z"
        table = pa.table({
            "transaction_id": [f"tx{i:010d}" for i in rows],
            "timestamp": stamps,
            "customer_id": np.char.add("c", rng.integers(0, 5_000, rows.size).astype(str)),
            "terminal_id": np.char.add("t", rng.integers(0, 2_500, rows.size).astype(str)),
            "amount": np.round(rng.gamma(2.0, 40.0, rows.size) + 0.01, 2),
            "card_number": cards[rng.integers(0, cards.size, rows.size)],
            "currency": np.full(rows.size, "USD"),
        })
        pcsv.write_csv(table, out / f"transactions_{stamps[0][:10]}.csv")


def _with_luhn_digit(payload: str) -> str:
    total = 0
    for i, char in enumerate(reversed(payload)):
        digit = int(char) * (2 if i % 2 == 0 else 1)
        total += digit - 9 if digit > 9 else digit
    return payload + str((10 - total % 10) % 10)


def _child(code: str, *args: object) -> str:
    repo = Path(__file__).resolve().parent.parent
    completed = subprocess.run([sys.executable, "-c", code, *map(str, args)], cwd=repo,
                               capture_output=True, text=True)
    if completed.returncode != 0:
        raise RuntimeError(f"benchmark child failed:\n{completed.stderr[-3000:]}")
    return completed.stdout


def run(size: int, workdir: Path) -> list[Result]:
    """Median time to ingest ``size`` rows of CSV into a fresh workspace; re-ingest; memory."""
    landing = workdir / "landing"
    if not landing.is_dir():
        _child(_GENERATE, size, landing)
    figures = json.loads(_child(_INGEST, landing, workdir / "ws", REPEAT).splitlines()[-1])
    rate = figures["rows"] / figures["ingest_s"]
    return [
        Result(AREA, f"ingest {figures['rows']:,} CSV rows (median of {REPEAT})",
               figures["ingest_s"], "s"),
        Result(AREA, "ingest throughput", rate, "rows/s", f">= {TARGET_ROWS_PER_SECOND:,}",
               rate >= TARGET_ROWS_PER_SECOND),
        # The machine is shared: CPU time shows the work itself, independent of others' load.
        Result(AREA, "CPU time per ingest (all threads, median)", figures["cpu_s"], "s"),
        Result(AREA, "re-ingest same files (all duplicates)", figures["reingest_s"], "s",
               "adds 0 rows", figures["reingest_added"] == 0),
        Result(AREA, "rows quarantined", figures["quarantined"], "rows", "reconciled",
               bool(figures["balanced"])),
        Result(AREA, "peak memory", figures["peak_mb"], "MiB", f"<= {TARGET_PEAK_MB}",
               figures["peak_mb"] <= TARGET_PEAK_MB),
    ]
