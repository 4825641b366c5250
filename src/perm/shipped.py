"""What the package ships for the testbed, hashed and verified on load: the backbones ("testbed PolyPythias")
and the testbed kit.

The backbones are seed-varied checkpoints pretrained once with the recipe configs/testbed-pretrains.yaml and
shipped inside the package, so the embedded default loads its backbones as a PolyPythias user does
(`pretrain.checkpoints`) instead of pretraining them in the run.

A config names one as ``testbed:<name>`` (``testbed:seed0`` ... ``testbed:seed4`` for the grid,
``testbed:seed5`` for the SFT policy, ``testbed:evaluator-seed1000`` for the evaluator). Each folder holds the
weights in half precision (``model.safetensors``; every model loads in fp32 whatever it stores), the
backbone's ``config.json`` and tokenizer, and ``pretrain.json``: the seeds, tokens, held-out perplexity (as
trained, and of the shipped half-precision weights), the testbed it was pretrained on, the recipe and its
hash, and the sha256 of the weights. :func:`verify` checks the weights against that hash and the run's
testbed against the recorded one before anything loads them; a mismatch is a :class:`ShippedPretrainError`
naming the file and what differs. Changing the testbed generator (``TESTBED_VERSION``) or its config means
regenerating them (`perm pretrain configs/testbed-pretrains.yaml`, then `python -m perm.shipped`).

The testbed kit (src/perm/testbed/kit/, built by perm.kit from configs/testbed-kit.yaml) holds what the
experiment holds fixed: the SFT policy (``testbed:kit/policy``, folder policy/), the policy preference pairs
(``testbed:kit``: policy_prefs.parquet, policy_prefs_eval.parquet, evaluator_prefs.parquet) and the trained
evaluator RM (``testbed:kit/evaluator``, folder evaluator/). Its record kit.json lists the sha256 of every
file, per part, with the recipe and the testbed it was built on; :func:`verify_kit` checks them before
anything loads a part (a :class:`KitError` names the file and what differs), and a part is keyed on its
recorded hash (:func:`key`). This module only reads the kit; perm.kit builds it.
"""

from __future__ import annotations

import json
from pathlib import Path

from perm import run_layout as layout
from perm.config import KIT, KIT_EVALUATOR, KIT_POLICY, SHIPPED, TestbedConfig, is_kit, to_dict
from perm.store import hash_file, hash_obj

SCHEME = SHIPPED
ROOT = Path(__file__).parent / "testbed" / "pretrains"
KIT_ROOT = Path(__file__).parent / "testbed" / "kit"
KIT_RECORD = "kit.json"
POLICY, EVALUATOR, PAIRS = "policy", "evaluator", "pairs"  # the kit's parts
KIT_SPECS = {KIT_POLICY: POLICY, KIT_EVALUATOR: EVALUATOR, KIT: PAIRS}
# a model part's folder in the kit (pairs: its files)
KIT_FOLDERS = {POLICY: "policy", EVALUATOR: "evaluator"}
PAIR_FILES = (layout.POLICY_PREFS, layout.POLICY_PREFS_EVAL, layout.EVALUATOR_PREFS)  # as a run's
WEIGHTS = "model.safetensors"
RECORD = layout.PRETRAIN_RECORD
# testbed fields that shape the corpus and tokenizer the backbones saw (the posts of every split are drawn
# from one stream, so all counts matter; the label temperature does not)
TESTBED_FIELDS = ("seed", "n_corpus_docs", "n_sft", "n_prefs_train", "n_prefs_eval", "n_eval_prompts",
                  "vocab_size")


def testbed_difference(recorded: dict, have: dict) -> str:
    """The fields of the run's testbed that differ from a shipped artefact's recorded one, as ``field recorded
    -> run`` (comma-separated); "" when they agree."""
    return ", ".join(f"{k} {recorded.get(k)} -> {v}" for k, v in have.items() if recorded.get(k) != v)


class ShippedPretrainError(ValueError):
    """A shipped backbone is missing, corrupt, or was pretrained on another testbed than the run's."""


class KitError(ShippedPretrainError):
    """The testbed kit (or one of its files) is missing, corrupt, of another testbed or of another recipe; the
    message names the file and what differs."""


def is_shipped(spec: str | None) -> bool:
    """A spec in the ``testbed:`` scheme: a shipped backbone or a part of the testbed kit."""
    return bool(spec) and str(spec).startswith(SCHEME)


def names() -> list[str]:
    """The shipped backbones, by name."""
    return sorted(p.name for p in ROOT.iterdir() if (p / RECORD).exists()) if ROOT.is_dir() else []


