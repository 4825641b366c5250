"""Config loading, dotted overrides and their errors; the dataclass defaults as the one source of defaults."""

from pathlib import Path

import pytest

from conftest import added_fields
from perm.config import (
    ConfigError,
    RunConfig,
    config_from_overrides,
    dump_config,
    load_config,
    parse_overrides,
)


def test_overrides_parse_yaml_scalars():
    d = parse_overrides(["a.b=3", "a.c=3e-4", "x=[1, 2]", "y=null", "z=true", "s=hello"])
    assert d == {"a": {"b": 3, "c": 3e-4}, "x": [1, 2], "y": None, "z": True, "s": "hello"}


def test_defaults_and_override():
    cfg = config_from_overrides(["testbed.seed=3", "reward.lr=3e-4", "pretrain.seeds=[7, 8]", "out=runs/x",
                                 "pretrain.checkpoints=[]"])
    assert cfg.testbed.seed == 3
    assert cfg.reward.lr == pytest.approx(3e-4)
    assert cfg.pretrain.seeds == (7, 8)
    assert cfg.out == "runs/x"
    assert cfg.pretrain.pretrain_ids() == ["seed7", "seed8"]


def test_pretraining_fields_with_the_shipped_backbones_are_refused_not_ignored():
    """The default loads the shipped testbed backbones: a pretraining field set beside them would do nothing,
    so it is an error naming what to do."""
    for over, field in (("pretrain.seeds=[7, 8]", "pretrain.seeds"), ("pretrain.steps=600", "pretrain.steps"),
                        ("evaluator.pretrain_steps=10", "evaluator.pretrain_steps")):
        with pytest.raises(ConfigError, match=rf"{field}: .*(checkpoints: \[\]|checkpoint: null)"):
            config_from_overrides([over])
    assert config_from_overrides(["pretrain.checkpoints=[testbed:seed3, testbed:seed4]",
                                  "pretrain.seeds=[3, 4]"]).pretrain.pretrain_ids() == ["seed3", "seed4"]
    assert config_from_overrides(["pretrain.steps=600", "pretrain.checkpoints=[]"]).pretrain.steps == 600


def test_int_accepted_for_float_but_not_the_reverse():
    assert config_from_overrides(["reward.lr=1"]).reward.lr == 1.0
    with pytest.raises(ConfigError, match=r"testbed\.seed: expected int, got 1\.5"):
        config_from_overrides(["testbed.seed=1.5"])


@pytest.mark.parametrize(
    "override, pattern",
    [
        ("testbed.sede=3", r"testbed\.sede: unknown key"),
        ("nonsense=1", r"nonsense: unknown key"),
        ("testbed.seed=abc", r"testbed\.seed: expected int"),
        ("reward.layout=diagonal", r"reward\.layout: expected one of \['paper', 'full'\]"),
        ("pretrain.seeds=3", r"pretrain\.seeds: expected a list of int"),
        ("pretrain.seeds=[1, 1]", r"pretrain\.seeds: must be distinct"),
        ("testbed.n_sft=0", r"testbed\.n_sft: must be > 0"),
        ("policy.evaluator=true", r"policy\.evaluator: unknown key"),
        ("reward.center_coef=true", r"reward\.center_coef: expected float, got True"),
        ("seed", r"key=value"),
    ],
)
def test_override_errors_name_the_key(override, pattern):
    with pytest.raises(ConfigError, match=pattern):
        config_from_overrides([override])


