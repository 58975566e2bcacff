"""Stopping a training run cleanly on Ctrl-C (SIGINT) or SIGTERM, what preemptible machines send.

While :func:`~blendmask_edu.training.engine.train` runs with a run folder, :class:`StopRequest`
replaces the handlers of both signals by one that only records the signal. The loop looks at
the record after each finished iteration, writes ``last.pt`` exactly as a periodic checkpoint
(so ``resume=True`` continues as if nothing happened) and raises :class:`TrainingInterrupted`.
The handler neither raises nor prints (a print from a handler can collide with one the
program was in the middle of, and fail): a second Ctrl-C during that write changes nothing
(the write is atomic anyway, :mod:`~blendmask_edu.training.checkpoint`). To stop at once
without a checkpoint, send SIGKILL (``kill -9``) or SIGQUIT (Ctrl-\\).

Under ``torchrun`` each process records its own signals, and the record travels in the tensor
the loop already all-reduces every iteration: all processes stop after the same iteration.
Handlers can only be installed in the main thread of the main interpreter; elsewhere (a worker
thread, some notebook runners) :class:`StopRequest` installs nothing and a signal acts as
without it.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Optional

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped by a signal after ``iteration`` finished iterations, with the run saved
    at ``path`` (a Path, or None when no checkpoint is written). A KeyboardInterrupt, so code
    that catches Ctrl-C still catches it. ``signum`` is the signal; ``exit_code`` the shell's
    convention for it, 128 + signal number (130 for SIGINT, 143 for SIGTERM)."""

    def __init__(self, iteration: int, path: Optional[Path], signum: int = signal.SIGINT):
        self.iteration, self.path, self.signum = int(iteration), path, int(signum)
        self.signal_name = signal.Signals(self.signum).name
        self.exit_code = 128 + self.signum
        saved = f": wrote {path}" if path is not None else ""
        super().__init__(f"interrupted at iteration {iteration} by {self.signal_name}{saved}")


class StopRequest:
    """A context manager recording SIGINT and SIGTERM instead of acting on them.

    ``signum`` is the first signal received (None until one arrives); ``installed`` says
    whether the handlers could be installed (main thread only). On exit the previous
    handlers are put back. With ``enabled=False`` it does nothing.
    """

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.signum: Optional[int] = None
        self.installed = False
        self._previous = {}

    @property
    def requested(self) -> bool:
        """Whether a signal has arrived."""
        return self.signum is not None

    def _record(self, signum, frame) -> None:
        if self.signum is None:
            self.signum = signum

    def __enter__(self) -> "StopRequest":
        if not self.enabled or threading.current_thread() is not threading.main_thread():
            return self
        try:
            for signum in SIGNALS:
                self._previous[signum] = signal.signal(signum, self._record)
            self.installed = True
        except ValueError:  # not the main interpreter's main thread after all
            self._restore()
        return self

    def __exit__(self, *exc) -> None:
        self._restore()

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self._previous = {}
