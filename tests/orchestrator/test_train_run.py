"""Driver-side glue of a Train run that needs no cluster: the SIGINT handler a main-thread fit() leaves behind."""

from __future__ import annotations

import signal

from orchestrator.train_run import _restore_sigint


def test_the_sigint_handler_a_fit_installs_is_put_back():
    """Ray Train's handler closes over the run's controller; left installed, it keeps that controller (and its
    data coordinators, which hold CPUs) alive until the next main-thread fit. This hung the test suite."""

    def ours(signum, frame):
        pass

    def rays(signum, frame):  # what TorchTrainer.fit() installs in the main thread
        pass

    previous = signal.signal(signal.SIGINT, ours)
    try:
        with _restore_sigint():
            signal.signal(signal.SIGINT, rays)
        assert signal.getsignal(signal.SIGINT) is ours
    finally:
        signal.signal(signal.SIGINT, previous)
