"""Console progress: one line per stage with its timing, a bar with ETA inside long stages; quiet / JSON modes."""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from tqdm.auto import tqdm


class Progress:
    """mode: "normal" (lines + bars on stderr), "quiet" (errors only), "json" (one JSON object per event)."""

    def __init__(self, mode: str = "normal", stream=None):
        if mode not in ("normal", "quiet", "json"):
            raise ValueError(f"progress mode must be normal|quiet|json, got {mode!r}")
        self.mode = mode
        self.stream = stream or sys.stderr

    def event(self, stage: str, status: str, **fields: Any) -> None:
        if self.mode == "quiet":
            return
        if self.mode == "json":
            print(json.dumps({"time": time.strftime("%H:%M:%S"), "stage": stage, "status": status, **fields}),
                  file=self.stream, flush=True)
            return
        extra = "  ".join(f"{k}={_fmt(v)}" for k, v in fields.items())
        print(f"[perm] {stage:<22} {status:<8} {extra}".rstrip(), file=self.stream, flush=True)

    def note(self, text: str) -> None:
        """One line of context (``[perm] device cpu (AVX2): precision fp32``); not in quiet mode."""
        if self.mode == "json":
            print(json.dumps({"time": time.strftime("%H:%M:%S"), "note": text}), file=self.stream, flush=True)
        elif self.mode == "normal":
            print(f"[perm] {text}", file=self.stream, flush=True)

    def warn(self, text: str) -> None:
        """A warning line, printed in every mode (quiet included)."""
        if self.mode == "json":
            print(json.dumps({"time": time.strftime("%H:%M:%S"), "warning": text}), file=self.stream, flush=True)
        else:
            print(f"[perm] warning: {text}", file=self.stream, flush=True)

    def bar(self, desc: str, total: int):
        """A callable `update(done, total, loss=None)` drawing a tqdm bar with its ETA: only in normal mode
        and on a terminal; elsewhere (a log file, CI, a pipe) the start / done lines are the whole record."""
        if self.mode != "normal" or not _isatty(self.stream):
            return _NullBar()
        # a terminal that reports no size (a bare pty) gets a fixed one: tqdm draws nothing on 0 rows
        size = {} if _has_size(self.stream) else {"ncols": 100, "nrows": 40}
        return _Bar(tqdm(total=total, desc=f"  {desc}", leave=False, file=self.stream, dynamic_ncols=not size,
                         **size))


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def _has_size(stream) -> bool:
    import os

    try:
        size = os.get_terminal_size(stream.fileno())
    except (AttributeError, OSError, ValueError):
        return False
    return size.columns > 0 and size.lines > 0


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


class _NullBar:
    def __call__(self, done: int, total: int, loss: float | None = None) -> None:
        pass

    def close(self) -> None:
        pass


class _Bar:
    def __init__(self, bar):
        self._bar = bar

    def __call__(self, done: int, total: int, loss: float | None = None) -> None:
        self._bar.total = total
        self._bar.n = done
        if loss is not None:
            self._bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
        self._bar.refresh()

    def close(self) -> None:
        self._bar.close()
