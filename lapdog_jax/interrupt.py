"""SIGINT (Ctrl-C) and SIGTERM in a training run: honoured at any point, exit 128 + the signal's
number (130 for Ctrl-C, 143 for SIGTERM).

- In set-up (from the command's start until the run has joined its cluster and `arm` is
  called) a signal is recorded, not raised: a process of a multi-process run must first be
  able to tell the others it stops (see distributed.py), and a C++ call such as joining the
  cluster cannot be interrupted anyway. `arm` then stops the run (`Interrupted`).
- Armed, before the loop: a signal stops the run at once (`Interrupted`: nothing new to save).
- In the loop: the first one asks it to stop at the next step boundary (agreed by every
  process), save, and exit.
- After the loop (the final evaluation and summary): a signal stops the run at once; the last
  checkpoint is saved already.

The handler runs between any two bytecodes of the main thread, so its raise can land where
Python drops exceptions (a garbage-collector callback, a `__del__`: "Exception ignored in").
`install` also puts in a `sys.unraisablehook` that drops such an Interrupted silently, and
`check` raises it again (as it does for one that code caught and swallowed): the run calls it
at the end of its set-up and before it returns.

A second signal exits at once, without saving, at any point (the checkpoints already written
are complete; a save cut short leaves only a temporary folder that the next run removes). It is
seen by a thread reading the signal wakeup fd, so it ends the process even while the main
thread is inside a long compiled step, a save, or a C++ call, where Python signal handlers wait.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

from absl import logging

SIGNALS = (signal.SIGINT, signal.SIGTERM)
SETUP, ARMED, LOOP, AFTER = "setup", "armed", "loop", "after"  # StopRequest.phase


class Interrupted(KeyboardInterrupt):
    """A signal that stopped the run; `exit_code` is 128 + its number. (A KeyboardInterrupt:
    code that handles any Exception, such as a restore that skips an unreadable checkpoint,
    lets it through.)"""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum


def name(signum: int) -> str:
    """'SIGINT (Ctrl-C)' / 'SIGTERM'."""
    return "SIGINT (Ctrl-C)" if signum == signal.SIGINT else signal.Signals(signum).name


class StopRequest:
    """The SIGINT/SIGTERM handlers of one run, installed by `install()` (main thread only)
    and removed by `uninstall()`; `signum` is the first signal's number (None: none yet)."""

    def __init__(self, where: str = ""):
        self.where = where  # named in the lines it prints (the checkpoints' folder)
        self.signum: int | None = None
        self.phase = SETUP
        self._previous: dict = {}
        self._wakeup = None
        self._pipe = None
        self._seen = 0
        self._hook = None  # the sys.unraisablehook found by `install`
        self._raised = False  # the handler raised (armed or after the loop): see `check`

    @property
    def requested(self) -> bool:
        """Whether a signal asked the run to stop."""
        return self.signum is not None

    @property
    def installed(self) -> bool:
        """Whether the handlers are installed (and not yet put back)."""
        return self._pipe is not None

    @property
    def in_loop(self) -> bool:
        """Whether a signal now stops the loop at the next step boundary."""
        return self.phase == LOOP

    @in_loop.setter
    def in_loop(self, value: bool) -> None:
        self.phase = LOOP if value else ARMED

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
        self._hook, sys.unraisablehook = sys.unraisablehook, self._unraisable
        threading.Thread(target=self._watch, args=(read_fd,), name="lapdog-signals",
                         daemon=True).start()
        return True

    def uninstall(self) -> None:
        """Puts back the handlers and wakeup fd found by `install`."""
        if self._pipe is None:
            return
        signal.set_wakeup_fd(self._wakeup)
        if sys.unraisablehook == self._unraisable:
            sys.unraisablehook = self._hook
        for signum, previous in self._previous.items():
            signal.signal(signum, signal.SIG_DFL if previous is None else previous)
        os.close(self._pipe[1])  # ends the watcher (it reads EOF), which closes its end
        self._pipe = None

    def arm(self) -> None:
        """Ends set-up's deferral: raises Interrupted if a signal came meanwhile; from now on
        a signal before the loop stops the run at once."""
        self.phase = ARMED
        if self.signum is not None:
            raise self.interrupted(self.signum)

    def check(self) -> None:
        """Raises the Interrupted of a signal that came since `arm` yet did not stop the run
        (its raise landed where Python drops exceptions, such as a garbage-collector callback
        or a `__del__`, or in code that swallowed it); nothing otherwise."""
        if self._raised:
            raise self.interrupted(self.signum)

    def after_loop(self) -> None:
        """From now on (the final evaluation, the summary) a signal stops the run at once."""
        self.phase = AFTER

    def interrupted(self, signum: int) -> Interrupted:
        """The Interrupted a signal raises outside the loop, in the words of the phase."""
        if self.phase == AFTER:
            return Interrupted(f"{name(signum)} after training, during the final evaluation: "
                               f"stopped; the last checkpoint is saved in {self.where}", signum)
        return Interrupted(f"{name(signum)} before training started: stopped, nothing new to "
                           f"save (the checkpoints in {self.where} are as they were)", signum)

    def _handle(self, signum, frame) -> None:
        """Python handler (main thread, between bytecodes): record the first signal; armed or
        after the loop, stop at once."""
        del frame
        if self.signum is None:
            self.signum = signum
        if self.phase in (ARMED, AFTER):
            self._raised = True
            raise self.interrupted(signum)

    def _unraisable(self, unraisable) -> None:
        """sys.unraisablehook: drops an Interrupted without a traceback (`check` raises it
        again), hands anything else to the hook found."""
        if not isinstance(unraisable.exc_value, Interrupted):
            self._hook(unraisable)

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
            if self.phase == LOOP:
                logging.warning("%s: stopping after this step and saving a checkpoint "
                                "(a second one exits at once, without saving)", name(signum))
            elif self.phase == SETUP:
                logging.warning("%s: stopping once start-up can stop safely (a second one "
                                "exits at once)", name(signum))
            return
        message = (f"a second {name(signum)}, exiting at once without saving; the complete "
                   f"checkpoints in {self.where} are kept")
        cluster = sys.modules.get("lapdog_jax.distributed")
        if cluster is not None:  # tells the other processes of a multi-process run first
            cluster.exit_now(message, 128 + signum, "stopped", newline=True)
        # (On a line of its own: the progress bar's line may be unfinished.)
        os.write(2, f"\nstopped: {message}\n".encode())
        os._exit(128 + signum)
