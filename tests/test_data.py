"""perm.data: loading preference pairs from JSONL, Parquet and datasets, and the errors bad input gets.

Every error is a single DataError whose message names the file, the line (JSONL, 1-based) or row
(Parquet / datasets, 0-based) and the field; the tests assert on all three.
"""

import json
import os
import re

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from perm.data import (
    DataError,
    Location,
    PreferencePair,
    detect_schema,
    load_preferences,
    preferences_to_table,
    tldr_prompt,
    validate_pairs,
)

datasets.disable_progress_bars()


def generic(prompt="Say hi.", chosen=" Hi!", rejected=" Go away.", **extra):
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected, **extra}


def tldr(post_id="t3_abc", choice=1, texts=(" I lost my keys.", " Keys gone, help"), **overrides):
    """A comparisons row of openai/summarize_from_feedback, as its Parquet conversion stores it."""
    row = {
        "info": {
            "id": post_id,
            "post": "I went out and lost my keys.\n",
            "title": "Lost keys",
            "subreddit": "relationships",
            "site": None,
            "article": None,
        },
        "summaries": [{"text": t, "policy": f"sup{i}", "note": None} for i, t in enumerate(texts)],
        "choice": choice,
        "worker": "w1",
        "batch": "batch3",
        "split": "train",
        "extra": {"confidence": 7},
    }
    row.update(overrides)
    return row


# Hand-written expectation for tldr(): post, title and subreddit stripped, one space before each summary.
TLDR_PROMPT_TEXT = (
    "SUBREDDIT: r/relationships\n\nTITLE: Lost keys\n\nPOST: I went out and lost my keys.\n\nTL;DR:"
)


def write_jsonl(path, records):
    """Records are dicts (dumped as JSON), str (written verbatim) or bytes (written raw), one per line."""
    with open(path, "wb") as f:
        for r in records:
            line = r if isinstance(r, bytes) else (r if isinstance(r, str) else json.dumps(r)).encode()
            f.write(line + b"\n")
    return path


def write_parquet(path, records):
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(records), path)
    return path


def files_under(root):
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)


# ----------------------------------------------------------------------------------------------------
# Happy paths


def test_generic_jsonl_with_blank_lines_and_ids(tmp_path):
    path = write_jsonl(
        tmp_path / "prefs.jsonl",
        [generic(id="a"), "", "   ", generic(prompt="P2", chosen="x", rejected="y"), generic(id=7)],
    )
    pairs = load_preferences(path)
    assert pairs == [
        PreferencePair("a", "Say hi.", " Hi!", " Go away."),
        # no id: its position among the non-blank records, counted from 0
        PreferencePair("1", "P2", "x", "y"),
        PreferencePair("7", "Say hi.", " Hi!", " Go away."),
    ]


def test_tldr_jsonl_builds_prompt_and_orders_by_choice(tmp_path):
    rows = [
        tldr(choice=1),
        tldr(choice=0, texts=("Found them.", " found keys  ")),  # summaries without / with leading space
        tldr(choice=0),  # the same post and summaries again (another worker): a pair of its own
    ]
    pairs = load_preferences(write_jsonl(tmp_path / "comparisons.jsonl", rows))
    assert pairs == [
        PreferencePair("t3_abc/0", TLDR_PROMPT_TEXT, " Keys gone, help", " I lost my keys."),
        PreferencePair("t3_abc/1", TLDR_PROMPT_TEXT, " Found them.", " found keys"),
        PreferencePair("t3_abc/2", TLDR_PROMPT_TEXT, " I lost my keys.", " Keys gone, help"),
    ]
    assert tldr_prompt(" relationships", "Lost keys ", "I went out and lost my keys.\n") == TLDR_PROMPT_TEXT


def test_tldr_explicit_id_wins(tmp_path):
    pairs = load_preferences(write_jsonl(tmp_path / "c.jsonl", [tldr(id="cmp-1")]))
    assert [p.pair_id for p in pairs] == ["cmp-1"]