def path_of(spec: str) -> Path:
    """The folder of a shipped backbone, or of a kit part (the kit's folder for its pairs); not verified."""
    if is_kit(spec):
        return _kit_part_path(spec)
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
    testbed. Raises ShippedPretrainError naming the file and what differs. A kit part: :func:`verify_kit` of
    that part, and its folder (the kit's, for the pairs)."""
    if is_kit(spec):
        verify_kit(KIT_ROOT, [kit_part(spec)], testbed)
        return _kit_part_path(spec)
    path = path_of(spec)
    rec = record(spec)
    weights = path / WEIGHTS
    if not weights.exists():
        raise ShippedPretrainError(f"{weights}: missing (the record {path / RECORD} names it)")
    got = hash_file(weights)
    if got != rec.get("sha256"):
        raise ShippedPretrainError(f"{weights}: sha256 {got[:16]}... differs from "
                                   f"{rec.get('sha256', '?')[:16]}... recorded in {path / RECORD} (a corrupt "
                                   "or replaced file); reinstall perm or regenerate the shipped backbones "
                                   "(README, testbed)")
    if testbed is not None:
        what = testbed_difference(rec.get("testbed", {}), testbed_identity(testbed))
        if what:
            raise ShippedPretrainError(
                f"{spec} ({path / RECORD}) was pretrained on another testbed than this run's ({what}): "
                "pretrain in the run instead (pretrain.checkpoints: [], as configs/tiny-scratch.yaml does), "
                "or regenerate the shipped backbones for this testbed "
                "(`perm pretrain configs/testbed-pretrains.yaml`, then python -m perm.shipped)")
    return path


def verify_for(spec: str, cfg) -> Path:
    """:func:`verify` against run config `cfg`'s testbed, which exists only when the run brings no data of its
    own (`data.prefs` unset); otherwise only the weights' hash is checked."""
    from perm.config import to_dict

    return verify(spec, to_dict(cfg.testbed) if cfg.data.prefs is None else None)


def key(spec: str) -> str:
    """A shipped backbone's identity in stage keys: its name and recorded weight hash (verified on load); a
    kit part's: ``kit:<part>@<its recorded sha256>``."""
    if is_kit(spec):
        part = kit_part(spec)
        return f"kit:{part}@{_kit_entry(kit_record(KIT_ROOT), part, KIT_ROOT)['sha256']}"
    return f"shipped:{spec[len(SCHEME):]}@{record(spec)['sha256']}"


# ------------------------------------------------------------------------------------------ the testbed kit


def kit_part(spec: str) -> str:
    """The kit part a ``testbed:kit...`` spec names: policy, evaluator or pairs."""
    if spec not in KIT_SPECS:
        raise KitError(f"{spec}: no such part of the testbed kit (have: {', '.join(KIT_SPECS)})")
    return KIT_SPECS[spec]


def _kit_part_path(spec: str) -> Path:
    return KIT_ROOT / KIT_FOLDERS.get(kit_part(spec), "")


def kit_exists(root: Path | None = None) -> bool:
    """Whether a kit (its record) is there (default: the package's)."""
    return (Path(root or KIT_ROOT) / KIT_RECORD).is_file()


def kit_record(root: Path | None = None) -> dict:
    """The kit's record (kit.json) in `root` (default: the package's kit)."""
    path = Path(root or KIT_ROOT) / KIT_RECORD
    if not path.is_file():
        raise KitError(f"{path}: no testbed kit there (build it with `perm kit build`, README: the testbed "
                       "kit; or train the world in the run: sft.checkpoint, reward.pairs_from and "
                       "evaluator.rm_checkpoint null)")
    try:
        rec = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise KitError(f"{path}: unreadable record ({e})") from e
    if not isinstance(rec, dict) or not isinstance(rec.get("artefacts"), dict):
        raise KitError(f"{path}: not a kit record (no 'artefacts' mapping)")
    return rec


def _kit_entry(rec: dict, part: str, root: Path) -> dict:
    entry = rec["artefacts"].get(part)
    if not isinstance(entry, dict) or not isinstance(entry.get("files"), dict) or "sha256" not in entry:
        raise KitError(f"{Path(root) / KIT_RECORD}: no {part} in this kit (it has: "
                       f"{', '.join(rec['artefacts']) or 'nothing'})")
    return entry


def kit_testbed_identity(testbed: dict) -> dict:
    """What the kit records of the testbed it was built on: the generator version and every testbed field (the
    policy and the pairs are of its posts; the labels of its raters)."""
    from perm.testbed.build import TESTBED_VERSION

    return {"version": TESTBED_VERSION, **testbed}


def kit_files(root: Path, part: str) -> dict[str, str]:
    """{path relative to the kit: sha256} of the files a kit folder holds for `part` now."""
    root = Path(root)
    if part in KIT_FOLDERS:
        folder = root / KIT_FOLDERS[part]
        paths = sorted(p for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else []
    else:
        paths = [root / f for f in PAIR_FILES if (root / f).is_file()]
    return {str(p.relative_to(root)): hash_file(p) for p in paths}


def verify_kit(root: Path | None = None, parts: list[str] | None = None, testbed: dict | None = None) -> dict:
    """Check the kit in `root` (default: the package's) against its record: every file of `parts` (default:
    all) exists with its recorded sha256, a model part's folder holds no other file, and each part's recorded
    hash is of its recorded files; given the run's testbed config (a dict of perm.config.TestbedConfig), that
    the kit was built on this testbed. Returns the record; raises KitError naming the file and what differs.
    """
    root = Path(root or KIT_ROOT)
    rec = kit_record(root)
    where = root / KIT_RECORD
    for part in parts or list(rec["artefacts"]):
        entry = _kit_entry(rec, part, root)
        for rel, want in entry["files"].items():
            path = root / rel
            if not path.is_file():
                raise KitError(f"{path}: missing (the record {where} lists it for the kit's {part})")
            got = hash_file(path)
            if got != want:
                raise KitError(f"{path}: sha256 {got[:16]}... differs from {str(want)[:16]}... recorded in "
                               f"{where} (a corrupt or replaced file); reinstall perm or rebuild the kit "
                               "(`perm kit build`)")
        extra = sorted(set(kit_files(root, part)) - set(entry["files"])) if part in KIT_FOLDERS else []
        if extra:
            raise KitError(f"{root / extra[0]}: not in the record {where} (a file added to the kit's "
                           f"{part}); remove it or rebuild the kit (`perm kit build`)")
        if hash_obj(entry["files"]) != entry["sha256"]:
            raise KitError(f"{where}: the {part} files' combined sha256 differs from the one recorded beside "
                           "them (an edited record); reinstall perm or rebuild the kit (`perm kit build`)")
    if testbed is not None:
        what = testbed_difference(rec.get("testbed", {}), kit_testbed_identity(testbed))
        if what:
            raise KitError(f"the testbed kit ({where}) was built on another testbed than this run's "
                           f"({what}): train the world in the run instead (sft.checkpoint, "
                           "reward.pairs_from and evaluator.rm_checkpoint null, as configs/tiny-scratch.yaml "
                           "does), or rebuild the kit for this testbed (`perm kit build`)")
    return rec


def pairs_identity(spec: str) -> str:
    """The identity of `reward.pairs_from` in stage keys: the kit's pairs by their recorded hash, a folder by
    the content of the pair files it holds (a missing one is named when the run reads it)."""
    if is_kit(spec):
        return key(spec)
    folder = Path(spec).expanduser()
    return "files:" + hash_obj({f: hash_file(folder / f) for f in PAIR_FILES if (folder / f).is_file()})


def pairs_folder(spec: str, files: tuple[str, ...], testbed: TestbedConfig | dict | None = None) -> Path:
    """The folder holding the pair `files` of `reward.pairs_from`: the package's kit (verified: hashes and,
    given it, the run's testbed) or a local folder; raises KitError naming a missing file."""
    if testbed is not None and not isinstance(testbed, dict):
        testbed = to_dict(testbed)
    if is_kit(spec):
        folder = verify(spec, testbed)
        listed = _kit_entry(kit_record(KIT_ROOT), PAIRS, KIT_ROOT)["files"]
        missing = [f for f in files if f not in listed]
    else:
        folder = Path(spec).expanduser()
        if not folder.is_dir():
            raise KitError(f"reward.pairs_from: {spec}: no such folder (a kit folder or a run directory "
                           f"holding {', '.join(files)})")
        missing = [f for f in files if not (folder / f).is_file()]
    if missing:
        hint = (" (its evaluator's pairs: set evaluator.extra_posts: 0 to finetune the evaluator on the "
                "grid's pairs alone)" if PAIR_FILES[2] in missing else "")
        raise KitError(f"{folder / missing[0]}: missing, and reward.pairs_from ({spec}) needs it{hint}")
    return folder


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
    for pid, init_s, data_s in zip(c.pretrain_ids(), c.init_seeds or c.seeds, c.data_seeds or c.seeds,
                                   strict=True):
        if pid == name:
            return {"backbone": to_dict(c.backbone), "train": train, "init_seed": init_s,
                    "data_seed": data_s, "precision": cfg.precision}
    raise ShippedPretrainError(f"{name}: not a backbone of this recipe (pretrain.seeds {list(c.seeds)}, "
                               f"evaluator seed {cfg.evaluator.pretrain_seed})")


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

    tok = load_tokenizer(run_dir / layout.TOKENIZER)
    texts = pq.read_table(run_dir / layout.CORPUS, columns=["text"]).column("text").to_pylist()
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
        evaluator = name.startswith("evaluator-")
        src = run_dir / (layout.EVALUATOR_PRETRAIN if evaluator else layout.pretrain_dir(name))
        rec = json.loads((src / RECORD).read_text())
        model = load_causal_lm(src).to(torch.float16)
        want = recipe_of(cfg, name)
        got = {"backbone": rec["config"]["backbone"],
               "train": {k: v for k, v in rec["config"].items() if k != "backbone"},
               "init_seed": rec["init_seed"], "data_seed": rec["data_seed"], "precision": rec["precision"]}
        if got != want:
            raise ShippedPretrainError(f"{src / RECORD}: trained with {got}, but {recipe} now says {want}")
        with atomic_path(Path(out) / name) as tmp:
            tmp.mkdir(parents=True)
            model.save_pretrained(str(tmp), safe_serialization=True)
            load_tokenizer(run_dir / layout.TOKENIZER).save_pretrained(str(tmp))
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
