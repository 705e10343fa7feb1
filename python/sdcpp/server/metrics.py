"""Counters for /metrics, written as Prometheus' text exposition format (no client library needed)."""
from __future__ import annotations

import threading
from collections import Counter


class Metrics:
    def __init__(self):
        self._lock = threading.Lock()
        self.images = Counter()          # mode -> images made
        self.jobs = Counter()            # outcome -> jobs finished
        self.rejected = 0                # 429s
        self.step_seconds_sum = 0.0
        self.step_count = 0
        self.last_step_seconds = 0.0

    def image_done(self, mode: str) -> None:
        with self._lock:
            self.images[mode] += 1

    def job_done(self, _job, outcome: str) -> None:
        with self._lock:
            self.jobs[outcome] += 1

    def queue_full(self) -> None:
        with self._lock:
            self.rejected += 1

    def step_hook(self, job, _step: int, _total: int) -> None:
        """A JobQueue step hook: the time of each sampling step after an image's first."""
        if job.step_seconds is None:
            return
        with self._lock:
            self.step_seconds_sum += job.step_seconds
            self.step_count += 1
            self.last_step_seconds = job.step_seconds

    def render(self, queue_length: int, running: bool, model: str) -> str:
        with self._lock:
            lines = [
                "# HELP sdcpp_queue_length Jobs waiting behind the running one.",
                "# TYPE sdcpp_queue_length gauge",
                f"sdcpp_queue_length {queue_length}",
                "# HELP sdcpp_job_running 1 while a job runs.",
                "# TYPE sdcpp_job_running gauge",
                f"sdcpp_job_running {int(running)}",
                "# HELP sdcpp_images_total Images generated.",
                "# TYPE sdcpp_images_total counter",
            ]
            for mode in sorted(set(self.images) | {"txt2img", "img2img"}):
                lines.append(f'sdcpp_images_total{{mode="{mode}"}} {self.images[mode]}')
            lines += ["# HELP sdcpp_jobs_total Jobs finished, by outcome.", "# TYPE sdcpp_jobs_total counter"]
            for outcome in sorted(set(self.jobs) | {"ok", "error", "interrupted", "cancelled"}):
                lines.append(f'sdcpp_jobs_total{{outcome="{outcome}"}} {self.jobs[outcome]}')
            lines += [
                "# HELP sdcpp_rejected_total Requests refused because the queue was full (HTTP 429).",
                "# TYPE sdcpp_rejected_total counter",
                f"sdcpp_rejected_total {self.rejected}",
                "# HELP sdcpp_step_seconds Seconds per sampling step (an image's first step, which also "
                "encodes the prompt, is left out).",
                "# TYPE sdcpp_step_seconds summary",
                f"sdcpp_step_seconds_sum {self.step_seconds_sum:.6f}",
                f"sdcpp_step_seconds_count {self.step_count}",
                "# HELP sdcpp_last_step_seconds Seconds of the latest sampling step.",
                "# TYPE sdcpp_last_step_seconds gauge",
                f"sdcpp_last_step_seconds {self.last_step_seconds:.6f}",
                "# HELP sdcpp_model_info The loaded checkpoint.",
                "# TYPE sdcpp_model_info gauge",
                f'sdcpp_model_info{{model="{_escape(model)}"}} 1',
            ]
        return "\n".join(lines) + "\n"


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