def test_same_data_same_pairs_from_every_source(tmp_path):
    """JSONL, Parquet, a save_to_disk dataset and a folder of Parquet files give identical pairs."""
    rows = [tldr(), tldr("t3_def", choice=0), tldr("t3_ghi")]
    from_jsonl = load_preferences(write_jsonl(tmp_path / "c.jsonl", rows))
    from_parquet = load_preferences(write_parquet(tmp_path / "c.parquet", rows))
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "saved"))
    from_saved = load_preferences(tmp_path / "saved")
    write_parquet(tmp_path / "folder" / "data" / "train-00000-of-00002.parquet", rows[:2])
    write_parquet(tmp_path / "folder" / "data" / "train-00001-of-00002.parquet", rows[2:])
    from_folder = load_preferences(tmp_path / "folder", split="train")
    assert from_jsonl == from_parquet == from_saved == from_folder
    assert [p.pair_id for p in from_folder] == ["t3_abc/0", "t3_def/1", "t3_ghi/2"]  # counted across files


def test_generic_parquet_and_schema_autodetection(tmp_path):
    path = write_parquet(tmp_path / "prefs.parquet", [generic(id="a"), generic(id="b", chosen="other")])
    assert [p.chosen for p in load_preferences(path)] == [" Hi!", "other"]
    assert load_preferences(path, schema="generic") == load_preferences(path)


def test_folder_like_the_hub_mirror(tmp_path):
    """Stand-in for vwxyzjn/summarize_from_feedback_oai_preprocessing_*: data/<split>-*.parquet, extra
    token columns that the loader must not need."""
    extra = {"query_token": [1, 2, 3], "query": "...", "response0_token_len": 5}
    write_parquet(tmp_path / "mirror" / "data" / "train-00000-of-00001.parquet", [tldr(**extra)] * 2)
    write_parquet(tmp_path / "mirror" / "data" / "validation-00000-of-00001.parquet", [tldr("t3_v", **extra)])
    pairs = load_preferences(tmp_path / "mirror", split="validation")
    assert pairs == [PreferencePair("t3_v/0", TLDR_PROMPT_TEXT, " Keys gone, help", " I lost my keys.")]
    with pytest.raises(DataError, match=r"mirror: has splits \['train', 'validation'\]; choose one"):
        load_preferences(tmp_path / "mirror")


def test_tldr_skips_cnndm_rows_and_counts_them(tmp_path):
    """OpenAI's validation split ends with CNN/DM article comparisons (batch cnndm0/cnndm2/batch0_cnndm, or
    info.post null with an article): not TL;DR pairs, so skipped, counted, and the later ids unchanged."""
    cnn_by_batch = tldr("cnn1", batch="cnndm0")
    cnn_by_article = tldr(info={"id": "cnn2", "post": None, "title": None, "subreddit": None, "article": "News."})
    rows = [tldr(), cnn_by_batch, cnn_by_article, tldr("t3_def", choice=0)]
    for path in (write_jsonl(tmp_path / "c.jsonl", rows), write_parquet(tmp_path / "c.parquet", rows)):
        stats: dict = {}
        pairs = load_preferences(path, stats=stats)
        assert [p.pair_id for p in pairs] == ["t3_abc/0", "t3_def/3"]
        assert stats == {"skipped_cnndm": 2}
    assert len(load_preferences(write_jsonl(tmp_path / "d.jsonl", rows), limit=2)) == 2  # limit counts pairs
    with pytest.raises(DataError, match="no preference pairs"):
        load_preferences(write_jsonl(tmp_path / "e.jsonl", [cnn_by_batch]))


def test_mirror_with_its_own_chosen_rejected_columns_is_tldr(tmp_path):
    """vwxyzjn's mirror carries its own prompt/chosen/rejected formatting beside info/summaries/choice."""
    assert detect_schema(["info", "summaries", "choice", "prompt", "chosen", "rejected"]) == "tldr"
    assert detect_schema(["prompt", "chosen", "rejected", "info"]) == "generic"
    row = tldr(prompt="their prompt", chosen="their chosen", rejected="their rejected")
    pairs = load_preferences(write_parquet(tmp_path / "m.parquet", [row]))
    assert pairs[0].prompt == TLDR_PROMPT_TEXT and pairs[0].chosen == " Keys gone, help"


def test_folder_like_the_parquet_conversion(tmp_path):
    """Stand-in for openai/summarize_from_feedback at refs/convert/parquet: <config>/<split>/0000.parquet."""
    root = tmp_path / "sff"
    write_parquet(root / "comparisons" / "train" / "0000.parquet", [tldr(), tldr("t3_x")])
    write_parquet(root / "comparisons" / "validation" / "0000.parquet", [tldr("t3_val")])
    write_parquet(
        root / "axis" / "validation" / "0000.parquet",
        [{"info": {"id": "a"}, "summary": {"text": "s"}, "axes": {"overall": 3}}],
    )
    pairs = load_preferences(root, name="comparisons", split="validation")
    assert [p.pair_id for p in pairs] == ["t3_val/0"]
    assert len(load_preferences(root, name="comparisons", split="train")) == 2


