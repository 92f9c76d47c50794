"""SIGINT (Ctrl-C) and SIGTERM in a training run.

Before the loop a signal stops the run at once (`Interrupted`: nothing new to save). In the
loop the first one asks it to stop at the next step boundary, save, and exit with 128 + the
signal's number (130 for Ctrl-C, 143 for SIGTERM); a second one exits at once, without saving
(the checkpoints already written are complete; a save cut short leaves only a temporary folder
that the next run removes). The second one is seen by a thread reading the signal wakeup fd,
so it ends the process even while the main thread is inside a long compiled step or a save,
where Python signal handlers wait.
"""

from __future__ import annotations

import os
import signal
import threading

from absl import logging

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(Exception):  # noqa: N818 - as KeyboardInterrupt
    """A signal before the loop started; `exit_code` is 128 + its number."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum


def name(signum: int) -> str:
    """'SIGINT (Ctrl-C)' / 'SIGTERM'."""
    return "SIGINT (Ctrl-C)" if signum == signal.SIGINT else signal.Signals(signum).name


class StopRequest:
    """The SIGINT/SIGTERM handlers of one run, installed by `install()` (main thread only)
    and removed by `uninstall()`; `signum` is the first signal's number (None: none yet)."""

    def __init__(self, where: str):
        self.where = where  # named in the lines it prints (the workdir)
        self.signum: int | None = None
        self.in_loop = False  # before: raise Interrupted; in the loop: stop at the boundary
        self._previous: dict = {}
        self._wakeup = None
        self._pipe = None
        self._seen = 0

    @property
    def requested(self) -> bool:
        """Whether a signal asked the loop to stop."""
        return self.signum is not None

    def install(self) -> bool:
        """Installs the handlers; False (nothing installed) off the main thread."""
        if threading.current_thread() is not threading.main_thread():
            return False
        read_fd, write_fd = os.pipe()
        os.set_blocking(write_fd, False)
        self._pipe = (read_fd, write_fd)
        for signum in SIGNALS:
            self._previous[signum] = signal.signal(signum, self._handle)
        self._wakeup = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
        threading.Thread(target=self._watch, args=(read_fd,), name="lapdog-signals",
                         daemon=True).start()
        return True

    def uninstall(self) -> None:
        """Puts back the handlers and wakeup fd found by `install`."""
        if self._pipe is None:
            return
        signal.set_wakeup_fd(self._wakeup)
        for signum, previous in self._previous.items():
            signal.signal(signum, signal.SIG_DFL if previous is None else previous)
        os.close(self._pipe[1])  # ends the watcher (it reads EOF), which closes its end
        self._pipe = None

    def _handle(self, signum, frame) -> None:
        """Python handler (main thread, between bytecodes): record the first signal; before
        the loop, stop at once."""
        del frame
        if self.signum is None:
            self.signum = signum
        if not self.in_loop:
            raise Interrupted(f"{name(signum)} before training started: stopped, nothing new "
                              f"to save (the checkpoints in {self.where} are as they were)",
                              signum)

    def _watch(self, read_fd: int) -> None:
        """Counts the run's signals as they arrive; the second one exits at once."""
        try:
            while True:
                data = os.read(read_fd, 64)
                if not data:
                    return
                for signum in data:
                    if signum in SIGNALS:
                        self._seen += 1
                        self._notice(signum)
        finally:
            os.close(read_fd)

    def _notice(self, signum: int) -> None:
        """The line a signal gets: what the run does about it."""
        if self._seen == 1:
            if self.in_loop:
                logging.warning("%s: stopping after this step and saving a checkpoint "
                                "(a second one exits at once, without saving)", name(signum))
            return
        if not self.in_loop:
            return  # the first one is already stopping the run
        # (On a line of its own: the progress bar's line may be unfinished.)
        os.write(2, (f"\nstopped: a second {name(signum)}, exiting at once without saving; the "
                     f"complete checkpoints in {self.where} are kept\n").encode())
        os._exit(128 + signum)
