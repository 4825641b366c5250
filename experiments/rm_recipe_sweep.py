"""Sweep RM finetuning recipes on a finished run's backbones and policy pairs; report learnability.

    python experiments/rm_recipe_sweep.py RUN_DIR NAME key=value [key=value ...]

Trains one RM into RUN_DIR/sweep/NAME with the run's `reward` config overridden by the key=values
(`backbone=pretrain/seed1`, `finetune_seed=0`, `n_pairs=5000`, `pretrain_steps=150 pretrain_seed=0` to
pretrain a fresh backbone with the run's pretrain config but other steps, `pretrain_backbone={hidden_size:
256, num_layers: 4, num_heads: 8, intermediate_size: 1024}` for another architecture (checkpointed every 100
steps: a killed probe resumes), `threads=2`, `precision=fp32|bf16`,
`attention=auto|sdpa|eager`, `pairs_file=sweep-pairs/kwise6.parquet` (pairs written by
experiments/policy_pairs.py; several comma-separated files are concatenated in order; accuracy stays on
the run's policy_prefs_eval.parquet unless `eval_file=`), and any RewardConfig field, e.g. `lr=3e-4
epochs=2`), on the run's policy pairs, then scores the run's pool with it and prints DESIGN.md's
learnability numbers for it: in-distribution accuracy and gold-order agreement on policy_prefs_eval,
Spearman with gold on the pool (mean over prompts, se), and the exact best-of-n gold gain (centred per
prompt, in gold standard deviations). One thread per call unless `threads=`, so two calls can share 2 cores.
Meant for choosing a recipe by learnability alone, never by the seed-effect results.

Measured 2026-12-02 (fifth session) on runs/fp32 (the committed default rerun in fp32 on the 2-core AMD EPYC
AVX512-BF16 VM; the policy, pairs and pool of runs/ep2), `readout=` (new: where the reward is read), paired
with the run's own RM of the same backbone and finetune seed (readout last); two probes at once, 1 thread each:

  backbone   recipe                 acc    gold_acc  pool rho        bo16   bo64   train s
  seed0 ft0  last (run)             0.619  0.782     0.506 ± 0.014   +0.49  +0.42
  seed0 ft0  readout=sum            0.578  0.701     0.311 ± 0.022   +0.14  -0.01  164
  seed0 ft0  readout=sum lr=2.5e-4  0.558  0.641     0.238 ± 0.018   -0.06  -0.48  175
  seed0 ft0  readout=mean           0.601  0.734     0.487 ± 0.016   +0.55  +0.43  170
  seed3 ft0  last (run)             0.592  0.730     0.326 ± 0.018   +0.12  -0.12
  seed3 ft0  readout=mean           0.626  0.763     0.436 ± 0.018   +0.35  +0.05  168

The whole grid with readout=mean (docs/history/results.md, fifth session) came out no better on average (pool rho
+0.002 ± 0.022 paired over the 9 RMs, accuracy -0.002 ± 0.007) and its evaluator worse, so the default keeps
readout last.

Measured 2026-12-02 (third session) on runs/ep2 (the committed default: 2 epochs; the same pairs and pool as
runs/sft05 below), paired by finetune seed with the run's own RMs: backbones pretrained twice as long
(2,400 steps, 9.8 M tokens, held-out perplexity 1.666-1.679 vs 1.710-1.719; runs/testbed-pretrains-v2, not
shipped) to meet issue 13's token ratio (6.7x instead of 3.4x). fp32, 1 thread per RM, on the 2-core AMD EPYC
AVX2 VM beside that pretraining (so the seconds are upper bounds; not shown).

  backbone         recipe            acc    gold_acc  pool rho        bo16   bo64   run's RM (1,200 steps): acc / rho
  seed0 2400 ft0   2 epochs          0.592  0.730     0.427 ± 0.016   +0.32  +0.14  0.652 / 0.561
  seed0 2400 ft1   2 epochs          0.624  0.782     0.468 ± 0.016   +0.40  +0.29  0.615 / 0.510
  seed0 2400 ft0   lr 5e-4           0.620  0.750     0.436 ± 0.016   +0.36  +0.26
  seed0 2400 ft0   3 epochs          0.606  0.747     0.445 ± 0.018   +0.40  +0.22

So the longer-pretrained backbone gave *less* learnable RMs (rho -0.134 and -0.042 paired, mean -0.09; neither a
lower lr nor a third epoch recovered it): the token-ratio goal and the learnability goals conflict at this scale,
and by the rule (learnability alone) the shipped 1,200-step backbones stay. One backbone seed only.

Measured 2026-12-02 (second session) on runs/sft05 (the committed default of that day: the shipped backbones,
the SFT policy from seed5 for half an epoch, its 31.2k K-wise-6 training pairs and 1,651 held-out ones, label
ceiling 0.718, its pool of 200 x 64); fp32, 1 thread per RM, two RMs at once on a 2-core AMD EPYC AVX2 VM.
"1 epoch" rows are the run's own grid RMs (the recipe of that day: b64, lr 1e-3, evaluator lr 5e-4).
bo4 / bo16 / bo64: exact best-of-n gold gain in gold sds.

  backbone    recipe                  acc    gold_acc  pool rho        bo4    bo16   bo64   train s
  seed0 ft0   1 epoch (run)           0.598  0.718     0.392                                 377*
  seed0 ft0   2 epochs                0.652  0.823     0.561 ± 0.015   +0.50  +0.49  +0.32   250
  seed0 ft0   3 epochs                0.638  0.781     0.498 ± 0.016   +0.41  +0.33  +0.04   303
  seed0 ft0   lr 1.5e-3               0.604  0.736     0.355 ± 0.015   +0.31  +0.32  +0.07   160
  seed0 ft0   b128, lr 1.4e-3         0.600  0.705     0.348 ± 0.018   +0.25  +0.08  -0.14   123
  seed0 ft1   1 epoch (run)           0.611  0.747     0.425
  seed0 ft1   2 epochs                0.615  0.738     0.510 ± 0.015   +0.48  +0.56  +0.41   203
  seed0 ft1   lr 1.5e-3               0.566  0.694     0.261 ± 0.023   +0.15  -0.06  -0.21   162
  seed3 ft0   1 epoch (run)           0.581  0.672     0.285
  seed3 ft0   2 epochs                0.609  0.706     0.372 ± 0.018   +0.30  +0.17  -0.23   206
  seed4 ft0   1 epoch (run)           0.571  0.684     0.340
  seed4 ft0   2 epochs                0.617  0.771     0.449 ± 0.016   +0.36  +0.34  +0.08   201
  evaluator   1 epoch, lr 5e-4 (run)  0.632  0.793     0.496
  evaluator   2 epochs, lr 5e-4       0.640  0.796     0.563 ± 0.016   +0.55  +0.70  +0.58   516
  evaluator   2 epochs, lr 1e-3       0.650  0.828     0.562 ± 0.015   +0.53  +0.67  +0.57   526
  evaluator   3 epochs, lr 5e-4       0.657  0.845     0.611 ± 0.014   +0.60  +0.80  +0.77   775
  evaluator   4 epochs, lr 5e-4       0.643  0.799     0.556 ± 0.016   +0.55  +0.72  +0.76   1007
  (* shared with a CI run.) An evaluator on the policy pairs plus the testbed's 16k perturbation pairs
  (pairs_file=policy_prefs.parquet,data/prefs_train.parquet, 2 epochs) was stopped after 35 CPU minutes
  unfinished: those pairs are one per post, so no prompt forward is shared, and it cost more than the run.

So the RMs were optimisation-limited: a second pass lifts every probed grid RM (rho +0.08 to +0.17, mean
+0.11; accuracy +0.03) and a third adds nothing for a grid RM (one probe), while the bigger evaluator gains
again from a third (+0.05 rho, train loss 0.601 against the Bayes floor 0.58) and not from a fourth (single
probes: their finetune-seed noise is ~0.04 of rho). A higher lr or a bigger batch
is worse. The default takes 2 epochs for the grid and 3 for the evaluator. Seed3's RM stays at rho 0.37,
below seed0's five finetune seeds (0.42-0.56 in the run): a hint that learnability differs by pretrain seed,
one RM per pretrain, so no interval over seeds.

Measured 2026-12-02 on runs/tiny (the 2026-12-01 default: backbones of 300 steps unless marked pt1200, its SFT
policy from seed0, its pool of 200 x 64; fp32, 1 thread per RM on a 2-core AMD EPYC AVX2 VM shared with the
testbed-pretrains run, so the seconds are upper bounds and comparable only within this table). acc and gold_acc
on the run's policy_prefs_eval.parquet (disjoint pairs; label ceiling 0.76), rho on the pool:

  recipe                                          pairs    acc    gold_acc  pool rho        bo64   RM train s
  disjoint pairs (3 per post), b32 (the old default) 9.1k  0.547  0.576     0.225 ± 0.011   +0.89  153
  K-wise 6 (experiments/policy_pairs.py), b64     45.6k    0.619  0.702     0.474 ± 0.010   +1.09  200
  K-wise 6, b32                                   45.6k    0.611  0.652     0.275 ± 0.012   +0.57  299
  K-wise 6, b64, lr 2e-3                          45.6k    0.536  0.578     0.128 ± 0.010   +0.81  218
  K-wise 10, b96                                  136.9k   0.631  0.706     0.493 ± 0.010   +1.28  350
  evaluator backbone (192 x 3, 400 steps), K-wise 6, b64, lr 5e-4
                                                  45.6k    0.607  0.689     0.450 ± 0.011   +1.27  529
  with the testbed-pretrains backbones (pt1200; neither shares the pool's policy backbone, as the grid's
  seed0 above does, which flatters it):
  grid backbone seed0 (1,200 steps), K-wise 6, b64   45.6k  0.571  0.687  0.409 ± 0.011         222
  the same on the first 30k pairs (2,500 posts)      30.0k  0.600  0.629  0.383 ± 0.012
  evaluator backbone (1,500 steps), K-wise 6, b64, lr 5e-4
                                                     45.6k  0.613  0.712  0.528 ± 0.010

So K-wise comparisons are the lever: 5x the pairs from 1.25x the completions lift rho from 0.23 to 0.47 at
1.3x the training time; K = 10 (3x the pairs again) adds 0.02 at 1.75x the time; batch 64 beats 32 (at lr 1e-3
batch 32 is noisy) and lr 2e-3 diverges. A third fewer pairs costs 0.026 of rho, so the grid keeps them all.
The evaluator's bigger, longer-pretrained backbone is what makes it stronger (+0.12 rho over a grid backbone on
the same pairs); with the 400-step evaluator backbone it was not (0.45). The default takes K-wise 6, batch 64,
lr 1e-3 for the grid and lr 5e-4 for the evaluator.

Measured 2026-11-27 on runs/b4 (the tiny default; 9,069 policy pairs, 481 held-out; 1 thread per RM):

  recipe (changes to tiny.yaml)                 acc    gold_acc  pool rho       RM train s
  default (lr 1e-3, 1 epoch), pretrain seed0    0.597  0.630     0.332 ± 0.012   72
  epochs=3                                      0.593  0.642     0.326 ± 0.010  209
  lr=3e-4                                       0.565  0.586     0.233 ± 0.012   68
  lr=3e-3                                       0.524  0.565     0.160 ± 0.013   66
  pretrain seed0, finetune seeds 0-4, 300 steps (the grid's own RMs):
                                         mean   0.570  0.587     0.287 (0.241-0.332)
  same, backbone pretrained 150 steps (held-out perplexity 2.53 vs 1.88; 52 s instead of ~118 s):
                                         mean   0.556  0.580     0.249 (0.219-0.291)
  paired by finetune seed, 150 - 300 steps: pool rho -0.038 ± 0.020 (se over the 5 seeds)

So more epochs buy nothing (train loss stays ~0.66 against a Bayes floor of 0.53 for these labels), lr 1e-3
is the best of the three, and halving pretraining costs about 13% of the RMs' rank correlation with gold.
(The pretrain-seed-1 backbone at 150 steps: rho 0.228 vs 0.252 at 300.) Earlier, with
experiments/policy_pairs_probe.py, more *pairs* helped most: 3.2k -> 9.6k pairs lifted rho 0.15 -> 0.28.
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from scipy.stats import spearmanr

from perm.bon import expected_best_of_n, standardize
from perm.config import RewardConfig, load_config, section_from_dict, to_dict
from perm.stages.pretrain import job_pretrain
from perm.stages.score import job_score
from perm.stages.train_rm import job_reward_model


def main(run: Path, name: str, overrides: list[str]) -> None:
    typed = load_config(run / "config.yaml")  # a run written before the config's sections moved too
    cfg = to_dict(typed)
    reward = dict(cfg["reward"])
    extra = {"backbone": "pretrain/seed0", "finetune_seed": 0, "n_pairs": reward.get("max_train_pairs"),
             "pretrain_steps": None, "pretrain_seed": 0, "precision": cfg.get("precision", "fp32"),
             "attention": cfg.get("attention", "auto"), "pairs_file": "policy_prefs.parquet",
             "eval_file": "policy_prefs_eval.parquet", "pretrain_backbone": None, "threads": 1}
    for kv in overrides:
        k, v = kv.split("=", 1)
        v = yaml.safe_load(v)
        if isinstance(v, str):  # YAML 1.1 reads 3e-4 (no dot) as a string
            try:
                v = float(v)
            except ValueError:
                pass
        (extra if k in extra else reward)[k] = v
    out_rel = f"sweep/{name}"
    if extra["pretrain_steps"] is not None:  # a fresh backbone: the run's pretrain config with other steps
        extra["backbone"] = f"{out_rel}-pretrain"
        arch = replace(typed.pretrain.backbone, **(extra["pretrain_backbone"] or {}))
        if not (run / extra["backbone"]).exists():
            pinfo = job_pretrain(str(run), extra["backbone"], init_seed=extra["pretrain_seed"],
                                 data_seed=extra["pretrain_seed"], backbone=arch, recipe=typed.pretrain,
                                 steps=int(extra["pretrain_steps"]),
                                 device="cpu", threads=extra["threads"], show_progress=False, checkpoint_every=100)
            print(json.dumps({"pretrain": pinfo}))
    info = job_reward_model(str(run), out_rel, backbone=str(run / extra["backbone"]), pretrain_id="sweep",
                            finetune_seed=extra["finetune_seed"],
                            reward=section_from_dict(RewardConfig, reward, "reward"), n_pairs=extra["n_pairs"],
                            pair_files=tuple(str(extra["pairs_file"]).split(",")), eval_files=(extra["eval_file"],),
                            device="cpu", threads=extra["threads"], precision=extra["precision"],
                            attention=extra["attention"],
                            show_progress=False)
    job_score(str(run), f"{out_rel}.scores.parquet", model_dir=str(run / out_rel), model_id=name,
              max_length=reward["max_length"], batch_size=64, device="cpu", threads=extra["threads"],
              show_progress=False)
    s = pd.read_parquet(run / "samples.parquet")
    s = s[~s.is_reference].merge(pd.read_parquet(run / f"{out_rel}.scores.parquet"), on=["prompt_id", "sample_id"])
    s = s.sort_values(["prompt_id", "sample_id"])
    rho = np.array([spearmanr(g.reward, g.gold_reward).statistic for _, g in s.groupby("prompt_id")
                    if g.gold_reward.nunique() > 1 and g.reward.nunique() > 1])
    k = s.prompt_id.nunique()
    proxy, gold = s.reward.to_numpy().reshape(k, -1), standardize(s.gold_reward.to_numpy().reshape(k, -1))
    bon = {n: round(float(expected_best_of_n(proxy, gold, n).mean()), 3) for n in (2, 4, 16, 64)}
    row = {"name": name, "overrides": overrides, "acc": round(info["accuracy"], 3),
           "gold_acc": round(info["gold_accuracy"], 3), "train_loss": round(info["final_train_loss"], 4),
           "spearman": round(float(rho.mean()), 3), "spearman_se": round(float(rho.std(ddof=1) / np.sqrt(len(rho))), 3),
           "bon_gold": bon, "wall_s": round(info["wall_s"], 1), "steps": info["steps"],
           "curve": [(e["step"], round(e["accuracy"], 3), round(e.get("gold_accuracy", float("nan")), 3))
                     for e in info["eval_curve"]]}
    print(json.dumps(row))
    with open(run / "sweep" / "results.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2], sys.argv[3:])