def test_saved_dataset_dict_needs_a_split(tmp_path):
    ds = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_list([generic()]),
            "test": datasets.Dataset.from_list([generic(chosen="z")]),
        }
    )
    ds.save_to_disk(str(tmp_path / "dd"))
    assert [p.chosen for p in load_preferences(tmp_path / "dd", split="test")] == ["z"]
    with pytest.raises(DataError, match=r"dd: has splits \['train', 'test'\]"):
        load_preferences(tmp_path / "dd")
    with pytest.raises(DataError, match=r"dd: no split 'dev'"):
        load_preferences(tmp_path / "dd", split="dev")


def test_limit_stops_reading(tmp_path):
    path = write_jsonl(tmp_path / "prefs.jsonl", [generic(id=1), generic(id=2), "{not json"])
    assert [p.pair_id for p in load_preferences(path, limit=2)] == ["1", "2"]
    with pytest.raises(DataError, match="line 3"):
        load_preferences(path)
    with pytest.raises(ValueError, match="limit"):
        load_preferences(path, limit=0)


def test_loading_writes_nothing(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", [generic()])
    write_parquet(tmp_path / "folder" / "data" / "train-00000-of-00001.parquet", [tldr()])
    datasets.Dataset.from_list([generic()]).save_to_disk(str(tmp_path / "saved"))
    before = files_under(tmp_path)
    load_preferences(tmp_path / "a.jsonl")
    load_preferences(tmp_path / "folder")
    load_preferences(tmp_path / "saved")
    assert files_under(tmp_path) == before


def test_preferences_to_table():
    pairs = [PreferencePair("a", "p", "c", "r"), PreferencePair("b", "p2", "c2", "r2")]
    table = preferences_to_table(pairs)
    assert table.column_names == ["pair_id", "prompt", "chosen", "rejected"]
    assert all(t == pa.string() for t in table.schema.types)
    assert table.to_pylist()[1] == {"pair_id": "b", "prompt": "p2", "chosen": "c2", "rejected": "r2"}
    assert preferences_to_table([]).num_rows == 0


# ----------------------------------------------------------------------------------------------------
# Hub ids (the hub is not reached: datasets.load_dataset is replaced and its arguments checked)


@pytest.fixture
def fake_hub(monkeypatch):
    calls = []

    def load_dataset(path, **kwargs):
        calls.append((path, kwargs))
        return datasets.DatasetDict({"train": datasets.Dataset.from_list([tldr()])})

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    # a Hub dataset that declares the config it is asked for (the config lookup is the hub's too)
    monkeypatch.setattr(datasets, "get_dataset_config_names", lambda path, revision=None, **kw: ["cfg"])
    return calls


def test_openai_tldr_uses_the_parquet_conversion(fake_hub):
    pairs = load_preferences("openai/summarize_from_feedback", split="train")
    assert fake_hub == [
        (
            "openai/summarize_from_feedback",
            {"split": "train", "revision": "refs/convert/parquet", "data_dir": "comparisons"},
        )
    ]
    assert pairs[0].prompt == TLDR_PROMPT_TEXT


def test_other_hub_ids_pass_name_and_revision(fake_hub):
    load_preferences("someone/prefs", name="cfg", revision="v1")
    assert fake_hub == [("someone/prefs", {"split": None, "revision": "v1", "name": "cfg"})]


def test_hub_failure_is_a_data_error(monkeypatch):
    def offline(path, **kwargs):
        raise ConnectionError("Couldn't reach the Hub")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError, match=r"someone/prefs: no such local file or folder.*Couldn't reach"):
        load_preferences("someone/prefs", split="train")


# ----------------------------------------------------------------------------------------------------
# Bad JSONL: one DataError naming the file, the line and the field

GOOD = json.dumps(generic(id="a"))
GOOD_TLDR = json.dumps(tldr())

