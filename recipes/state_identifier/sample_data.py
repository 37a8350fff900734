"""A synthetic machine for demos and tests: three operating states, five noisy sensors.

The machine cycles ``idle -> ramp -> full_load -> idle ...`` with random segment lengths. Each
state has its own sensor levels (the ramp is a partial load that slowly rises), temperature
follows the load with thermal lag, about 3 % of the readings are missing at random and the
vibration sensor has one longer outage. One reading every 3 seconds for 3 hours (3600 rows),
written as one CSV file per hour under ``machine-01/``. Deterministic for a seed.

Command line::

    python -m recipes.state_identifier.sample_data OUT_DIR [--seed N]
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

STATES = ("idle", "ramp", "full_load")
SENSORS = ("temperature_c", "vibration_mm_s", "current_a", "pressure_bar", "rpm")

# Sensor level at zero load (idle) and at full load, and the noise standard deviation.
_IDLE = np.array([38.0, 0.4, 3.0, 1.0, 0.0])
_FULL = np.array([78.0, 4.5, 28.0, 6.0, 1480.0])
_NOISE = np.array([0.3, 0.15, 0.6, 0.08, 8.0])
# Segment length range in rows for each state.
_DURATIONS = {"idle": (150, 330), "ramp": (150, 300), "full_load": (180, 400)}

START = pd.Timestamp("2024-05-01T00:00:00Z")
INTERVAL = pd.Timedelta(seconds=3)
ROWS = 3600
ROWS_PER_FILE = 1200
MISSING_FRACTION = 0.03


@dataclass(frozen=True)
class SampleData:
    frame: pd.DataFrame  # timestamp (UTC) + sensor columns, NaN where a reading is missing
    states: np.ndarray  # the true state of every row


def generate(seed: int = 0, rows: int = ROWS) -> SampleData:
    rng = np.random.default_rng(seed)
    states = np.empty(rows, dtype=object)
    load = np.empty(rows)
    position, index = 0, int(rng.integers(len(STATES)))
    while position < rows:
        state = STATES[index % len(STATES)]
        low, high = _DURATIONS[state]
        length = min(int(rng.integers(low, high + 1)), rows - position)
        segment = slice(position, position + length)
        states[segment] = state
        if state == "idle":
            load[segment] = 0.0
        elif state == "ramp":
            load[segment] = np.linspace(0.35, 0.6, length)
        else:
            load[segment] = 1.0 + 0.03 * np.sin(np.arange(length) / 25.0)
        position += length
        index += 1

    levels = _IDLE + load[:, None] * (_FULL - _IDLE)
    # Temperature follows the load with a time constant of about 12 readings.
    temperature = np.empty(rows)
    temperature[0] = levels[0, 0]
    for t in range(1, rows):
        temperature[t] = temperature[t - 1] + 0.08 * (levels[t, 0] - temperature[t - 1])
    levels[:, 0] = temperature
    values = levels + rng.normal(size=levels.shape) * _NOISE
    values[:, 1] = np.abs(values[:, 1])  # vibration amplitude
    values[:, 4] = np.clip(values[:, 4], 0.0, None)  # rpm

    values[rng.random(values.shape) < MISSING_FRACTION] = np.nan
    outage = int(rng.integers(0, rows - 40))
    values[outage : outage + 40, 1] = np.nan

    frame = pd.DataFrame(np.round(values, 3), columns=list(SENSORS))
    frame.insert(0, "timestamp", START + INTERVAL * np.arange(rows))
    return SampleData(frame=frame, states=states)


def true_window_states(states: Sequence[str], window_size: int, step: int) -> np.ndarray:
    """The majority true state of each window, windows cut as the model cuts them."""
    values = np.asarray(states)
    starts = range(0, len(values) - window_size + 1, step)
    majority = []
    for start in starts:
        names, counts = np.unique(values[start : start + window_size], return_counts=True)
        majority.append(names[np.argmax(counts)])
    return np.array(majority, dtype=object)


def write_sample_data(out_dir: Path, seed: int = 0) -> None:
    """Writes ``machine-01/2024-05-01T00.csv`` ... (one file per hour) under ``out_dir``."""
    frame = generate(seed).frame
    folder = Path(out_dir) / "machine-01"
    folder.mkdir(parents=True, exist_ok=True)
    for start in range(0, len(frame), ROWS_PER_FILE):
        part = frame.iloc[start : start + ROWS_PER_FILE].copy()
        name = part["timestamp"].iloc[0].strftime("%Y-%m-%dT%H") + ".csv"
        part["timestamp"] = part["timestamp"].dt.strftime("%Y-%m-%dT%H:%M:%SZ")
        part.to_csv(folder / name, index=False)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("out_dir", type=Path, help="folder to write the CSV files into")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    write_sample_data(args.out_dir, args.seed)
    print(f"wrote sample state identifier data to {args.out_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
