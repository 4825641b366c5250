#!/usr/bin/env bash
# Replicate grids of the embedded default for the calibration of its seed-aware intervals (issue 27):
# each replicate pretrains five new backbones with the shipped backbones' recipe (configs/testbed-pretrains.yaml,
# fp32) and trains the default's grid on them with new finetune seeds; the world (the testbed kit's SFT policy,
# pairs and evaluator) and the pool are the default's. Then `perm compare` sets the between-grid sd of every
# statistic beside each run's own se.
#     bash experiments/replicate_grids.sh 1 2 3     # replicates 1..3: pretrain seeds 10-14, 20-24, 30-34
#     perm compare runs/tiny runs/rep1 runs/rep2 runs/rep3 --out runs/compare-reps
# Resumable: a killed pretrain continues from its last checkpoint, finished stages are skipped.
# Cost on 2 cores: ~45 min of pretraining and ~9 min of RMs per replicate.
set -euo pipefail
perm=${PERM:-.venv/bin/perm}
for r in "$@"; do
  seeds="[${r}0,${r}1,${r}2,${r}3,${r}4]"
  $perm pretrain configs/testbed-pretrains.yaml out=runs/rep${r}-pretrains "pretrain.seeds=${seeds}" \
    evaluator.enabled=false
  ckpts="[runs/rep${r}-pretrains/pretrain/seed${r}0"
  for i in 1 2 3 4; do ckpts+=",runs/rep${r}-pretrains/pretrain/seed${r}${i}"; done
  ckpts+="]"
  $perm run out=runs/rep${r} "pretrain.checkpoints=${ckpts}" "reward.finetune_seeds=${seeds}"
done
