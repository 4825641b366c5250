"""The testbed's shipped backbones ("testbed PolyPythias"): seed-varied checkpoints pretrained once with the
recipe configs/testbed-pretrains.yaml and shipped inside the package, so the embedded default loads its
backbones as a PolyPythias user does (`pretrain.checkpoints`) instead of pretraining them in the run.

A config names one as ``testbed:<name>`` (``testbed:seed0`` ... ``testbed:seed4`` for the grid,
``testbed:seed5`` for the SFT policy, ``testbed:evaluator-seed1000`` for the evaluator). Each folder holds the
weights in half precision (``model.safetensors``; every model loads in fp32 whatever it stores), the
backbone's ``config.json`` and tokenizer, and ``pretrain.json``: the seeds, tokens, held-out perplexity (as
trained, and of the shipped half-precision weights), the testbed it was pretrained on, the recipe and its
hash, and the sha256 of the weights. :func:`verify` checks the weights against that hash and the run's
testbed against the recorded one before anything loads them; a mismatch is a :class:`ShippedPretrainError`
naming the file and what differs. Changing the testbed generator (``TESTBED_VERSION``) or its config means
regenerating them (`perm pretrain configs/testbed-pretrains.yaml`, then `python -m perm.shipped`).
"""

from __future__ import annotations

import json
from pathlib import Path

from perm.config import SHIPPED
from perm.store import hash_file

SCHEME = SHIPPED
ROOT = Path(__file__).parent / "testbed" / "pretrains"
WEIGHTS = "model.safetensors"
RECORD = "pretrain.json"
# testbed fields that shape the corpus and tokenizer the backbones saw (the posts of every split are drawn
# from one stream, so all counts matter; the label temperature does not)
TESTBED_FIELDS = ("seed", "n_corpus_docs", "n_sft", "n_prefs_train", "n_prefs_eval", "n_eval_prompts",
                  "vocab_size")


class ShippedPretrainError(ValueError):
    """A shipped backbone is missing, corrupt, or was pretrained on another testbed than the run's."""


def is_shipped(spec: str | None) -> bool:
    return bool(spec) and str(spec).startswith(SCHEME)


def names() -> list[str]:
    """The shipped backbones, by name."""
    return sorted(p.name for p in ROOT.iterdir() if (p / RECORD).exists()) if ROOT.is_dir() else []


def path_of(spec: str) -> Path:
    name = str(spec)[len(SCHEME):]
    path = ROOT / name
    if not name or "/" in name or not (path / RECORD).exists():
        raise ShippedPretrainError(f"{spec}: no such shipped backbone (have: {', '.join(names()) or 'none'}; "
                                   f"folder {ROOT})")
    return path


def record(spec: str) -> dict:
    path = path_of(spec) / RECORD
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ShippedPretrainError(f"{path}: unreadable record ({e})") from e


def testbed_identity(testbed: dict) -> dict:
    """What a shipped backbone records of the testbed it was pretrained on: the generator version and the
    fields that shape the corpus and tokenizer."""
    from perm.testbed.build import TESTBED_VERSION

    return {"version": TESTBED_VERSION, **{k: testbed[k] for k in TESTBED_FIELDS}}


def verify(spec: str, testbed: dict | None = None) -> Path:
    """The folder of shipped backbone `spec`, after checking its weights against the recorded sha256 and,
    given the run's testbed config (a dict of perm.config.TestbedConfig), that it was pretrained on this
    testbed. Raises ShippedPretrainError naming the file and what differs."""
    path = path_of(spec)
    rec = record(spec)
    weights = path / WEIGHTS
    if not weights.exists():
        raise ShippedPretrainError(f"{weights}: missing (the record {path / RECORD} names it)")
    got = hash_file(weights)
    if got != rec.get("sha256"):
        raise ShippedPretrainError(f"{weights}: sha256 {got[:16]}... differs from {rec.get('sha256', '?')[:16]}... "
                                   f"recorded in {path / RECORD} (a corrupt or replaced file); reinstall perm or "
                                   "regenerate the shipped backbones (README, testbed)")
    if testbed is not None:
        want, have = rec.get("testbed", {}), testbed_identity(testbed)
        diff = {k: (want.get(k), have[k]) for k in have if want.get(k) != have[k]}
        if diff:
            what = ", ".join(f"{k} {a} -> {b}" for k, (a, b) in diff.items())
            raise ShippedPretrainError(
                f"{spec} ({path / RECORD}) was pretrained on another testbed than this run's ({what}): pretrain in the "
                "run instead (pretrain.checkpoints: [], as configs/tiny-scratch.yaml does), or regenerate the "
                "shipped backbones for this testbed (`perm pretrain configs/testbed-pretrains.yaml`, then "
                "python -m perm.shipped)")
    return path


def verify_for(spec: str, cfg) -> Path:
    """:func:`verify` against run config `cfg`'s testbed, which exists only when the run brings no data of its
    own (`data.prefs` unset); otherwise only the weights' hash is checked."""
    from perm.config import to_dict

    return verify(spec, to_dict(cfg.testbed) if cfg.data.prefs is None else None)


