"""Regenerate the "today's default" block of docs/results.md from finished runs.

    python experiments/update_results.py RUN [RUN ...] [--bench LOG ...]

Replaces what lies between ``<!-- default:begin -->`` and ``<!-- default:end -->`` in docs/results.md with,
for each run, its resolved headline settings and what `experiments/run_numbers.py` prints (learnability, seed
effects with their intervals, Table 1, best-of-n gold by ranker, stage wall times), and for each ``--bench``
log the output of `benchmarks/pipeline.py` (wall time and peak memory of a run measured alone, with the CPU
and its matmul peak). The rest of the file (method checks, measured once) is left as it is.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import sys
from pathlib import Path

from perm.config import load_config, to_dict

sys.path.insert(0, str(Path(__file__).parent))
import run_numbers  # noqa: E402

RESULTS = Path(__file__).resolve().parents[1] / "docs" / "results.md"
BEGIN, END = "<!-- default:begin -->", "<!-- default:end -->"


def block(runs: list[Path], benches: list[Path]) -> str:
    parts = [BEGIN, ""]
    for run in runs:
        cfg = to_dict(load_config(run / "config.yaml"))  # a run written before the config's sections moved too
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            run_numbers.main(run)
        parts += [f"### `{run.name}`: layout {cfg['reward']['layout']}, precision {cfg['precision']}, "
                  f"{cfg['testbed']['n_eval_prompts']} prompts × {cfg['sample']['pool_size']}", "",
                  "```", out.getvalue().rstrip(), "```", ""]
    for bench in benches:
        parts += [f"### `{bench.name}` (benchmarks/pipeline.py)", "", "```", bench.read_text().rstrip(), "```", ""]
    return "\n".join(parts + [END])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--bench", nargs="*", type=Path, default=[])
    args = ap.parse_args(argv)
    text = RESULTS.read_text(encoding="utf-8")
    new = block(args.runs, args.bench)
    if BEGIN in text:
        text = re.sub(re.escape(BEGIN) + r".*?" + re.escape(END), lambda _: new, text, flags=re.S)
    else:
        head, _, rest = text.partition("\n## ")
        text = f"{head.rstrip()}\n\n## Today's default\n\n{new}\n\n## {rest}" if rest else f"{text}\n{new}\n"
    RESULTS.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
