"""The stage graph on one screen. Each stage is a module named after its CLI command, with `NAME`, `NEEDS`
(the upstream stages it may ask for), `keys(cfg, upstream) -> {manifest name: key}` (pure: the config and
upstream output hashes only) and `run(ctx)`; its jobs (`job_*`, flat picklable arguments) live beside it.

    stage         needs                          manifest names -> outputs
    testbed       -                              testbed | data -> data/, tokenizer/
    pretrain      testbed                        pretrain/<pid>, evaluator/pretrain -> pretrain/<pid>/, evaluator/pretrain/
    sft           testbed, pretrain              policy -> policy/
    policy-prefs  testbed, sft                   policy-prefs -> policy_prefs.parquet, policy_prefs_eval.parquet
                                                 evaluator-prefs -> evaluator_prefs.parquet (evaluator.extra_posts)
    train-rm      testbed, pretrain, policy-prefs  rm/<pid>-ft<seed>, evaluator/rm -> rm/<id>/, evaluator/rm/
    sample        testbed, sft                   sample -> samples.parquet
    score         train-rm, sample               score/<model_id>, score -> scores/, rewards.parquet, models.parquet
    analyze       score, sample                  analyze -> analysis/
    report        analyze                        report -> report/
"""

from __future__ import annotations

from perm.stages import analyze, policy_prefs, pretrain, report, sample, score, sft, testbed, train_rm

MODULES = (testbed, pretrain, sft, policy_prefs, train_rm, sample, score, analyze, report)
STAGES = {m.NAME: m for m in MODULES}

