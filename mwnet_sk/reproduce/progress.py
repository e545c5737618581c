"""Per-epoch progress of long runs, readable on a terminal and in a log file."""

from __future__ import annotations

import sys
import time

from skorch.callbacks import Callback

__all__ = ["EpochProgress"]

_SHOWN = ("train_loss", "meta_loss", "weight_mean")
_LINE = "{desc}: epoch {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}]{postfix}"


class EpochProgress(Callback):
    """A skorch callback that reports every epoch with tqdm.

    On a terminal it draws one bar that advances per epoch, with the last losses as postfix.
    When the stream is not a terminal (a log file, a CI job, a pipe) a bar's carriage
    returns would pile up on one line, so it prints one complete line per epoch instead
    (``MW-Net: epoch 3/60 [00:12<03:53,  4.10s/epoch], train_loss=0.512, ...``).

    Parameters
    ----------
    desc : str
        Label of the run (e.g. ``"MW-Net"``).
    file : file object or None, default=None
        Where to write; None means ``sys.stderr`` at the time training starts.
    disable : bool, default=False
        Report nothing.
    """

    def __init__(self, desc: str = "", file=None, disable: bool = False):
        self.desc = desc
        self.file = file
        self.disable = disable

    def on_train_begin(self, net, **kwargs):
        from tqdm.auto import tqdm

        stream = self.file if self.file is not None else sys.stderr
        self.stream_ = stream
        self.start_ = time.perf_counter()
        self.done_ = 0  # epochs of this call to fit
        self.total_ = int(net.max_epochs)
        self.interactive_ = bool(getattr(stream, "isatty", lambda: False)())
        self.bar_ = None
        if self.interactive_ and not self.disable:
            self.bar_ = tqdm(total=self.total_, desc=self.desc, unit="epoch", file=stream, leave=False,
                             dynamic_ncols=True)  # fmt: skip

    def on_epoch_end(self, net, **kwargs):
        if self.disable:
            return
        from tqdm import tqdm

        row = net.history[-1]
        postfix = ", ".join(f"{k}={row[k]:.3f}" for k in _SHOWN if k in row)
        self.done_ += 1
        if self.bar_ is not None:
            self.bar_.set_postfix_str(postfix, refresh=False)
            self.bar_.update(1)
            return
        line = tqdm.format_meter(self.done_, self.total_, time.perf_counter() - self.start_, prefix=self.desc,
                                 unit="epoch", postfix=postfix or None, bar_format=_LINE)  # fmt: skip
        print(line, file=self.stream_, flush=True)

    def on_train_end(self, net, **kwargs):
        bar = getattr(self, "bar_", None)
        if bar is not None:
            bar.close()
        self.bar_ = None
