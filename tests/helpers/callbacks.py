"""Callbacks for tests that run the command line in a subprocess."""

import time

from lightning.pytorch import Callback


class SlowEpochs(Callback):
    """Sleep at the start of every training epoch (after the previous epoch's checkpoint), drawing no random numbers.

    Gives a crash test a window in which a checkpoint exists and the run is still going.

    Args:
        seconds: How long to sleep.
    """

    def __init__(self, seconds: float = 1.0) -> None:
        self.seconds = seconds

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        """Sleep."""
        time.sleep(self.seconds)