JSONL_ERRORS = {
    "invalid JSON": (
        [GOOD, '{"prompt": "p", "chosen": '],
        r"prefs\.jsonl: line 2: invalid JSON: .* \(column \d+\)",
    ),
    "non-UTF-8 bytes": (
        [GOOD, b'{"prompt": "caf\xe9"}'],
        r"prefs\.jsonl: line 2: not valid UTF-8 \(byte 0xe9",
    ),
    "not an object": ([GOOD, "[1, 2]"], r"prefs\.jsonl: line 2: expected a JSON object, got an array"),
    "missing chosen": (
        [GOOD, '{"prompt": "p", "rejected": "r"}'],
        r"prefs\.jsonl: line 2: field 'chosen': missing",
    ),
    "chosen is a number": (
        [GOOD, json.dumps(generic(chosen=3))],
        r"prefs\.jsonl: line 2: field 'chosen': expected a string, got int \(3\)",
    ),
    "rejected is null": (
        [GOOD, json.dumps(generic(rejected=None))],
        r"prefs\.jsonl: line 2: field 'rejected': expected a string, got null",
    ),
    "whitespace-only prompt": (
        [GOOD, json.dumps(generic(prompt=" \n\t"))],
        r"prefs\.jsonl: line 2: field 'prompt': empty or whitespace-only text",
    ),
    "empty chosen": ([json.dumps(generic(chosen=""))], r"prefs\.jsonl: line 1: field 'chosen': empty"),
    "chosen identical to rejected": (
        [GOOD, json.dumps(generic(chosen="same", rejected=" same "))],
        r"prefs\.jsonl: line 2: field 'rejected': identical to 'chosen'",
    ),
    "duplicate id": (
        [GOOD, "", json.dumps(generic(id="b")), json.dumps(generic(id="a"))],
        r"prefs\.jsonl: line 4: field 'id': duplicate pair id 'a' \(first at line 1\)",
    ),
    "id is a bool": (
        [json.dumps(generic(id=True))],
        r"prefs\.jsonl: line 1: field 'id': expected a string or an integer",
    ),
    "blank line keeps line numbers": (
        [GOOD, "", "  ", json.dumps(generic(chosen=1.5))],
        r"prefs\.jsonl: line 4: field 'chosen': expected a string, got float",
    ),
    "schema not detectable": (
        ['{"question": "q", "answer": "a"}'],
        r"prefs\.jsonl: line 1: cannot detect the schema from fields \['answer', 'question'\]",
    ),
    # summarize_from_feedback rows
    "choice out of range": (
        [GOOD_TLDR, json.dumps(tldr(choice=2))],
        r"prefs\.jsonl: line 2: field 'choice': must be 0 or 1 .*got 2",
    ),
    "choice is a bool": (
        [json.dumps(tldr(choice=True))],
        r"prefs\.jsonl: line 1: field 'choice': expected an integer, got bool \(True\)",
    ),
    "choice is a float": (
        [json.dumps(tldr(choice=1.0))],
        r"prefs\.jsonl: line 1: field 'choice': expected an integer, got float",
    ),
    "choice is a string": (
        [json.dumps(tldr(choice="1"))],
        r"prefs\.jsonl: line 1: field 'choice': expected an integer, got str",
    ),
    "missing choice": (
        [json.dumps({k: v for k, v in tldr().items() if k != "choice"})],
        r"prefs\.jsonl: line 1: field 'choice': missing",
    ),
    "one summary": (
        [GOOD_TLDR, json.dumps(tldr(texts=(" only one",), choice=0))],
        r"prefs\.jsonl: line 2: field 'summaries': expected 2 summaries, got 1",
    ),
    "no summaries": (
        [json.dumps(tldr(texts=(), choice=0))],
        r"line 1: field 'summaries': expected 2 summaries, got 0",
    ),
    "summary text is a number": (
        [json.dumps(tldr(texts=(" a", 5)))],
        r"prefs\.jsonl: line 1: field 'summaries\[1\]\.text': expected a string, got int",
    ),
    "blank summary": (
        [json.dumps(tldr(texts=("  ", " b")))],
        r"prefs\.jsonl: line 1: field 'summaries\[0\]\.text': empty or whitespace-only text",
    ),
    "identical summaries": (
        [json.dumps(tldr(texts=(" same", "same")))],
        r"prefs\.jsonl: line 1: field 'summaries\[0\]\.text': identical to 'summaries\[1\]\.text'",
    ),
    "post missing": (
        [json.dumps(tldr(info={"id": "t3_x", "title": "t", "subreddit": "s"}))],
        r"prefs\.jsonl: line 1: field 'info\.post': missing",
    ),
    "post null, no article": (
        [json.dumps(tldr(info={"id": "c", "post": None, "title": "t", "subreddit": "s"}))],
        r"prefs\.jsonl: line 1: field 'info\.post': expected a string, got null",
    ),
    "info not an object": (
        [json.dumps(tldr(info="post"))],
        r"line 1: field 'info': expected an object, got str",
    ),
}


