"""Console progress: one line per stage event with its timing; quiet / JSON modes.

Inside a long job (a step loop: pretraining, RM training, SFT, sampling, scoring) a *bar* is an
``update(done, total, loss=None)`` callable: on a terminal a tqdm bar with its ETA, elsewhere (a log file,
CI, a pipe) a plain progress line at a steady interval of wall time (``every`` seconds, 30 by default)::

    [perm] rm/seed0-ft0           progress 240/1,782 steps (13%)  4.02 steps/s  257 pairs/s  elapsed 1:00\
  eta 6:24  loss 0.6412

and in JSON mode the same numbers as an event with status ``progress``. Jobs get their bar from
:func:`job_bar`, which reports wherever the process that runs them was told to (:func:`reporting`): the
run's own :class:`Progress` when jobs run in the driver, or the driver over a queue (:class:`Forward`)
when they run in a pool worker or a Ray task, where the driver prints each line under the job's name.
:class:`StageProgress` sums a stage's jobs into one bar whose rate and ETA are the stage's.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from typing import Any

from tqdm.auto import tqdm

DEFAULT_EVERY = 30.0  # seconds of wall time between two progress lines of one bar


class Progress:
    """mode: "normal" (lines + bars on stderr), "quiet" (errors only), "json" (one JSON object per event).

    every: seconds between two progress lines of a bar off a terminal (and of a job's lines sent from a
    worker); clock: the monotonic clock bars measure elapsed time and rates with."""

    def __init__(self, mode: str = "normal", stream=None, every: float = DEFAULT_EVERY,
                 clock: Callable[[], float] = time.monotonic):
        if mode not in ("normal", "quiet", "json"):
            raise ValueError(f"progress mode must be normal|quiet|json, got {mode!r}")
        if not every > 0:
            raise ValueError(f"the progress interval must be > 0 seconds, got {every!r}")
        self.mode = mode
        self.stream = stream or sys.stderr
        self.every = every
        self.clock = clock

    def _line(self, text: str) -> None:
        if self.mode == "normal" and _isatty(self.stream):
            tqdm.write(text, file=self.stream)  # above any bar on screen, which is redrawn below it
            self.stream.flush()
        else:
            print(text, file=self.stream, flush=True)

    def _json(self, obj: dict) -> None:
        print(json.dumps({"time": time.strftime("%H:%M:%S"), **obj}), file=self.stream, flush=True)

    def event(self, stage: str, status: str, **fields: Any) -> None:
        if self.mode == "quiet":
            return
        if self.mode == "json":
            self._json({"stage": stage, "status": status, **fields})
            return
        extra = "  ".join(f"{k}={_fmt(v)}" for k, v in fields.items())
        self._line(f"[perm] {stage:<22} {status:<8} {extra}".rstrip())

    def note(self, text: str) -> None:
        """One line of context (``[perm] device cpu (AVX2): precision fp32``); not in quiet mode."""
        if self.mode == "json":
            self._json({"note": text})
        elif self.mode == "normal":
            self._line(f"[perm] {text}")

    def plan(self, stage: str, text: str, status: str = "plan", **fields: Any) -> None:
        """A stage's planned work: the line `text` (normal mode), or an event of `status` with `fields` (JSON
        mode, perm.stages._plan.Work.fields); nothing in quiet mode."""
        if self.mode == "json":
            self.event(stage, status, **fields)
        elif self.mode == "normal":
            self._line(f"[perm] {text}")

    def warn(self, text: str) -> None:
        """A warning line, printed in every mode (quiet included)."""
        if self.mode == "json":
            self._json({"warning": text})
        else:
            self._line(f"[perm] warning: {text}")

    def tick(self, name: str, tick: Tick) -> None:
        """One progress report of `name` (a job, or a stage's jobs together): a line, or a JSON event."""
        if self.mode == "quiet":
            return
        if self.mode == "json":
            self._json({"stage": name, "status": "progress", **tick.fields()})
            return
        self._line(progress_line(name, tick))

    def bar(self, desc: str, total: int, unit: str = "steps", scale: tuple[float, str] | None = None):
        """A callable `update(done, total, loss=None)` with `close()`: a tqdm bar with its ETA in normal mode
        on a terminal; elsewhere a :class:`Ticker` printing a progress line (a JSON event in JSON mode) every
        `every` seconds; nothing in quiet mode. unit: what `done` counts; scale: (items per unit, their name),
        a second rate, e.g. ``(64, "pairs")`` for steps of 64 pairs."""
        if self.mode == "quiet":
            return _NullBar()
        if self.mode == "normal" and _isatty(self.stream):
            # a terminal that reports no size (a bare pty) gets a fixed one: tqdm draws nothing on 0 rows
            size = {} if _has_size(self.stream) else {"ncols": 100, "nrows": 40}
            return _Bar(tqdm(total=total, desc=f"  {desc}", leave=False, file=self.stream,
                             dynamic_ncols=not size, unit=f" {unit}", **size))
        return Ticker(lambda t: self.tick(desc, t), every=self.every, clock=self.clock, unit=unit,
                      scale=scale)


@dataclasses.dataclass(frozen=True)
class Tick:
    """One progress report: `done` of `total` `unit` after `elapsed_s` seconds, at `rate` units per second
    (None until two updates have been timed), with the step's loss where the loop reports one; scale: (items
    per unit, their name) for a second rate."""

    done: int
    total: int
    elapsed_s: float
    rate: float | None
    unit: str = "steps"
    scale: tuple[float, str] | None = None
    loss: float | None = None

    @property
    def eta_s(self) -> float | None:
        """Seconds left at the current rate: (total - done) / rate; None without a rate."""
        if self.rate is None or self.rate <= 0:
            return None
        return max(0, self.total - self.done) / self.rate

    def fields(self) -> dict:
        """The report as JSON fields."""
        out = {"done": self.done, "total": self.total, "unit": self.unit,
               "elapsed_s": round(self.elapsed_s, 1),
               "rate": None if self.rate is None else round(self.rate, 4),
               "eta_s": None if self.eta_s is None else round(self.eta_s, 1)}
        if self.scale is not None and self.rate is not None:
            out[f"{self.scale[1]}_per_s"] = round(self.rate * self.scale[0], 2)
        if self.loss is not None:
            out["loss"] = round(self.loss, 6)
        return out


def progress_line(name: str, tick: Tick) -> str:
    """The plain progress line of `name`: done/total (percent), rate(s), elapsed and ETA (``?`` until a
    rate is known), and the loss when there is one."""
    pct = f" ({100 * tick.done / tick.total:.0f}%)" if tick.total > 0 else ""
    parts = [f"{tick.done:,}/{tick.total:,} {tick.unit}{pct}"]
    if tick.rate is not None:
        parts.append(f"{_fmt_rate(tick.rate)} {tick.unit}/s")
        if tick.scale is not None:
            parts.append(f"{_fmt_rate(tick.rate * tick.scale[0])} {tick.scale[1]}/s")
    parts.append(f"elapsed {fmt_duration(tick.elapsed_s)}")
    parts.append(f"eta {fmt_duration(tick.eta_s) if tick.eta_s is not None else '?'}")
    if tick.loss is not None:
        parts.append(f"loss {tick.loss:.4f}")
    return f"[perm] {name:<22} {'progress':<8} {'  '.join(parts)}"


def fmt_duration(seconds: float) -> str:
    """``m:ss``, or ``h:mm:ss`` from an hour on (rounded to the second)."""
    s = int(round(max(0.0, seconds)))
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def _fmt_rate(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:.1f}" if x >= 10 else f"{x:.2f}"


class Ticker:
    """A bar off a terminal: hands a :class:`Tick` to `emit` at most once per `every` seconds of `clock`, the
    first `every` seconds after it was made. The rate is measured from its first update to its latest, so
    what ran before the first update (loading, a resumed run's earlier steps) does not count as progress;
    elapsed time counts from when the bar was made."""

    def __init__(self, emit: Callable[[Tick], None], every: float = DEFAULT_EVERY,
                 clock: Callable[[], float] = time.monotonic, unit: str = "steps",
                 scale: tuple[float, str] | None = None):
        self.emit, self.every, self.clock, self.unit, self.scale = emit, every, clock, unit, scale
        self.t0 = self.last = clock()
        self.first: tuple[float, int] | None = None  # (time, done) of the first update

    def __call__(self, done: int, total: int, loss: float | None = None) -> None:
        now = self.clock()
        if self.first is None:
            self.first = (now, done)
        if now - self.last >= self.every:
            self.last = now
            self.emit(self.tick(now, done, total, loss))

    def tick(self, now: float, done: int, total: int, loss: float | None = None) -> Tick:
        """The report at time `now` of `done` / `total` (see the class for how the rate is measured)."""
        rate = None
        if self.first is not None and now > self.first[0] and done > self.first[1]:
            rate = (done - self.first[1]) / (now - self.first[0])
        return Tick(done, total, now - self.t0, rate, self.unit, self.scale, loss)

    def close(self) -> None:
        pass


# ------------------------------------------------------------------------------------------ jobs' progress

_REPORTER = None  # where the jobs this process runs report progress (see `reporting`)


def job_bar(name: str, total: int, show: bool = True, unit: str = "steps",
            scale: tuple[float, str] | None = None):
    """The bar of a job named `name` (its manifest name): from the reporter this process's jobs report to
    (:func:`reporting`: the run's Progress, or the driver over a worker's queue), else a normal-mode
    :class:`Progress` on stderr (a job run on its own, e.g. under ``python -m perm.launch``). show=False: none
    (a quiet run, or a rank other than the main one)."""
    if not show:
        return _NullBar()
    return (_REPORTER or Progress()).bar(name, total, unit=unit, scale=scale)


@contextmanager
def reporting(reporter):
    """Jobs run inside this block report progress to `reporter`: anything with :meth:`Progress.bar`'s
    signature (a Progress, a :class:`Forward`, a :class:`Watched`)."""
    global _REPORTER
    previous, _REPORTER = _REPORTER, reporter
    try:
        yield reporter
    finally:
        _REPORTER = previous


class Forward:
    """A job reporter of a worker process: its bars are :class:`Ticker` s that hand each :class:`Tick` to
    `send` (the worker's event queue, a Ray queue), for the driver to print under the job's name."""

    def __init__(self, send: Callable[[Tick], None], every: float = DEFAULT_EVERY):
        self.send, self.every = send, every

    def bar(self, desc: str, total: int, unit: str = "steps",
            scale: tuple[float, str] | None = None) -> Ticker:
        return Ticker(self.send, every=self.every, unit=unit, scale=scale)


class Watched:
    """A job reporter in the driver: `log`'s bars, each of whose updates also goes to `watch(done, total)`
    (a :class:`StageProgress` following the job)."""

    def __init__(self, log: Progress, watch: Callable[[int, int], None]):
        self.log, self.watch = log, watch

    def bar(self, desc: str, total: int, unit: str = "steps", scale: tuple[float, str] | None = None):
        return _WatchedBar(self.log.bar(desc, total, unit=unit, scale=scale), self.watch)


class _WatchedBar:
    def __init__(self, bar, watch):
        self._bar, self._watch = bar, watch

    def __call__(self, done: int, total: int, loss: float | None = None) -> None:
        self._bar(done, total, loss)
        self._watch(done, total)

    def close(self) -> None:
        self._bar.close()


class StageProgress:
    """A stage's jobs as one bar (``<stage> (<n> jobs)``) of `log`: with every job's planned total known
    (`planned`, in one unit, e.g. RM steps), it counts the jobs' units, each job at its latest report (its
    reported total replacing its planned one) and a finished job at its total, so the rate and ETA are the
    whole stage's, whatever runs in parallel; with a total unknown, it counts finished jobs. One job's own bar
    is its stage's: for one job there is no second bar."""

    def __init__(self, log: Progress, stage: str, planned: Sequence[int | None], unit: str = "steps",
                 scale: tuple[float, str] | None = None):
        self.n = len(planned)
        self.by_units = self.n > 0 and all(p is not None for p in planned)
        self.done = [0] * self.n
        self.total = [int(p) if p is not None else 0 for p in planned]
        self.finished = 0
        label = f"{stage} ({self.n} jobs)"
        if self.n <= 1:
            self.bar = _NullBar()
        elif self.by_units:
            self.bar = log.bar(label, sum(self.total), unit=unit, scale=scale)
        else:
            self.bar = log.bar(label, self.n, unit="jobs")

    def update(self, i: int, done: int, total: int) -> None:
        """Job `i` reports `done` of `total`."""
        self.done[i], self.total[i] = done, total
        if self.by_units:
            self.bar(sum(self.done), sum(self.total))

    def job_done(self, i: int) -> None:
        """Job `i` finished."""
        self.finished += 1
        self.done[i] = self.total[i]
        if self.by_units:
            self.bar(sum(self.done), sum(self.total))
        else:
            self.bar(self.finished, self.n)

    def close(self) -> None:
        self.bar.close()


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
