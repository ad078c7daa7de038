"""Stream scoring throughput with online features (target: >= 5,000 tx/s sustained, 2 cores).

Self-contained: generates raw transactions (``pipelines.data.datagen``, 1% malformed,
card numbers in clear as they arrive), registers a real XGBoost model over the
full feature set, then streams the CSV through ``StreamScorer`` in process:
CSV parsing, the ingest job's validation and tokenisation, online features one
transaction at a time, vectorised scoring per micro-batch, Parquet output,
dead letters, alerts and atomic state commits. Each repeat starts from empty
state. Also reported: the online feature engine alone and one state commit.

The stream is capped at ``MAX_STREAMED`` transactions so ``--size 1000000``
finishes in minutes; throughput is per transaction either way.
"""

from __future__ import annotations

import shutil
import statistics
import time
from pathlib import Path

from bench._harness import Result
from pipelines.core.notifications import OutboxNotifier
from pipelines.core.workspace import Workspace
from pipelines.data.datagen import GeneratorConfig, generate_transactions, write_landing_drops
from pipelines.data.features.definitions import FEATURE_COLUMNS
from pipelines.data.ingest import Tokeniser, load_key
from pipelines.model.registry import APPROVED, LocalModelRegistry
from pipelines.serving.alerts.cases import CaseQueue
from pipelines.serving.deploy.sample_model import create_request, train_model_files, upload_model
from pipelines.serving.online.engine import OnlineFeatureEngine
from pipelines.serving.online.store import LocalStateStore
from pipelines.serving.scoring.batch import load_model
from pipelines.serving.stream import InProcessModel, StreamScorer, StreamSettings, read_records
from pipelines.serving.stream.scorer import dead_letter_dir

AREA = "stream"
TARGET_TX_PER_S = 5000.0
MAX_STREAMED = 200_000
REPEAT = 3
BATCH_SIZE = 5000
# The sample model is trained on synthetic values; at 0.99 it alerts on ~1% of
# transactions, an investigator-sized queue rather than a flood.
THRESHOLD = 0.99


def _input_file(root: Path, size: int):
    """A CSV stream of ``size`` raw transactions (and the generated table behind it)."""
    days = max(10, min(60, size // 5000))
    table = generate_transactions(GeneratorConfig(transactions=size, days=days, seed=11))
    drops = write_landing_drops(table, root / "drops", "csv", malformed_rate=0.01, seed=3)
    target = root / "stream.csv"
    with target.open("w", encoding="utf-8") as out:
        for index, path in enumerate(sorted(drops)):
            with path.open(encoding="utf-8") as handle:
                if index:
                    handle.readline()  # one header for the whole stream
                shutil.copyfileobj(handle, out)
    return target, table


def _workspace(root: Path) -> Workspace:
    ws = Workspace.open(root / "ws")
    model_dir = train_model_files(root / "model", features=tuple(FEATURE_COLUMNS))
    uri = upload_model(ws, model_dir, "models/bench/model.tar.gz")
    registry = LocalModelRegistry(ws.registry_db)
    arn = registry.create_model_package(create_request("fraud-detection", uri), "bench")
    registry.update_model_package(arn["ModelPackageArn"], APPROVED, "bench-approver", "bench")
    return ws


def _reset(ws: Workspace) -> None:
    for path in (ws.state_dir / "online", ws.scored, dead_letter_dir(ws), ws.outbox):
        shutil.rmtree(path, ignore_errors=True)
    ws.cases_db.unlink(missing_ok=True)


def _stream_once(ws: Workspace, source: Path) -> tuple[float, float, int]:
    _reset(ws)
    model = InProcessModel(load_model(ws, "1", THRESHOLD))
    scorer = StreamScorer(
        ws, model, Tokeniser(load_key(ws.secrets)), CaseQueue(ws.cases_db),
        OutboxNotifier(ws.outbox), StreamSettings(batch_size=BATCH_SIZE), source=str(source),
    )
    wall, cpu = time.perf_counter(), time.process_time()
    summary = scorer.run(read_records(str(source)))
    return time.perf_counter() - wall, time.process_time() - cpu, summary.counts["records"]


def _engine_rows(table) -> list[dict]:
    """The generated transactions as the engine reads them, in time order."""
    rows = table.select(["transaction_id", "timestamp", "customer_id", "terminal_id", "amount",
                         "channel", "country", "is_cash", "is_fraud"]).to_pylist()
    for row in rows:
        row["ts_us"] = int(row.pop("timestamp").timestamp()) * 1_000_000
    return sorted(rows, key=lambda r: (r["ts_us"], r["transaction_id"]))


def run(size: int, workdir: Path) -> list[Result]:
    workdir.mkdir(parents=True, exist_ok=True)
    streamed = min(size, MAX_STREAMED)
    source, table = _input_file(workdir, streamed)
    ws = _workspace(workdir)
    runs = [_stream_once(ws, source) for _ in range(REPEAT)]
    records = runs[0][2]
    wall = statistics.median(r[0] for r in runs)
    cpu = statistics.median(r[1] for r in runs)

    rows = _engine_rows(table)
    engine_times = []
    for _ in range(REPEAT):
        engine = OnlineFeatureEngine()
        start = time.perf_counter()
        for row in rows:
            engine.process(row)
        engine_times.append(time.perf_counter() - start)
    store = LocalStateStore(workdir / "commit-probe")
    start = time.perf_counter()
    store.commit(engine, {"seq": 1})
    commit_s = time.perf_counter() - start

    rate = records / wall
    return [
        Result(AREA, "records streamed", float(records), "records"),
        Result(AREA, "end-to-end throughput", rate, "tx/s", f">= {TARGET_TX_PER_S:,.0f}",
               rate >= TARGET_TX_PER_S),
        Result(AREA, "end-to-end CPU per tx", 1e6 * cpu / records, "µs"),
        Result(AREA, "online features only", len(rows) / statistics.median(engine_times),
               "tx/s"),
        Result(AREA, "commit of the whole state", commit_s, "s"),
        Result(AREA, "state size on disk", store.path.stat().st_size / 2**20, "MiB"),
    ]
