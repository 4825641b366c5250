"""perm.importers and `perm import`: config entries read off how seed-varied assets are published."""

from __future__ import annotations

from types import SimpleNamespace

import huggingface_hub
import pytest
from typer.testing import CliRunner

from perm.cli import app
from perm.config import config_from_overrides, loaded_grid
from perm.importers import multiberts, tldr_grid

REPO = "vwxyzjn/EleutherAI_pythia-1b-deduped__reward__tldr"


class FakeApi:
    def __init__(self, names):
        self.names = names

    def list_repo_refs(self, repo_id, **kw):
        return SimpleNamespace(branches=[SimpleNamespace(name=n) for n in self.names])


def test_a_grid_published_as_revision_branches_becomes_rm_checkpoints():
    api = FakeApi(["main", "reward__55513__1706651113", "reward__44413__1706651000", "reward__44413__1706652000",
                   "sft__44413__1706640000", "reward__x__1"])
    entries = tldr_grid(REPO, api=api)
    assert entries == [f"EleutherAI_pythia-1b-deduped__reward__tldr:44413={REPO}@reward__44413__1706652000",
                       f"EleutherAI_pythia-1b-deduped__reward__tldr:55513={REPO}@reward__55513__1706651113"]
    cfg = config_from_overrides([f"reward.rm_checkpoints=[{', '.join(entries)}]"])  # a valid config
    assert [(p, s) for p, s, _ in loaded_grid(cfg.reward)] == [("EleutherAI_pythia-1b-deduped__reward__tldr", 44413),
                                                               ("EleutherAI_pythia-1b-deduped__reward__tldr", 55513)]
    assert tldr_grid(REPO, stage="sft", pretrain_id="pythia-1b", api=api) == [
        f"pythia-1b:44413={REPO}@sft__44413__1706640000"]
    with pytest.raises(ValueError, match="no branch named ppo__<seed>__<timestamp>"):
        tldr_grid(REPO, stage="ppo", api=api)


def test_multiberts_seeds_and_steps():
    assert multiberts([0, 3]) == ["google/multiberts-seed_0", "google/multiberts-seed_3"]
    assert multiberts([1], "2000k") == ["google/multiberts-seed_1-step_2000k"]
    for seeds, step in (([25], None), ([5], "20k"), ([0], "2000")):
        with pytest.raises(ValueError):
            multiberts(seeds, step)


def test_perm_import_prints_the_override_or_exits_2(monkeypatch):
    monkeypatch.setattr(huggingface_hub, "HfApi", lambda: FakeApi(["reward__1__2"]))
    r = CliRunner().invoke(app, ["import", "tldr-grid", REPO, "--pretrain-id", "p1b"])
    assert r.exit_code == 0 and r.output.strip() == f"reward.rm_checkpoints=[p1b:1={REPO}@reward__1__2]"
    r = CliRunner().invoke(app, ["import", "tldr-grid", REPO, "--stage", "sft"])
    assert r.exit_code == 2 and "no branch named sft__<seed>__<timestamp>" in r.output
    r = CliRunner().invoke(app, ["import", "multiberts", "--seeds", "0,1"])
    assert r.exit_code == 0 and r.output.strip() == (
        "pretrain.checkpoints=[google/multiberts-seed_0, google/multiberts-seed_1]")