def test_yaml_file_errors_name_the_file(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("testbed:\n  seed: 1\n  vocab: 5\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: testbed\.vocab: unknown key"):
        load_config(p)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    p.write_text("testbed: [1, 2\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(p)


def test_resolved_config_round_trips(tmp_path):
    cfg = config_from_overrides(["testbed.seed=5", "reward.finetune_seeds=[0, 3]"])
    p = tmp_path / "config.yaml"
    p.write_text(dump_config(cfg))
    assert load_config(p) == cfg
    # overrides on top of a file win
    assert load_config(p, ["testbed.seed=9"]).testbed.seed == 9


def test_shipped_configs_load():
    from perm.config import configs_dir

    names = sorted(p.name for p in configs_dir().glob("*.yaml"))
    assert {"tiny.yaml", "quick.yaml", "tldr-pythia.yaml"} <= set(names)
    for name in names:
        assert isinstance(load_config(configs_dir() / name), RunConfig)
    assert load_config(None) == load_config(configs_dir() / "tiny.yaml")


def test_bad_rows_max_bad_fraction_and_convert_bin():
    from perm.config import configs_dir

    cfg = config_from_overrides([])
    assert (cfg.data.bad_rows, cfg.data.max_bad_fraction, cfg.pretrain.convert_bin) == ("error", 0.001, True)
    cfg = config_from_overrides(["data.bad_rows=skip", "data.max_bad_fraction=0.01", "pretrain.convert_bin=false"])
    assert (cfg.data.bad_rows, cfg.data.max_bad_fraction, cfg.pretrain.convert_bin) == ("skip", 0.01, False)
    with pytest.raises(ConfigError, match=r"data\.bad_rows: expected one of \['error', 'skip'\]"):
        config_from_overrides(["data.bad_rows=drop"])
    with pytest.raises(ConfigError, match=r"data\.max_bad_fraction: must be in \[0, 1\]"):
        config_from_overrides(["data.max_bad_fraction=2"])
    with pytest.raises(ConfigError, match=r"pretrain\.convert_bin: expected bool"):
        config_from_overrides(["pretrain.convert_bin=yes please"])
    real = load_config(configs_dir() / "tldr-pythia.yaml")  # a 179 k-row import skips (and counts) bad rows
    assert (real.data.bad_rows, real.data.max_bad_fraction) == ("skip", 0.001)


# ----------------------------------------------------------------------------- one source of defaults


def test_the_embedded_default_is_the_dataclass_defaults():
    """configs/tiny.yaml names the run directory only; every other value is RunConfig's default."""
    import yaml

    from perm.config import default_config_path, to_dict

    assert yaml.safe_load(default_config_path().read_text()) == {"out": RunConfig().out}
    loaded, default = load_config(), RunConfig()
    assert loaded == default
    a, b = to_dict(loaded), to_dict(default)
    for section in a:  # field by field, so a failure names the field
        if isinstance(a[section], dict):
            for name in a[section]:
                assert a[section][name] == b[section][name], f"{section}.{name}"
        else:
            assert a[section] == b[section], section


def test_reward_pairs_auto_resolves_to_policy_on_the_testbed_and_testbed_with_data_prefs():
    import yaml

    assert RunConfig().reward.pairs == "policy"
    assert config_from_overrides(["reward.pairs=auto"]).reward.pairs == "policy"
    external = ["data.prefs=x.jsonl", "pretrain.checkpoints=[a]", "sft.checkpoint=p", "evaluator.enabled=false"]
    cfg = config_from_overrides(external)
    assert cfg.reward.pairs == "testbed"
    assert yaml.safe_load(dump_config(cfg))["reward"]["pairs"] == "testbed"
    for explicit in ("testbed", "policy", "mix"):
        assert config_from_overrides([f"reward.pairs={explicit}"]).reward.pairs == explicit
    for explicit in ("policy", "mix"):  # only `auto` adapts: an explicit choice the data cannot serve fails
        with pytest.raises(ConfigError, match=r"reward\.pairs: policy pairs need the testbed's gold reward"):
            config_from_overrides([*external, f"reward.pairs={explicit}"])
    with pytest.raises(ConfigError, match=r"reward\.pairs: expected one of \['auto', 'testbed', 'policy', 'mix'\]"):
        config_from_overrides(["reward.pairs=both"])


def test_evaluator_extra_posts_must_fit_prefs_train_where_it_is_used():
    assert RunConfig().evaluator.extra_posts is None  # as many as the grid's training posts (resolved per run)
    with pytest.raises(ConfigError, match=r"evaluator\.extra_posts: must be >= 0 \(or null\)"):
        config_from_overrides(["evaluator.extra_posts=-1"])
    with pytest.raises(ConfigError, match=r"evaluator\.extra_posts: must be at most testbed\.n_prefs_train \(400\)"):
        config_from_overrides(["testbed.n_prefs_train=400", "evaluator.extra_posts=401"])
    assert config_from_overrides(["testbed.n_prefs_train=400", "evaluator.extra_posts=400"]).evaluator.extra_posts == 400
    assert config_from_overrides(["testbed.n_prefs_train=400"]).evaluator.extra_posts is None  # null: capped, no error
    # unused with the testbed's own pairs (and so with data.prefs): no posts are sampled, nothing to check
    cfg = config_from_overrides(["reward.pairs=testbed", "testbed.n_prefs_train=400", "evaluator.extra_posts=401"])
    assert cfg.reward.pairs == "testbed"


def test_saved_configs_hold_the_resolved_pairs(tmp_path):
    import dataclasses

    from perm.config import to_dict

    cfg = RunConfig()
    assert to_dict(cfg)["reward"]["pairs"] == "policy"
    p = tmp_path / "config.yaml"
    p.write_text(dump_config(cfg))
    assert load_config(p) == cfg
    # replacing a field (as the pipeline does for precision) keeps the resolved value
    assert dataclasses.replace(cfg, precision="fp32").reward.pairs == "policy"


def test_quick_yaml_resolves_to_the_recorded_config():
    """The stage-key fixtures record quick.yaml's resolved config (run with out, threads, device overridden and
    precision resolved to fp32): quick.yaml must not drift from it when a default changes."""
    import json

    from perm.config import configs_dir, migrate_moved_keys, to_dict

    recorded = json.loads((Path(__file__).parent / "fixtures" / "stage_keys" / "default.json").read_text())["config"]
    recorded = migrate_moved_keys(recorded, say=lambda line: None)  # policy.* -> sft, sample, policy_pairs
    overrides = [f"{k}={recorded[k]}" for k in ("out", "threads", "device", "precision")]
    now = to_dict(load_config(configs_dir() / "quick.yaml", overrides))
    added = added_fields(now, recorded)
    assert set(added) <= {"analysis.bootstrap", "analysis.coverage_sims", "analysis.figure3", "analysis.level", "analysis.pick_ranker", "data.bad_rows", "data.max_bad_fraction",
                          "evaluator.extra_posts", "evaluator.finetune_seed", "evaluator.rm_checkpoint", "pretrain.convert_bin",
                          "pretrain.checkpoint_every", "reward.finetune_seed_scope", "reward.pairs_from", "policy_pairs.kwise",
                          "reward.readout", "reward.micro_batch_size", "ensembles", "score", "sample.memory_gb", "reward.processes", "reward.rm_checkpoints"}, added
    defaults = to_dict(RunConfig())
    kit = {"evaluator.rm_checkpoint", "reward.pairs_from"}  # pinned to null: quick.yaml trains its world
    assert all(now[f.split(".")[0]][f.split(".")[1]] is None for f in kit)
    assert now["ensembles"] == defaults["ensembles"] and now["score"] == defaults["score"]  # sections added whole
    for dotted in set(added) - kit - {"ensembles", "score"}:  # quick.yaml sets none of them
        section, name = dotted.split(".")
        assert now[section][name] == defaults[section][name], dotted


def test_every_config_field_has_a_docstring():
    """A field is documented when a string literal statement follows its annotated assignment in the class body."""
    import ast

    import perm.config

    tree = ast.parse(Path(perm.config.__file__).read_text(encoding="utf-8"))
    classes = [c for c in tree.body if isinstance(c, ast.ClassDef) and c.name.endswith("Config")]
    assert {c.name for c in classes} >= {"TestbedConfig", "DataConfig", "BackboneConfig", "PretrainConfig",
                                         "RewardConfig", "EvaluatorConfig", "SftConfig", "PolicyPairsConfig",
                                         "SampleConfig", "AnalysisConfig",
                                         "RayConfig", "RunConfig"}
    missing, n_fields = [], 0
    for c in classes:
        for i, stmt in enumerate(c.body):
            if not isinstance(stmt, ast.AnnAssign):
                continue
            n_fields += 1
            nxt = c.body[i + 1] if i + 1 < len(c.body) else None
            doc = nxt.value.value if isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant) else None
            if not (isinstance(doc, str) and doc.strip()):
                missing.append(f"{c.name}.{stmt.target.id}")
    assert n_fields > 90
    assert not missing, f"fields without a docstring: {', '.join(missing)}"


def test_ensembles_name_what_the_run_has_before_anything_trains(tmp_path):
    from perm.config import configs_dir
    from perm.pipeline import Pipeline
    from perm.progress import Progress

    with pytest.raises(ConfigError, match=r"ensembles\.backbone: must be one of the grid's pretrains"):
        config_from_overrides(["ensembles.kinds=[lora]", "ensembles.backbone=seed9"])
    cfg = load_config(configs_dir() / "quick.yaml", [f"out={tmp_path / 'run'}", "ensembles.kinds=[lora]",
                                                     "ensembles.size=2", "ensembles.named=[mine=lora-0+seed0-ft7]"])
    with pytest.raises(ValueError, match=r"ensembles\.named: mine: no reward model or member \['seed0-ft7'\]"):
        Pipeline(cfg, Progress("quiet")).plan("run")
    ok = load_config(configs_dir() / "quick.yaml", [f"out={tmp_path / 'run'}", "ensembles.kinds=[lora]",
                                                    "ensembles.size=2", "ensembles.named=[mine=lora-0+seed0-ft1]"])
    assert any(w.stage == "train-members" for w in Pipeline(ok, Progress("quiet")).plan("run"))
    assert not (tmp_path / "run" / "members").exists()


def test_moved_keys_load_with_one_line_naming_the_new_key(capsys):
    """policy.* (split into sft, sample and policy_pairs) and reward.policy_* still load, saying where they
    went; the config equals the one written with the new keys; a key given both ways is an error."""
    old = config_from_overrides(["policy.sft_lr=3e-4", "policy.pool_size=16", "policy.seed=3",
                                 "reward.policy_kwise=4", "policy.sample_memory_gb=0.5"])
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("perm: config keys moved (the old keys load for one release): ")
    assert "policy.sft_lr -> sft.lr" in err[0] and "policy.seed -> sample.seed and policy_pairs.seed" in err[0]
    new = config_from_overrides(["sft.lr=3e-4", "sample.pool_size=16", "sample.seed=3", "policy_pairs.seed=3",
                                 "policy_pairs.kwise=4", "sample.memory_gb=0.5"])
    assert old == new and capsys.readouterr().err == ""
    with pytest.raises(ConfigError, match=r"policy\.pool_size: given beside its new key sample\.pool_size"):
        config_from_overrides(["policy.pool_size=16", "sample.pool_size=8"])
    with pytest.raises(ConfigError, match=r"policy\.nope: unknown key \(the policy section's keys moved"):
        config_from_overrides(["policy.nope=1"])
    with pytest.raises(ConfigError, match=r"policy: must be a mapping"):
        config_from_overrides(["policy=5"])


def test_an_old_config_file_takes_new_style_overrides(tmp_path):
    """A run directory's config.yaml written before the sections moved, with overrides in the new keys (and the
    reverse): each side is migrated before they merge, the override wins."""
    import yaml

    old = tmp_path / "old.yaml"
    old.write_text(yaml.safe_dump({"policy": {"pool_size": 8, "seed": 2}, "reward": {"policy_kwise": 4}}))
    cfg = load_config(old, ["sample.pool_size=16", "policy_pairs.kwise=5"])
    assert (cfg.sample.pool_size, cfg.sample.seed, cfg.policy_pairs.seed, cfg.policy_pairs.kwise) == (16, 2, 2, 5)
    new = tmp_path / "new.yaml"
    new.write_text(yaml.safe_dump({"sample": {"pool_size": 8}}))
    assert load_config(new, ["policy.pool_size=4"]).sample.pool_size == 4
