"""Upload jobs: the slow part of an upload runs in a background thread; its state is kept for polling.

One job runs at a time (compression is CPU-bound and holds the compressor lock); the others queue.
A job's state is what GET /api/jobs/<id> shows; finished jobs are forgotten past MAX_FINISHED_JOBS.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from icae_rag.errors import InvalidInputError

logger = logging.getLogger(__name__)

# Upload jobs kept for GET /api/jobs/<id> after they end (oldest finished ones dropped first).
MAX_FINISHED_JOBS = 100

Progress = Callable[[str, int, int], None]
"""`progress(stage, done, total)`: what a job's work reports as it goes."""


class UnknownJobError(InvalidInputError):
    """No upload job has this id (it never existed, or ended long ago)."""

    status = 404


@dataclass
class UploadJob:
    """One upload being compressed and indexed: its state and progress, as GET /api/jobs/<id> shows it."""

    id: str
    name: str
    status: str = "queued"  # queued, running, done or failed
    stage: str = "queued"  # queued, compressing, embedding, indexing, done, failed
    done: int = 0
    total: int = 0
    document: dict[str, Any] | None = None
    error: str | None = None
    error_status: int | None = None

    def public(self) -> dict[str, Any]:
        """The job as the API returns it."""
        out = {"id": self.id, "name": self.name, "status": self.status, "stage": self.stage,
               "progress": {"done": self.done, "total": self.total}}
        if self.document is not None:
            out["document"] = self.document
        if self.error is not None:
            out["error"], out["error_status"] = self.error, self.error_status
        return out


class UploadJobs:
    """The upload jobs: started here, run one at a time in a background thread, polled by id."""

    def __init__(self) -> None:
        """No jobs yet; the worker thread starts with the first one."""
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="qa-upload")
        self._jobs: dict[str, UploadJob] = {}
        self._lock = threading.Lock()

    def start(self, name: str, work: Callable[[Progress], dict[str, Any]]) -> dict[str, Any]:
        """Queue `work(progress)` (returns the document record) as a job for `name`; the job as the API shows it."""
        job = UploadJob(id=uuid.uuid4().hex, name=name)
        with self._lock:
            self._jobs[job.id] = job
            self._forget_old_jobs()
        self._executor.submit(self._run, job, work)
        return job.public()

    def get(self, job_id: str) -> dict[str, Any]:
        """A job's state and progress; UnknownJobError (404) for an unknown id."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                raise UnknownJobError(f"no upload job {job_id!r}: it never existed or ended long ago")
            return job.public()

    def close(self) -> None:
        """Finish the running job; queued ones are dropped (upload them again)."""
        self._executor.shutdown(wait=True, cancel_futures=True)

    def _run(self, job: UploadJob, work: Callable[[Progress], dict[str, Any]]) -> None:
        def progress(stage: str, done: int, total: int) -> None:
            with self._lock:
                job.status, job.stage, job.done, job.total = "running", stage, done, total

        try:
            record = work(progress)
        except Exception as e:  # reported through the job; the work leaves the index unchanged on failure
            if not isinstance(e, InvalidInputError):
                logger.exception("indexing %s failed", job.name)
            with self._lock:
                job.status, job.stage = "failed", "failed"
                job.error = str(e) if isinstance(e, InvalidInputError) else (
                    f"indexing failed ({type(e).__name__}): see the server log")
                job.error_status = getattr(e, "status", 400) if isinstance(e, InvalidInputError) else 500
            return
        with self._lock:
            job.status, job.stage, job.document = "done", "done", record
            job.done = job.total

    def _forget_old_jobs(self) -> None:
        """Drop the oldest finished jobs past MAX_FINISHED_JOBS; the caller holds `_lock`."""
        finished = [j for j in self._jobs.values() if j.status in ("done", "failed")]
        for old in finished[: max(0, len(finished) - MAX_FINISHED_JOBS)]:
            del self._jobs[old.id]
