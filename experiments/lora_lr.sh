#!/usr/bin/env bash
# LoRA members' learning rate chosen by learnability alone: held-out accuracy of 2 adapters per rate on the
# cheap-ensembles world (the grid's recipe otherwise), beside the grid's full finetunes of the same backbone.
set -euo pipefail
out=${1:-runs/cheap-ensembles}
for lr in 1e-3 3e-3 1e-2; do
  perm train-members configs/cheap-ensembles.yaml "out=$out" "ensembles.kinds=[lora]" ensembles.size=2 \
    "ensembles.lora_lr=$lr" --quiet
  python - "$out" "$lr" <<'PY'
import json, sys, pathlib
out, lr = sys.argv[1:]
for h in (0, 1):
    r = json.loads((pathlib.Path(out) / f"members/lora-{h}/rm.json").read_text())
    print(f"lora_lr={lr} lora-{h}: accuracy {r['accuracy']:.3f} ± {r['accuracy_se']:.3f}, "
          f"gold_accuracy {r['gold_accuracy']:.3f}, wall {r['wall_s']:.0f} s, params trained {r['params_trained']}")
PY
done
python - "$out" <<'PY'
import json, sys, pathlib
for f in sorted(pathlib.Path(sys.argv[1]).glob("rm/seed0-ft*/rm.json")):
    r = json.loads(f.read_text())
    print(f"grid {r['model_id']}: accuracy {r['accuracy']:.3f}, gold_accuracy {r['gold_accuracy']:.3f}, wall {r['wall_s']:.0f} s")
PY
