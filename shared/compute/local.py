"""Local training compute: the train entry point as a subprocess on this machine.

``begin_training`` starts ``python -m services.train.entrypoint --mlflow`` in its own process
group and returns at once; ``get_job_status`` polls it. The job's stdout/stderr go to
``<work_dir>/<job_id>/{stdout,stderr}.log``, kept for jobs that did not succeed; a failed job's
status message is the tail of its stderr. A job running past ``timeout_s`` is killed (its whole
process group) on the next ``get_job_status`` and reported failed.

Job state lives in this object's memory only: after a worker restart the handles it gave out
are unknown (``JobNotFoundError``) and their processes, if still running, are orphans. Callers
that must survive a restart should treat ``JobNotFoundError`` from this adapter as "lost" and
re-run the stage.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from shared.compute.port import JobHandle, JobNotFoundError, JobStatus, TrainingJob

BACKEND = "local"
ENTRYPOINT_MODULE = "services.train.entrypoint"
STDERR_TAIL_CHARS = 2000
# The folder holding the ``shared``/``services``/``recipes`` packages, put on the child's path.
_PROJECT_ROOT = Path(__file__).resolve().parents[2]


@dataclass
class _LocalJob:
    process: subprocess.Popen[bytes]
    started: float
    job_dir: Path
    stdout: IO[bytes]
    stderr: IO[bytes]
    final: JobStatus | None = None


class LocalTrainingCompute:
    def __init__(
        self,
        work_dir: Path,
        *,
        python: str = sys.executable,
        timeout_s: float = 3600.0,
        kill_grace_s: float = 5.0,
        recipe_modules: tuple[str, ...] = (),
        env: Mapping[str, str] | None = None,
    ) -> None:
        """``env`` is added to this process's environment for the job (e.g. the
        ``RETRAINER_MLFLOW_*`` settings the entry point logs with)."""
        self._work_dir = Path(work_dir)
        self._python = python
        self._timeout_s = timeout_s
        self._kill_grace_s = kill_grace_s
        self._recipe_modules = recipe_modules
        self._env = dict(env or {})
        self._jobs: dict[str, _LocalJob] = {}
        self._lock = threading.Lock()

    def command_line(self, job: TrainingJob) -> list[str]:
        args = [
            self._python,
            "-m",
            ENTRYPOINT_MODULE,
            "--recipe",
            job.recipe,
            "--split",
            job.input_uri,
            "--output",
            job.output_uri,
            "--params-json",
            json.dumps(dict(job.params)),
            "--correlation-id",
            job.correlation_id,
            "--mlflow",
            "--experiment",
            job.experiment_name,
        ]
        for key, value in sorted(job.tags.items()):
            args += ["--tag", f"{key}={value}"]
        for module in self._recipe_modules:
            args += ["--recipe-module", module]
        return args

    def begin_training(self, job: TrainingJob) -> JobHandle:
        job_id = f"local-{uuid.uuid4().hex}"
        job_dir = self._work_dir / job_id
        job_dir.mkdir(parents=True)
        (job_dir / "job.json").write_text(
            json.dumps(
                {
                    "correlation_id": job.correlation_id,
                    "recipe": job.recipe,
                    "experiment_name": job.experiment_name,
                    "input_uri": job.input_uri,
                    "output_uri": job.output_uri,
                    "tags": dict(job.tags),
                },
                indent=2,
            )
        )
        env = {**os.environ, **self._env}
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(_PROJECT_ROOT), env.get("PYTHONPATH", "")) if p
        )
        env["RETRAINER_CORRELATION_ID"] = job.correlation_id
        stdout = (job_dir / "stdout.log").open("wb")
        stderr = (job_dir / "stderr.log").open("wb")
        try:
            process = subprocess.Popen(
                self.command_line(job),
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=stderr,
                env=env,
                start_new_session=True,  # its own process group, killed as a whole
            )
        except BaseException:
            stdout.close()
            stderr.close()
            raise
        with self._lock:
            self._jobs[job_id] = _LocalJob(process, time.monotonic(), job_dir, stdout, stderr)
        return JobHandle(job_id=job_id, backend=BACKEND)

    def get_job_status(self, handle: JobHandle) -> JobStatus:
        with self._lock:
            job = self._job(handle)
            if job.final is not None:
                return job.final
            code = job.process.poll()
            if code is None:
                elapsed = time.monotonic() - job.started
                if elapsed <= self._timeout_s:
                    return JobStatus("running")
                self._kill(job)
                return self._finish(
                    job, JobStatus("failed", f"timed out after {self._timeout_s:g} s")
                )
            if code == 0:
                status = self._finish(job, JobStatus("succeeded"))
                # Its output is elsewhere; only failures' logs are worth keeping.
                shutil.rmtree(job.job_dir, ignore_errors=True)
                return status
            tail = _tail(job.job_dir / "stderr.log")
            return self._finish(job, JobStatus("failed", f"exit code {code}: {tail}".rstrip()))

    def cancel_job(self, handle: JobHandle) -> None:
        with self._lock:
            job = self._job(handle)
            if job.final is not None:
                return
            if job.process.poll() is not None:
                # Finished before the cancel arrived: keep what it did.
                return
            self._kill(job)
            self._finish(job, JobStatus("cancelled", "cancelled by request"))

    def close(self) -> None:
        """Kill every job still running (a worker shutting down)."""
        with self._lock:
            for job in self._jobs.values():
                if job.final is None and job.process.poll() is None:
                    self._kill(job)
                    self._finish(job, JobStatus("cancelled", "compute closed"))

    def _job(self, handle: JobHandle) -> _LocalJob:
        job = self._jobs.get(handle.job_id) if handle.backend == BACKEND else None
        if job is None:
            raise JobNotFoundError(handle.job_id)
        return job

    def _kill(self, job: _LocalJob) -> None:
        """SIGTERM the job's process group, then SIGKILL what is left after the grace period."""
        pgid = job.process.pid  # start_new_session: the child leads its own group
        _signal_group(pgid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            job.process.wait(timeout=self._kill_grace_s)
        # Children may outlive the leader: always make sure the group is gone.
        _signal_group(pgid, signal.SIGKILL)
        job.process.wait()

    @staticmethod
    def _finish(job: _LocalJob, status: JobStatus) -> JobStatus:
        job.final = status
        job.stdout.close()
        job.stderr.close()
        return status


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


def _tail(path: Path, chars: int = STDERR_TAIL_CHARS) -> str:
    try:
        with path.open("rb") as file:
            file.seek(0, os.SEEK_END)
            size = file.tell()
            file.seek(max(0, size - chars))
            return file.read().decode("utf-8", errors="replace").strip()
    except OSError:
        return ""
