"""Graceful stop on SIGTERM / SIGINT (SLURM preemption, Ctrl-C): finish the step, checkpoint, exit."""
from __future__ import annotations

import signal


class StopRequest:
    """Records SIGTERM/SIGINT instead of dying; the loop polls :attr:`requested` after each step.

    A second signal of the same kind restores the default behaviour (so a second Ctrl-C kills).
    Use as a context manager; the previous handlers come back on exit.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.requested: str | None = None
        self._old = {}

    def _handle(self, signum, frame):
        self.requested = signal.Signals(signum).name
        signal.signal(signum, self._old.get(signum, signal.SIG_DFL))

    def __enter__(self):
        for s in self.SIGNALS:
            try:
                self._old[s] = signal.signal(s, self._handle)
            except ValueError:  # not the main thread: signals stay as they are
                pass
        return self

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)
        return False