@pytest.mark.parametrize("lines, pattern", JSONL_ERRORS.values(), ids=JSONL_ERRORS.keys())
def test_bad_jsonl(tmp_path, lines, pattern):
    path = write_jsonl(tmp_path / "prefs.jsonl", lines)
    with pytest.raises(DataError, match=pattern):
        load_preferences(path)


def test_empty_files(tmp_path):
    (tmp_path / "empty.jsonl").write_bytes(b"")
    with pytest.raises(DataError, match=r"empty\.jsonl: no preference pairs"):
        load_preferences(tmp_path / "empty.jsonl")
    write_jsonl(tmp_path / "blank.jsonl", ["", "  "])
    with pytest.raises(DataError, match=r"blank\.jsonl: no preference pairs"):
        load_preferences(tmp_path / "blank.jsonl")


def test_forced_schema_is_obeyed(tmp_path):
    path = write_jsonl(tmp_path / "prefs.jsonl", [generic()])
    with pytest.raises(DataError, match=r"prefs\.jsonl: line 1: field 'info': missing"):
        load_preferences(path, schema="tldr")
    with pytest.raises(ValueError, match="schema"):
        load_preferences(path, schema="hh")


def test_error_carries_its_parts(tmp_path):
    path = write_jsonl(tmp_path / "prefs.jsonl", [GOOD, json.dumps(generic(chosen=3))])
    with pytest.raises(DataError) as info:
        load_preferences(path)
    assert (info.value.source, info.value.location, info.value.field) == (str(path), "line 2", "chosen")


def test_bad_sources(tmp_path):
    with pytest.raises(DataError, match=r"missing\.jsonl: no such file or folder"):
        load_preferences(tmp_path / "missing.jsonl")
    with pytest.raises(DataError, match=r"^not_here\.csv: no such file or folder"):  # not taken for a Hub id
        load_preferences("not_here.csv")
    (tmp_path / "prefs.csv").write_text("prompt,chosen,rejected\n")
    with pytest.raises(DataError, match=r"prefs\.csv: unsupported file type '\.csv'"):
        load_preferences(tmp_path / "prefs.csv")
    path = write_jsonl(tmp_path / "prefs.jsonl", [GOOD])
    with pytest.raises(DataError, match=r"prefs\.jsonl: a single file has no configs, splits"):
        load_preferences(path, split="train")


# ----------------------------------------------------------------------------------------------------
# Bad Parquet and datasets: the row index (0-based) instead of a line


def test_parquet_mistyped_column(tmp_path):
    path = write_parquet(tmp_path / "prefs.parquet", [generic(chosen=1), generic(chosen=2)])
    with pytest.raises(
        DataError, match=r"prefs\.parquet: row 0: field 'chosen': expected a string, got int \(1\)"
    ):
        load_preferences(path)


def test_parquet_null_and_blank_values(tmp_path):
    path = write_parquet(
        tmp_path / "prefs.parquet", [generic(), generic(rejected="x"), generic(rejected=None)]
    )
    with pytest.raises(
        DataError, match=r"prefs\.parquet: row 2: field 'rejected': expected a string, got null"
    ):
        load_preferences(path)
    path = write_parquet(tmp_path / "blank.parquet", [generic(), generic(prompt="   ")])
    with pytest.raises(DataError, match=r"blank\.parquet: row 1: field 'prompt': empty"):
        load_preferences(path)


def test_parquet_tldr_choice_and_duplicates(tmp_path):
    path = write_parquet(tmp_path / "c.parquet", [tldr(), tldr(), tldr(choice=5)])
    with pytest.raises(DataError, match=r"c\.parquet: row 2: field 'choice': must be 0 or 1"):
        load_preferences(path)
    path = write_parquet(tmp_path / "d.parquet", [generic(id="x"), generic(id="y"), generic(id="x")])
    with pytest.raises(
        DataError, match=r"d\.parquet: row 2: field 'id': duplicate pair id 'x' \(first at row 0\)"
    ):
        load_preferences(path)