def key(spec: str) -> str:
    """A shipped backbone's identity in stage keys: its name and recorded weight hash (verified on load)."""
    return f"shipped:{spec[len(SCHEME):]}@{record(spec)['sha256']}"


# ------------------------------------------------------------------------------------------- shipping


def recipe_of(cfg, name: str) -> dict:
    """What recipe `cfg` (configs/testbed-pretrains.yaml, loaded) gives the backbone `name`: architecture,
    training arguments, seeds and precision; a shipped backbone records it and its hash."""
    from perm.config import to_dict

    train = cfg.pretrain.train_args()
    if name == f"evaluator-seed{cfg.evaluator.pretrain_seed}":
        e = cfg.evaluator
        return {"backbone": to_dict(e.backbone), "train": dict(train, steps=e.pretrain_steps),
                "init_seed": e.pretrain_seed, "data_seed": e.pretrain_seed, "precision": cfg.precision}
    c = cfg.pretrain
    for pid, init_s, data_s in zip(c.pretrain_ids(), c.init_seeds or c.seeds, c.data_seeds or c.seeds, strict=True):
        if pid == name:
            return {"backbone": to_dict(c.backbone), "train": train, "init_seed": init_s,
                    "data_seed": data_s, "precision": cfg.precision}
    raise ShippedPretrainError(f"{name}: not a backbone of this recipe (pretrain.seeds {list(c.seeds)}, evaluator "
                               f"seed {cfg.evaluator.pretrain_seed})")


def recipe_names(cfg) -> list[str]:
    """The backbones a recipe trains: its pretrain ids, then the evaluator's."""
    return [*cfg.pretrain.pretrain_ids(), f"evaluator-seed{cfg.evaluator.pretrain_seed}"]


def heldout_perplexity(model_dir: Path, run_dir: Path, seq_len: int, batch_size: int = 32) -> float:
    """Held-out perplexity of a backbone (loaded in fp32, as every perm model is) on the testbed corpus's
    held-out blocks (perm.pretrain.pack_corpus), with the run's tokenizer."""
    import pyarrow.parquet as pq
    import torch

    from perm.models import load_causal_lm, load_tokenizer
    from perm.pretrain import pack_corpus, perplexity

    tok = load_tokenizer(run_dir / "tokenizer")
    texts = pq.read_table(run_dir / "data" / "corpus.parquet", columns=["text"]).column("text").to_pylist()
    _, held = pack_corpus(texts, tok, seq_len)
    return perplexity(load_causal_lm(model_dir), held, batch_size, torch.device("cpu"))


def ship(run_dir: Path, recipe: Path, out: Path = ROOT) -> list[str]:
    """Ship the backbones a finished `perm pretrain <recipe>` run trained into `out` (the package's folder):
    weights in fp16 safetensors, config and tokenizer, and pretrain.json with the run's record plus the
    testbed identity, the recipe and its hash, the weights' sha256 and the held-out perplexity of the shipped
    weights. Each backbone is written atomically; returns the names shipped."""
    import torch

    from perm.config import load_config, to_dict
    from perm.models import load_causal_lm, load_tokenizer
    from perm.store import atomic_path, hash_obj

    cfg = load_config(recipe)
    run_dir = Path(run_dir)
    shipped = []
    for name in recipe_names(cfg):
        src = run_dir / ("evaluator/pretrain" if name.startswith("evaluator-") else f"pretrain/{name}")
        rec = json.loads((src / RECORD).read_text())
        model = load_causal_lm(src).to(torch.float16)
        want = recipe_of(cfg, name)
        got = {"backbone": rec["config"]["backbone"], "train": {k: v for k, v in rec["config"].items() if k != "backbone"},
               "init_seed": rec["init_seed"], "data_seed": rec["data_seed"], "precision": rec["precision"]}
        if got != want:
            raise ShippedPretrainError(f"{src / RECORD}: trained with {got}, but {recipe} now says {want}")
        with atomic_path(Path(out) / name) as tmp:
            tmp.mkdir(parents=True)
            model.save_pretrained(str(tmp), safe_serialization=True)
            load_tokenizer(run_dir / "tokenizer").save_pretrained(str(tmp))
            rec = dict(rec, name=name, recipe=want, recipe_hash=hash_obj(want), recipe_file=Path(recipe).name,
                       testbed=testbed_identity(to_dict(cfg.testbed)), sha256=hash_file(tmp / WEIGHTS),
                       stored_dtype="float16",
                       heldout_perplexity_shipped=heldout_perplexity(tmp, run_dir, want["train"]["seq_len"]))
            (tmp / RECORD).write_text(json.dumps(rec, indent=2, sort_keys=True) + "\n")
        shipped.append(name)
    return shipped


if __name__ == "__main__":  # python -m perm.shipped RUN_DIR [RECIPE]
    import sys

    args = sys.argv[1:]
    if not 1 <= len(args) <= 2:
        sys.exit("usage: python -m perm.shipped RUN_DIR [configs/testbed-pretrains.yaml]")
    print(ship(Path(args[0]), Path(args[1] if len(args) > 1 else "configs/testbed-pretrains.yaml")))
