"""The profile history: one Parquet file per successful run, a folder BI tools read as a table.

A recipe's aggregation may describe its data set in one flat record
(``DatasetSummary.history_record``); the aggregation worker keeps it beside the data set
(``_history_record.json``, so a cached data set still has it). When a run reaches its last
stage, the tag worker adds who and what (run id, recipe, raw data prefix, data-set version,
model name and version, whether it was promoted, when) and writes the row to
``artifacts/history/<recipe>/<run id>.parquet``.

One file per run rather than one growing file: two runs finishing together never race on a
read-modify-write, a retried tag stage overwrites its own file, and Power BI (folder
connector), Synapse serverless SQL, Spark and DuckDB (``read_parquet('…/*.parquet',
union_by_name=true)``) read a folder of Parquet files as one table, with columns that differ
between runs (one ``share_<label>`` column per class) unioned.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from shared.blobs.port import BlobStore
from shared.errors import BlobNotFoundError

HISTORY_RECORD_FILE = "_history_record.json"
HISTORY_PREFIX = "artifacts/history"

HistoryValue = str | int | float | bool


def save_record(out_dir: Path, record: Mapping[str, HistoryValue]) -> None:
    """Keep a data set's record beside it (the aggregation worker)."""
    (out_dir / HISTORY_RECORD_FILE).write_text(json.dumps(dict(record), sort_keys=True))


def history_blob(recipe: str, run_id: str) -> str:
    return f"{HISTORY_PREFIX}/{recipe}/{run_id}.parquet"


def append_run(
    blob_store: BlobStore,
    *,
    recipe: str,
    run_id: str,
    data: str,
    dataset_version: str,
    outcome: Mapping[str, HistoryValue | None],
    now: datetime | None = None,
) -> str | None:
    """Write the run's row; returns its blob name, or None when the data set has no record."""
    try:
        content = blob_store.download_blob(f"{dataset_version.rstrip('/')}/{HISTORY_RECORD_FILE}")
    except BlobNotFoundError:
        return None
    record: dict[str, Any] = json.loads(content.data)
    row: dict[str, Any] = {
        "recorded_at": (now or datetime.now(UTC)).isoformat(timespec="seconds"),
        "run_id": run_id,
        "recipe": recipe,
        "data": data,
        "dataset_version": dataset_version,
        **{key: value for key, value in outcome.items()},
        **{key: value for key, value in record.items() if key not in ("run_id", "recipe")},
    }
    name = history_blob(recipe, run_id)
    blob_store.upload_blob(name, _parquet(row))
    return name


def _parquet(row: Mapping[str, Any]) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pylist([dict(row)])
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return buffer.getvalue()