def test_parquet_unknown_columns(tmp_path):
    path = write_parquet(tmp_path / "qa.parquet", [{"question": "q", "answer": "a"}])
    with pytest.raises(
        DataError, match=r"qa\.parquet: row 0: cannot detect the schema from fields \['answer', 'question'\]"
    ):
        load_preferences(path)


def test_parquet_unreadable_or_empty(tmp_path):
    (tmp_path / "junk.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match=r"junk\.parquet: not a readable Parquet file"):
        load_preferences(tmp_path / "junk.parquet")
    schema = pa.schema([("prompt", pa.string()), ("chosen", pa.string()), ("rejected", pa.string())])
    pq.write_table(schema.empty_table(), tmp_path / "none.parquet")
    with pytest.raises(DataError, match=r"none\.parquet: no preference pairs"):
        load_preferences(tmp_path / "none.parquet")


def test_folder_error_names_the_file_and_its_row(tmp_path):
    write_parquet(tmp_path / "f" / "data" / "train-00000-of-00002.parquet", [tldr(), tldr()])
    write_parquet(tmp_path / "f" / "data" / "train-00001-of-00002.parquet", [tldr(), tldr(choice=-1)])
    with pytest.raises(
        DataError, match=r"train-00001-of-00002\.parquet: row 1: field 'choice': must be 0 or 1"
    ):
        load_preferences(tmp_path / "f", split="train")


def test_saved_dataset_error_names_the_row(tmp_path):
    rows = [generic(id="a"), generic(id="b"), generic(id="c", chosen=" Go away.")]
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "saved_prefs"))
    with pytest.raises(DataError, match=r"saved_prefs: row 2: field 'rejected': identical to 'chosen'"):
        load_preferences(tmp_path / "saved_prefs")


# ----------------------------------------------------------------------------------------------------
# validate_pairs on its own


def test_validate_pairs_in_memory():
    good = PreferencePair("a", "p", "c", "r")
    assert validate_pairs([good]) == [good]
    with pytest.raises(
        DataError, match=r"pairs: item 1: field 'pair_id': duplicate pair id 'a' \(first at item 0\)"
    ):
        validate_pairs([good, PreferencePair("a", "p", "c2", "r2")])
    with pytest.raises(DataError, match=r"mine: item 0: field 'chosen': expected a string, got int"):
        validate_pairs([PreferencePair("a", "p", 1, "r")], source="mine")
    with pytest.raises(DataError, match=r"mine: no preference pairs"):
        validate_pairs([], source="mine")
    loc = Location("x.jsonl", "line", 9, fields=(("rejected", "summaries[0].text"),))
    with pytest.raises(
        DataError, match=re.escape("x.jsonl: line 9: field 'summaries[0].text': identical to 'chosen'")
    ):
        validate_pairs([(loc, PreferencePair("a", "p", "c", "c"))])


# ----------------------------------------------------------------------------------------------------
# The Hub at a pinned revision, and mirrors: a local folder stands in for each repository at its
# revision, behind the client calls perm makes (datasets.load_dataset, datasets.get_dataset_config_names,
# huggingface_hub.list_repo_files); the real datasets code then reads the folder.

SHA = "3f1c0f5a9d7e8b6c4a2f0e1d3c5b7a9e8f6d4c2b"


class LocalHub:
    """Dataset repositories at revisions, served from local folders; records what was asked for."""

    def __init__(self, monkeypatch, cache_dir):
        import huggingface_hub

        self.repos = {}
        self.loads = []
        self.cache_dir = str(cache_dir)
        real_load, real_configs = datasets.load_dataset, datasets.get_dataset_config_names

        def folder(repo_id, revision):
            if (repo_id, revision) not in self.repos:
                raise FileNotFoundError(f"Revision Not Found: {repo_id}@{revision}")
            return str(self.repos[repo_id, revision])

        def load_dataset(path, *, revision=None, **kwargs):
            self.loads.append((path, revision, kwargs))
            return real_load(folder(path, revision), cache_dir=self.cache_dir, **kwargs)

        def get_dataset_config_names(path, revision=None, **kwargs):
            return real_configs(folder(path, revision))

        def list_repo_files(repo_id, *, revision=None, repo_type=None, **kwargs):
            assert repo_type == "dataset"
            return files_under(folder(repo_id, revision))

        monkeypatch.setattr(datasets, "load_dataset", load_dataset)
        monkeypatch.setattr(datasets, "get_dataset_config_names", get_dataset_config_names)
        monkeypatch.setattr(huggingface_hub, "list_repo_files", list_repo_files)

    def add(self, repo_id, revision, folder):
        self.repos[repo_id, revision] = folder


