"""A side thread that runs CPU work while the calling thread waits on the disk (issue 8).

A fresh signature spends most of its time in the state's flush (fdatasync), during which the signing thread holds
no GIL and the CPU is free. The work that does not have to precede the flush (verifying the signature just made,
signing the vote extension, verifying that) is handed to a ``SideWorker`` the moment the signature exists and
collected after the flush, so the node waits for max(flush, work) instead of their sum. PyNaCl's C calls release
the GIL as the flush does, so the two really run at once on two cores.

Nothing here decides what may leave the process: the caller sends a reply only after it has both the flush and
the job's result, and a job that raised re-raises in the caller.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["Pending", "SideWorker"]

T = TypeVar("T")


class Pending(Generic[T]):
    """The result of one submitted job; ``result()`` blocks until the job has run."""

    __slots__ = ("_done", "_error", "_value")

    def __init__(self) -> None:
        # A held lock is the cheapest one-shot signal CPython has (one futex), cheaper than an Event.
        self._done = threading.Lock()
        self._done.acquire()
        self._value: T | None = None
        self._error: BaseException | None = None

    def _finish(self, value: T | None, error: BaseException | None) -> None:
        self._value, self._error = value, error
        self._done.release()

    def result(self) -> T:
        """The job's return value, or its exception re-raised here."""
        self._done.acquire()
        self._done.release()  # later calls return at once
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]


class SideWorker:
    """One daemon thread running submitted jobs in order. ``close()`` lets it finish the queue and exit."""

    def __init__(self, name: str = "pykms-side") -> None:
        self._jobs: queue.SimpleQueue[tuple[Callable[[], object], Pending[object]] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._closed = False
        self._thread.start()

    def submit(self, job: Callable[[], T]) -> Pending[T]:
        if self._closed:
            raise RuntimeError("SideWorker is closed")
        pending: Pending[T] = Pending()
        self._jobs.put((job, pending))  # type: ignore[arg-type]
        return pending

    def close(self, timeout: float | None = 5.0) -> None:
        if not self._closed:
            self._closed = True
            self._jobs.put(None)
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            item = self._jobs.get()
            if item is None:
                return
            job, pending = item
            try:
                value = job()
            except BaseException as exc:  # handed to the caller, who re-raises it
                pending._finish(None, exc)
            else:
                pending._finish(value, None)
            del job, pending, item  # drop references before blocking again
