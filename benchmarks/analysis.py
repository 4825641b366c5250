"""Time the full analysis on a paper-sized reward tensor (run by hand: ``python benchmarks/analysis.py``).

Target: 500 prompts × 64 candidates × 10 reward models (+ evaluator and gold, 4 reference samples)
in under 10 s on one CPU core. Prints the time of each stage and of ``run_analysis`` as a whole.
"""

from __future__ import annotations

import argparse
import time

from perm import analysis


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--prompts", type=int, default=500)
    parser.add_argument("--pool", type=int, default=64)
    parser.add_argument("--pretrains", type=int, default=5)
    parser.add_argument("--finetunes", type=int, default=2)
    parser.add_argument("--reference", type=int, default=4)
    parser.add_argument("--draws", type=int, default=20)
    args = parser.parse_args()

    t0 = time.perf_counter()
    tensor = analysis.synthetic_reward_tensor(
        n_pretrains=args.pretrains,
        n_finetune=args.finetunes,
        n_prompts=args.prompts,
        pool_size=args.pool,
        n_reference=args.reference,
    )
    rewards, models = analysis.reward_tensor_to_frames(tensor)
    t1 = time.perf_counter()
    tensor = analysis.reward_tensor_from_frames(rewards, models)
    t2 = time.perf_counter()
    print(f"tensor {tensor.pool.shape} (+ref {None if tensor.reference is None else tensor.reference.shape})")
    print(f"  build synthetic + to long frames ({len(rewards)} rows): {t1 - t0:.2f} s")
    print(f"  validate + densify:                        {t2 - t1:.2f} s")
    stages = {
        "figure1": lambda: analysis.figure1(tensor),
        "figure2": lambda: analysis.figure2(tensor),
        "figure3": lambda: analysis.figure3(tensor, draws=args.draws),
        "figure4": lambda: analysis.figure4(tensor),
    }
    for name, fn in stages.items():
        t = time.perf_counter()
        fn()
        print(f"  {name}: {time.perf_counter() - t:.2f} s")
    t = time.perf_counter()
    analysis.run_analysis(tensor, anova_draws=args.draws)
    total = time.perf_counter() - t
    print(f"run_analysis total: {total:.2f} s ({'within' if total < 10 else 'OVER'} the 10 s target)")


if __name__ == "__main__":
    main()