@pytest.fixture
def local_hub(monkeypatch, tmp_path):
    return LocalHub(monkeypatch, tmp_path / "hf_cache")


def test_pinned_sha_of_the_parquet_conversion_reads_configs_as_folders(tmp_path, local_hub):
    """openai/summarize_from_feedback at a commit of refs/convert/parquet (the reproducible choice):
    <config>/<split>/0000.parquet, no declared configs, so the config is a data_dir, not name=."""
    root = tmp_path / "sff-at-sha"
    write_parquet(root / "comparisons" / "train" / "0000.parquet", [tldr(), tldr("t3_x")])
    write_parquet(root / "comparisons" / "validation" / "0000.parquet", [tldr("t3_val")])
    write_parquet(root / "axis" / "validation" / "0000.parquet",
                  [{"info": {"id": "a"}, "summary": {"text": "s"}, "axes": {"overall": 3}}])
    local_hub.add("openai/summarize_from_feedback", SHA, root)
    pairs = load_preferences("openai/summarize_from_feedback", name="comparisons", revision=SHA, split="validation")
    assert [p.pair_id for p in pairs] == ["t3_val/0"] and pairs[0].prompt == TLDR_PROMPT_TEXT
    assert local_hub.loads == [
        ("openai/summarize_from_feedback", SHA, {"split": "validation", "data_dir": "comparisons"})
    ]
    # the config defaults to comparisons for this dataset at any revision
    assert len(load_preferences("openai/summarize_from_feedback", revision=SHA, split="train")) == 2
    assert local_hub.loads[-1][2] == {"split": "train", "data_dir": "comparisons"}
    with pytest.raises(DataError, match=r"no config 'axes' \(has configs \['default'\] and data folders "
                                        r"\['axis', 'comparisons'\]\)"):
        load_preferences("openai/summarize_from_feedback", name="axes", revision=SHA, split="validation")


MIRROR = "vwxyzjn/summarize_from_feedback_oai_preprocessing_1706381144"


def _mirror(root):
    """The layout of vwxyzjn's mirrors: one config (default), data/<split>-*.parquet, CNN/DM moved to its
    own split validation_cnndm, token columns of their own."""
    extra = {"query_token": [1, 2, 3], "query": "...", "response0_token_len": 5}
    write_parquet(root / "data" / "train-00000-of-00001.parquet", [tldr(**extra), tldr("t3_b", **extra)])
    write_parquet(root / "data" / "validation-00000-of-00001.parquet", [tldr("t3_v", **extra)])
    write_parquet(root / "data" / "validation_cnndm-00000-of-00001.parquet", [tldr("cnn", batch="cnndm0", **extra)])
    return root


def test_hub_mirror_whose_only_config_is_default(tmp_path, local_hub):
    local_hub.add(MIRROR, None, _mirror(tmp_path / "mirror"))
    for name in ("comparisons", None):
        pairs = load_preferences(MIRROR, name=name, split="validation")
        assert [p.pair_id for p in pairs] == ["t3_v/0"]
    assert [kw for _, _, kw in local_hub.loads] == [{"split": "validation", "name": "default"},
                                                     {"split": "validation", "name": None}]
    with pytest.raises(DataError, match=re.escape(f"{MIRROR}: no config 'axis' (has configs ['default']); "
                                                  "set data.name to one of them")):
        load_preferences(MIRROR, name="axis", split="validation")
    assert len(local_hub.loads) == 2  # the unknown config was refused before loading anything


def test_local_mirror_whose_only_config_is_default(tmp_path):
    root = _mirror(tmp_path / "mirror")
    assert [p.pair_id for p in load_preferences(root, name="comparisons", split="train")] == ["t3_abc/0", "t3_b/1"]
    with pytest.raises(DataError, match=r"mirror: no config 'axis' \(has \['default'\]\)"):
        load_preferences(root, name="axis", split="train")


# ----------------------------------------------------------------------------------------------------
# bad_rows: error (default) or skip, with max_bad_fraction


def _good_tldr(n):
    return [tldr(f"t3_{i}", choice=i % 2, texts=(f" summary {i}", f" other {i}")) for i in range(n)]


