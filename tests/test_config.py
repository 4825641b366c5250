"""Config loading, dotted overrides and their errors."""

import pytest

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
    cfg = config_from_overrides(["testbed.seed=3", "reward.lr=3e-4", "pretrain.seeds=[7, 8]", "out=runs/x"])
    assert cfg.testbed.seed == 3
    assert cfg.reward.lr == pytest.approx(3e-4)
    assert cfg.pretrain.seeds == (7, 8)
    assert cfg.out == "runs/x"
    assert cfg.pretrain.pretrain_ids() == ["seed7", "seed8"]


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
    assert (cfg.data.bad_rows, cfg.data.max_bad_fraction, cfg.pretrain.convert_bin) == ("error", 0.001, False)
    cfg = config_from_overrides(["data.bad_rows=skip", "data.max_bad_fraction=0.01", "pretrain.convert_bin=true"])
    assert (cfg.data.bad_rows, cfg.data.max_bad_fraction, cfg.pretrain.convert_bin) == ("skip", 0.01, True)
    with pytest.raises(ConfigError, match=r"data\.bad_rows: expected one of \['error', 'skip'\]"):
        config_from_overrides(["data.bad_rows=drop"])
    with pytest.raises(ConfigError, match=r"data\.max_bad_fraction: must be in \[0, 1\]"):
        config_from_overrides(["data.max_bad_fraction=2"])
    with pytest.raises(ConfigError, match=r"pretrain\.convert_bin: expected bool"):
        config_from_overrides(["pretrain.convert_bin=yes please"])
    real = load_config(configs_dir() / "tldr-pythia.yaml")  # a 179 k-row import skips (and counts) bad rows
    assert (real.data.bad_rows, real.data.max_bad_fraction) == ("skip", 0.001)
