"""The job queue: one worker thread owns the model and runs jobs one at a time, first in first out.

Why one worker: a Model's native graphs and buffers are shared state (its calls are serialised by a
lock anyway), and a single owner makes model switches (/sdapi/v1/options) ordered with the
generations around them. HTTP handlers never touch the model; they submit a Job and await its
future, so the event loop stays free to answer /progress, /interrupt, /health and /metrics.

Cancelling: a waiting job is dropped from the queue; the running one is stopped at its next
sampling step through the pipeline's step callback (returning False raises sdcpp.errors.Cancelled,
after which the model is still usable: docs/generation.md).
"""
from __future__ import annotations

import concurrent.futures
import itertools
import threading
import time
from collections import deque
from typing import Any, Callable, Optional

from .. import errors

StepHook = Callable[["Job", int, int], None]

_ids = itertools.count(1)


class QueueFull(Exception):
    pass


class Job:
    """One request's work. `work(job)` runs on the worker thread; its return value (or exception)
    resolves `future`. Progress fields are written by the worker and read by /progress."""

    def __init__(self, kind: str, work: Callable[["Job"], Any], *, images: int = 0, steps: int = 0):
        self.id = next(_ids)
        self.kind = kind
        self.work = work
        self.future: concurrent.futures.Future = concurrent.futures.Future()
        self.created = time.time()
        self.started: Optional[float] = None
        self.cancel_reason: Optional[str] = None      # "interrupt", "disconnect", "shutdown"
        self.skip_image = False                       # A1111 /skip: drop this image, go on
        self.images = images
        self.image_index = 0
        self.steps = steps                            # sampling steps per image (updated by the callback)
        self.step = 0                                 # steps done in the current image
        self.last_step_at: Optional[float] = None
        self.step_seconds: Optional[float] = None
        self.hooks: list[StepHook] = []

    @property
    def cancelled(self) -> bool:
        return self.cancel_reason is not None

    def cancel(self, reason: str) -> None:
        if self.cancel_reason is None:
            self.cancel_reason = reason

    def begin_image(self, index: int) -> None:
        self.image_index, self.step, self.last_step_at = index, 0, None
        self.skip_image = False

    def on_step(self, step: int, total: int, _latents) -> bool:
        """The pipeline's step callback: record progress, run the hooks, say whether to go on."""
        now = time.perf_counter()
        # The first step of an image also holds the prompt encoding; it is not a step's time.
        self.step_seconds = None if self.last_step_at is None else now - self.last_step_at
        self.step, self.steps = step + 1, total
        for hook in tuple(self.hooks):
            hook(self, step, total)
        self.last_step_at = time.perf_counter()   # after the hooks: their time is not the step's
        return not (self.cancelled or self.skip_image)

    def progress(self) -> float:
        if self.images <= 0 or self.steps <= 0:
            return 0.0
        return min(1.0, (self.image_index * self.steps + self.step) / (self.images * self.steps))


class JobQueue:
    def __init__(self, max_queue: int, step_hooks: Optional[list[StepHook]] = None):
        self.max_queue = max_queue
        self.step_hooks: list[StepHook] = list(step_hooks or [])
        self._pending: deque[Job] = deque()
        self._cond = threading.Condition()
        self.running: Optional[Job] = None
        self._stopping = False
        self._thread: Optional[threading.Thread] = None
        self.on_finish: Optional[Callable[[Job, str], None]] = None   # (job, outcome) for metrics

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="sdcpp-worker", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        with self._cond:
            self._stopping = True
            while self._pending:
                self._drop(self._pending.popleft(), "shutdown")
            if self.running is not None:
                self.running.cancel("shutdown")
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    # ------------------------------------------------------------------ clients
    def submit(self, job: Job) -> Job:
        """Queue `job`; QueueFull when max_queue jobs already wait behind the running one."""
        with self._cond:
            if self._stopping:
                raise QueueFull("the server is shutting down")
            # In the system: the waiting jobs and the running one (or the one about to run).
            if len(self._pending) + (self.running is not None) > self.max_queue:
                raise QueueFull(f"{len(self._pending)} jobs are waiting (--max-queue {self.max_queue})")
            job.hooks = self.step_hooks
            self._pending.append(job)
            self._cond.notify_all()
        return job

    def cancel(self, job: Job, reason: str) -> None:
        """Stop `job` wherever it is: dropped if waiting, stopped at its next step if running."""
        with self._cond:
            job.cancel(reason)
            try:
                self._pending.remove(job)
            except ValueError:
                return
            self._drop(job, reason)

    def interrupt(self) -> bool:
        """Stop the running job (A1111 /interrupt); the queue goes on with the next one."""
        with self._cond:
            job = self.running
        if job is None:
            return False
        job.cancel("interrupt")
        return True

    def skip(self) -> bool:
        with self._cond:
            job = self.running
        if job is None:
            return False
        job.skip_image = True
        return True

    @property
    def length(self) -> int:
        return len(self._pending)

    # ------------------------------------------------------------------ worker
    def _drop(self, job: Job, reason: str) -> None:
        if not job.future.done():
            job.future.set_exception(errors.Cancelled(f"job {job.id} cancelled before it ran ({reason})"))
        self._finished(job, "cancelled")

    def _finished(self, job: Job, outcome: str) -> None:
        if self.on_finish is not None:
            try:
                self.on_finish(job, outcome)
            except Exception:   # metrics must never stop the worker
                pass

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._stopping:
                    self._cond.wait()
                if self._stopping and not self._pending:
                    return
                job = self._pending.popleft()
                self.running = job
            job.started = time.time()
            outcome = "ok"
            try:
                result = job.work(job)
            except errors.Cancelled as exc:
                outcome = "cancelled"
                job.future.set_exception(exc)
            except BaseException as exc:  # noqa: BLE001 - the worker outlives every job
                outcome = "error"
                job.future.set_exception(exc)
                if not isinstance(exc, Exception):
                    raise
            else:
                if job.cancelled:
                    outcome = "interrupted" if job.cancel_reason == "interrupt" else "cancelled"
                job.future.set_result(result)
            finally:
                with self._cond:
                    self.running = None
            self._finished(job, outcome)