def test_one_empty_row_among_good_ones_fails_by_default_and_skip_counts_it(tmp_path):
    rows = _good_tldr(1000)
    rows.insert(700, tldr("t3_bad", choice=1, texts=(" fine", "")))  # choice 1: the empty one is chosen
    path = write_parquet(tmp_path / "train" / "0000.parquet", rows)
    for kwargs in ({}, {"bad_rows": "error"}):
        with pytest.raises(DataError, match=r"0000\.parquet: row 700: field 'summaries\[1\]\.text': empty"):
            load_preferences(path, **kwargs)
    stats: dict = {}
    pairs = load_preferences(path, bad_rows="skip", stats=stats)  # 1 of 1001 rows: within the default 0.1 %
    assert len(pairs) == 1000 and "t3_bad/700" not in {p.pair_id for p in pairs}
    assert pairs[700].pair_id == "t3_700/701"  # later ids keep their positions
    assert stats == {"skipped_cnndm": 0, "skipped_empty_prompt": 0, "skipped_empty_chosen": 1,
                     "skipped_empty_rejected": 0, "skipped_chosen_equals_rejected": 0}


def test_skip_reasons_in_both_schemas(tmp_path):
    rows = [generic(id="a"), generic(id="b", prompt="  "), generic(id="c", rejected=None),
            generic(id="d", chosen="same", rejected=" same"), generic(id="e")]
    path = write_parquet(tmp_path / "g.parquet", rows)
    stats: dict = {}
    pairs = load_preferences(path, bad_rows="skip", max_bad_fraction=0.7, stats=stats)
    assert [p.pair_id for p in pairs] == ["a", "e"]
    assert {k: v for k, v in stats.items() if v} == {"skipped_empty_prompt": 1, "skipped_empty_rejected": 1,
                                                     "skipped_chosen_equals_rejected": 1}
    rows = [tldr(), tldr("t3_p", info={"id": "t3_p", "post": " ", "title": "t", "subreddit": "s"}),
            tldr("t3_s", texts=(" same", "same")), tldr("t3_n", choice=0, texts=(None, " b"))]
    stats = {}
    pairs = load_preferences(write_jsonl(tmp_path / "t.jsonl", rows), bad_rows="skip", max_bad_fraction=0.75,
                             stats=stats)
    assert [p.pair_id for p in pairs] == ["t3_abc/0"]
    assert {k: v for k, v in stats.items() if v} == {"skipped_empty_prompt": 1, "skipped_empty_chosen": 1,
                                                     "skipped_chosen_equals_rejected": 1}


def test_skip_fails_when_too_many_rows_are_bad(tmp_path):
    rows = _good_tldr(1000)
    rows.insert(10, tldr("t3_bad1", texts=("", " b")))
    rows.insert(500, tldr("t3_bad2", texts=(" same", " same")))
    path = write_parquet(tmp_path / "train" / "0000.parquet", rows)
    with pytest.raises(DataError) as info:
        load_preferences(path, bad_rows="skip")
    message = str(info.value)
    assert message.startswith(f"{path}: 2 of 1002 rows are bad (0.200%: 1 empty rejected, 1 chosen equals rejected)")
    assert "more than max_bad_fraction = 0.001" in message
    assert "the first: " in message and "row 10: field 'summaries[0].text': empty" in message
    assert len(load_preferences(path, bad_rows="skip", max_bad_fraction=0.002)) == 1000
    # every row bad: the counts, not "no preference pairs"
    with pytest.raises(DataError, match=r"1 of 1 rows are bad \(100\.000%: 1 empty chosen\)"):
        load_preferences(write_jsonl(tmp_path / "one.jsonl", [generic(chosen="")]), bad_rows="skip")


def test_skip_still_fails_on_other_problems(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [generic(id="a"), generic(id="b", chosen=3)])
    with pytest.raises(DataError, match=r"p\.jsonl: line 2: field 'chosen': expected a string, got int"):
        load_preferences(path, bad_rows="skip", max_bad_fraction=1.0)
    path = write_jsonl(tmp_path / "d.jsonl", [generic(id="a"), generic(id="a", chosen="x")])
    with pytest.raises(DataError, match=r"line 2: field 'id': duplicate pair id 'a'"):
        load_preferences(path, bad_rows="skip", max_bad_fraction=1.0)
    with pytest.raises(ValueError, match="bad_rows must be 'error' or 'skip'"):
        load_preferences(path, bad_rows="drop")
    with pytest.raises(ValueError, match="max_bad_fraction"):
        load_preferences(path, bad_rows="skip", max_bad_fraction=1.5)
