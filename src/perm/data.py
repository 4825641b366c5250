"""Load and validate external preference data: (prompt, chosen, rejected) pairs.

Sources (``load_preferences(source, ...)``)
-------------------------------------------
- a **JSONL** file (``.jsonl``, ``.ndjson``, ``.json``; one JSON object per line, streamed line by line;
  blank lines are skipped);
- a **Parquet** file (``.parquet``, ``.pq``; read in record batches, only the columns a schema can use);
- a local **Hugging Face dataset directory**: either one written by ``save_to_disk`` (read with
  ``datasets.load_from_disk``), or a folder of Parquet / JSONL data files in the layouts ``datasets``
  understands (``data/train-00000-of-00001.parquet``, ``train/0000.parquet``, a README ``configs:``
  section, ...). The folder's files and splits are resolved by ``datasets`` and then each file is read
  by the readers above, so an error names the exact file and its line or row. ``name`` picks a config:
  a sub-folder of that name (the layout of the Hub's Parquet conversion, ``<config>/<split>/0000.parquet``)
  or a config declared in the README; ``name="comparisons"`` on a folder whose only config is ``default``
  (a mirror of the comparisons, such as ``vwxyzjn/summarize_from_feedback_oai_preprocessing_*``) reads
  that one;
- a **Hub id** (when online): ``datasets.load_dataset(id, name, split=split, revision=revision)``. For
  ``openai/summarize_from_feedback``, a script dataset that current ``datasets`` refuses to run, the
  loader uses its Parquet conversion (``revision="refs/convert/parquet"`` unless a revision, e.g. that
  branch's commit sha, is given; config ``comparisons`` unless ``name`` says otherwise). The conversion
  stores configs as folders and declares none, so there the config is passed as ``data_dir``: at the
  branch by its name, and at a pinned commit sha (or any revision) when ``datasets`` finds only the
  ``default`` config and the repository has a folder named ``name`` (``huggingface_hub.list_repo_files``).
  A name that is neither a declared config nor such a folder is an error listing the configs there are,
  except ``comparisons`` on a mirror whose only config is ``default``, which reads it. Hub downloads go to
  the usual Hugging Face cache; nothing else is ever written.

A source with several splits needs ``split=``, unless it has exactly one.

Schemas (``schema="auto"`` detects from the fields of the first record; or force ``"generic"``/``"tldr"``)
----------------------------------------------------------------------------------------------------
- ``generic``: ``{prompt, chosen, rejected}`` strings and an optional ``id`` (string or integer).
- ``tldr``: a comparison of OpenAI's *summarize_from_feedback* (``comparisons`` config)::

      {info: {id, post, title, subreddit, ...}, summaries: [{text, policy, note}, {...}],
       choice, worker, batch, split, extra: {confidence}}

  becomes the TL;DR prompt (``TLDR_PROMPT``, the format of OpenAI's preprocessing as used by the
  ``cleanrl``/TRL TL;DR SFT policies, blank lines between fields; post, title and subreddit stripped of
  outer whitespace)::

      SUBREDDIT: r/{subreddit}

      TITLE: {title}

      POST: {post}

      TL;DR:

  with ``chosen = " " + summaries[choice].text.strip()`` and
  ``rejected = " " + summaries[1 - choice].text.strip()``: exactly one space after ``TL;DR:``, whether or
  not the stored text starts with one (OpenAI's policy samples do, so a plain ``" " + text`` would give
  two). The CNN/DM comparisons that OpenAI's ``validation`` split carries after its Reddit rows (``batch``
  ``batch0_cnndm``, ``cnndm0`` or ``cnndm2``, or ``info.post = null`` with an ``info.article``) are not
  TL;DR comparisons: they are skipped, and counted (``stats["skipped_cnndm"]``), not errors. A row without
  a post and without an article is an error.

Pair ids: an explicit top-level ``id`` when present; otherwise the record's position in its source,
counted from 0 over the non-blank records (all files of a split in order, as ``datasets`` orders them),
so the same data gives the same ids as JSONL, Parquet or a ``datasets`` dataset. ``generic`` uses the
bare position (``"17"``); ``tldr`` prefixes the post id (``"t3_abc123/17"``), so that a post compared
several times (by several workers, or different summary pairs) yields distinct pairs that can still be
grouped by post. Only repeated *ids* are duplicates; repeated content is not.

Errors
------
Bad input raises exactly one ``DataError`` (a ``ValueError``), the first in source order, with a message
``<source>: <line N | row N>: field '<field>': <problem>``. JSONL positions are 1-based line numbers;
Parquet and ``datasets`` positions are 0-based row indices (``df.iloc[N]``, ``ds[N]``), counted within
the named file (for a folder of files) or split. Nested fields are written as paths
(``info.post``, ``summaries[1].text``). ``limit`` stops reading after that many pairs, so errors further
on are not seen.

``bad_rows="skip"`` (a large real dataset: one empty field should not abort a 179 k-row import) drops the
rows whose prompt, chosen or rejected text is null or blank (for tldr: ``info.post``, ``info.title``,
``info.subreddit`` or a summary's ``text``) or whose chosen equals its rejected, and counts them by reason
in ``stats`` (``skipped_empty_prompt``, ``skipped_empty_chosen``, ``skipped_empty_rejected``,
``skipped_chosen_equals_rejected``); ids of the other rows are unchanged. More than ``max_bad_fraction``
(default 0.001) of the rows dropped is a DataError with the counts and the first bad row. Every other
problem is an error in either mode.
"""

from __future__ import annotations

import json
import re
from collections.abc import Generator, Iterable, Iterator, Mapping
from contextlib import closing
from dataclasses import dataclass, replace
from itertools import islice
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

SCHEMAS = ("generic", "tldr")
TLDR_PROMPT = "SUBREDDIT: r/{subreddit}\n\nTITLE: {title}\n\nPOST: {post}\n\nTL;DR:"
"""The TL;DR prompt built from a summarize_from_feedback post; the summary follows after one space."""

OPENAI_TLDR_ID = "openai/summarize_from_feedback"
PARQUET_CONVERSION = "refs/convert/parquet"

_JSONL_SUFFIXES = {".jsonl", ".ndjson", ".json"}
_PARQUET_SUFFIXES = {".parquet", ".pq"}
# A missing path with one of these endings is a mistyped file name, not a Hub id.
_FILE_SUFFIXES = (
    _JSONL_SUFFIXES | _PARQUET_SUFFIXES | {".csv", ".tsv", ".txt", ".arrow", ".gz", ".zip", ".zst"}
)
_GENERIC_FIELDS = ("prompt", "chosen", "rejected")
_TLDR_FIELDS = ("info", "summaries", "choice")
BAD_ROWS = ("error", "skip")
BAD_ROW_REASONS = ("empty_prompt", "empty_chosen", "empty_rejected", "chosen_equals_rejected")
"""What ``bad_rows="skip"`` drops a row for (and counts as ``stats["skipped_<reason>"]``)."""
MIRROR_CONFIG_ALIASES = frozenset({"comparisons"})
"""Config names that a source declaring only the ``default`` config serves with it: a mirror of
summarize_from_feedback's comparisons (vwxyzjn/summarize_from_feedback_oai_preprocessing_*) has only
``default``."""
CNNDM_BATCHES = frozenset({"batch0_cnndm", "cnndm0", "cnndm2"})
"""summarize_from_feedback batches of CNN/DM article comparisons (validation split only)."""
# Columns read from Arrow sources: everything either schema uses, and nothing else (a mirror may carry
# large token columns).
_USED_COLUMNS = ("id", "batch", *_GENERIC_FIELDS, *_TLDR_FIELDS)
_BATCH_ROWS = 1024
# A reader yields (where, record) in source order; a generator, so that an early stop can close its file.
_Records = Generator[tuple["Location", Any], None, None]
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


class DataError(ValueError):
    """Unusable input data. The message names the source, the line (JSONL, 1-based) or row (Parquet and
    datasets, 0-based) and the field: ``prefs.jsonl: line 3: field 'chosen': expected a string, got int``.
    The parts are also kept as attributes (``None`` where they do not apply). ``reason`` is set for the
    problems that ``bad_rows="skip"`` may drop a row for (one of ``BAD_ROW_REASONS``), else ``None``."""

    def __init__(
        self,
        message: str,
        *,
        source: str | None = None,
        location: str | None = None,
        field: str | None = None,
        reason: str | None = None,
    ):
        super().__init__(message)
        self.source = source
        self.location = location
        self.field = field
        self.reason = reason


class _NoPairs(DataError):
    """A source with no usable pairs at all."""


@dataclass(frozen=True)
class PreferencePair:
    """One human (or synthetic) preference: ``chosen`` was preferred to ``rejected`` as a reply to
    ``prompt``. ``chosen`` and ``rejected`` are completions appended to the prompt verbatim."""

    pair_id: str
    prompt: str
    chosen: str
    rejected: str


@dataclass(frozen=True)
class Location:
    """Where a record sits in its source, for error messages: ``str(loc) == "prefs.jsonl: line 3"``.

    unit: ``"line"`` (JSONL, index 1-based), ``"row"`` (Parquet / datasets, 0-based) or ``"item"``
    (pairs in memory, 0-based). fields: ``(pair attribute, source field)`` for attributes read from a
    differently named field, e.g. ``("chosen", "summaries[1].text")``.
    """

    source: str
    unit: str = "item"
    index: int = 0
    fields: tuple[tuple[str, str], ...] = ()

    def __str__(self) -> str:
        return f"{self.source}: {self.unit} {self.index}"

    def field_name(self, attribute: str) -> str:
        return dict(self.fields).get(attribute, attribute)

    def error(self, field: str | None, problem: str, reason: str | None = None) -> DataError:
        where = f"{self.unit} {self.index}"
        head = f"{self.source}: {where}: " + (f"field '{field}': " if field else "")
        return DataError(head + problem, source=self.source, location=where, field=field, reason=reason)


# ----------------------------------------------------------------------------------------------------
# Field checks, shared by both schemas and by validate_pairs


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    text = repr(value)
    return f"{type(value).__name__} ({text if len(text) <= 40 else text[:37] + '...'})"


def _get(record: Mapping[str, Any], key: str, field: str, loc: Location) -> Any:
    if key not in record:
        raise loc.error(field, "missing")
    return record[key]


def _text(value: Any, field: str, loc: Location, attribute: str | None = None) -> str:
    """A non-blank string, or the DataError that says why not. With `attribute` (the pair's ``prompt``,
    ``chosen`` or ``rejected`` that the field makes), a null or blank value is a bad row that
    ``bad_rows="skip"`` may drop (reason ``empty_<attribute>``); a value of another type never is."""
    reason = f"empty_{attribute}" if attribute is not None else None
    if not isinstance(value, str):
        raise loc.error(field, f"expected a string, got {_describe(value)}",
                        reason if value is None else None)
    if not value.strip():
        raise loc.error(field, "empty or whitespace-only text", reason)
    return value


def _index(value: Any, field: str, loc: Location) -> int:
    if isinstance(value, bool) or not isinstance(value, int):  # bool is an int subclass, never an index
        raise loc.error(field, f"expected an integer, got {_describe(value)}")
    return value


# ----------------------------------------------------------------------------------------------------
# Schemas: one record (a dict) -> a pair and the fields it was read from


def detect_schema(fields: Iterable[str]) -> str | None:
    """``"generic"`` or ``"tldr"`` from a record's top-level field names; ``None`` if neither fits.

    A record with all of ``info``, ``summaries`` and ``choice`` is ``tldr`` whatever else it carries (mirrors
    such as vwxyzjn's add ``chosen``/``rejected``/``prompt`` columns of their own formatting)."""
    names = set(fields)
    if names >= set(_TLDR_FIELDS):
        return "tldr"
    generic = len(names & set(_GENERIC_FIELDS))
    tldr = len(names & set(_TLDR_FIELDS))
    if generic == tldr:
        return None
    return "generic" if generic > tldr else "tldr"


def _explicit_id(record: Mapping[str, Any], loc: Location) -> str | None:
    value = record.get("id")
    if value is None:  # absent, or a null in a column that other rows fill
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise loc.error("id", f"expected a string or an integer, got {_describe(value)}")
    if isinstance(value, str) and not value.strip():
        raise loc.error("id", "empty or whitespace-only text")
    return str(value)


def _generic_pair(record: Mapping[str, Any], loc: Location, position: int) -> tuple[Location, PreferencePair]:
    prompt, chosen, rejected = (_text(_get(record, f, f, loc), f, loc, f) for f in _GENERIC_FIELDS)
    pair_id = _explicit_id(record, loc)
    pair = PreferencePair(pair_id if pair_id is not None else str(position), prompt, chosen, rejected)
    return replace(loc, fields=(("pair_id", "id"),)), pair


def tldr_prompt(subreddit: str, title: str, post: str) -> str:
    """The TL;DR prompt (``TLDR_PROMPT``) for a Reddit post; fields stripped of outer whitespace."""
    return TLDR_PROMPT.format(subreddit=subreddit.strip(), title=title.strip(), post=post.strip())


def _tldr_pair(record: Mapping[str, Any], loc: Location, position: int) -> tuple[Location, PreferencePair]:
    info = _get(record, "info", "info", loc)
    if not isinstance(info, Mapping):
        raise loc.error("info", f"expected an object, got {_describe(info)}")
    # CNN/DM rows never get here
    post = _text(_get(info, "post", "info.post", loc), "info.post", loc, "prompt")
    title = _text(_get(info, "title", "info.title", loc), "info.title", loc, "prompt")
    subreddit = _text(_get(info, "subreddit", "info.subreddit", loc), "info.subreddit", loc, "prompt")

    summaries = _get(record, "summaries", "summaries", loc)
    if not isinstance(summaries, list | tuple):
        raise loc.error("summaries", f"expected a list, got {_describe(summaries)}")
    if len(summaries) != 2:
        raise loc.error("summaries", f"expected 2 summaries, got {len(summaries)}")
    # which summary becomes chosen, for naming a bad row's reason (a bad choice is reported further on)
    picked = record.get("choice")
    roles = {picked: "chosen", 1 - picked: "rejected"} if type(picked) is int and picked in (0, 1) else {}
    texts = []
    for i, summary in enumerate(summaries):
        if not isinstance(summary, Mapping):
            raise loc.error(f"summaries[{i}]", f"expected an object, got {_describe(summary)}")
        field = f"summaries[{i}].text"
        texts.append(_text(_get(summary, "text", field, loc), field, loc, roles.get(i)))

    choice = _index(_get(record, "choice", "choice", loc), "choice", loc)
    if choice not in (0, 1):
        raise loc.error("choice", f"must be 0 or 1 (an index into summaries), got {choice}")

    pair_id = _explicit_id(record, loc)
    if pair_id is None:
        info_id = _get(info, "id", "info.id", loc)
        if isinstance(info_id, bool) or not isinstance(info_id, str | int):
            raise loc.error("info.id", f"expected a string or an integer, got {_describe(info_id)}")
        pair_id = f"{info_id}/{position}"
    pair = PreferencePair(
        pair_id=pair_id,
        prompt=tldr_prompt(subreddit, title, post),
        chosen=" " + texts[choice].strip(),
        rejected=" " + texts[1 - choice].strip(),
    )
    fields = (
        ("pair_id", "id" if "id" in record and record["id"] is not None else "info.id"),
        ("prompt", "info"),
        ("chosen", f"summaries[{choice}].text"),
        ("rejected", f"summaries[{1 - choice}].text"),
    )
    return replace(loc, fields=fields), pair


_CONVERTERS = {"generic": _generic_pair, "tldr": _tldr_pair}
_JSON_TYPES = {
    list: "an array",
    str: "a string",
    int: "a number",
    float: "a number",
    bool: "a boolean",
    type(None): "null",
}


def _is_cnndm(record: Mapping[str, Any]) -> bool:
    """A summarize_from_feedback comparison of a CNN/DM article rather than a Reddit post."""
    if record.get("batch") in CNNDM_BATCHES:
        return True
    info = record.get("info")
    return isinstance(info, Mapping) and info.get("post") is None and info.get("article") is not None


class _BadRows:
    """``bad_rows="skip"``: counts the rows dropped, by reason, and the rows seen; keeps the first error."""

    def __init__(self) -> None:
        self.counts = dict.fromkeys(BAD_ROW_REASONS, 0)
        self.rows = 0
        self.first: DataError | None = None

    @property
    def bad(self) -> int:
        return sum(self.counts.values())

    def drop(self, error: DataError) -> None:
        self.counts[error.reason] += 1
        self.first = self.first or error

    def finish(self, source: str, stats: dict, max_bad_fraction: float) -> None:
        """Record the counts in `stats` (``skipped_<reason>``); fail if too large a fraction was bad."""
        for reason, n in self.counts.items():
            stats[f"skipped_{reason}"] = stats.get(f"skipped_{reason}", 0) + n
        if self.bad and self.bad > max_bad_fraction * self.rows:
            reasons = ", ".join(f"{n} {r.replace('_', ' ')}" for r, n in self.counts.items() if n)
            raise DataError(
                f"{source}: {self.bad} of {self.rows} rows are bad ({self.bad / self.rows:.3%}: {reasons}), "
                f"more than max_bad_fraction = {max_bad_fraction:g} ({max_bad_fraction:.3%}) allows; the "
                f"first: {self.first}",
                source=source,
            )


def _to_pairs(
    records: Iterable[tuple[Location, Any]], schema: str, stats: dict | None = None,
    bad: _BadRows | None = None
) -> Iterator[tuple[Location, PreferencePair]]:
    """Records (JSON objects or Arrow rows as dicts) -> located pairs, detecting the schema on the first.

    tldr: CNN/DM comparisons are skipped and counted in ``stats["skipped_cnndm"]``; positions (and so the
    ids of later pairs) still count them, so ids do not depend on the skipping. With `bad` (``bad_rows=
    "skip"``), rows with an empty prompt, chosen or rejected, or with chosen equal to rejected, are dropped
    and counted there instead of raising; positions count them too."""
    stats = {} if stats is None else stats
    stats.setdefault("skipped_cnndm", 0)
    for position, (loc, record) in enumerate(records):
        if not isinstance(record, Mapping):
            kind = _JSON_TYPES.get(type(record), type(record).__name__)
            raise loc.error(None, f"expected a JSON object, got {kind} (JSON Lines: one object per line)")
        if schema == "auto":
            schema = detect_schema(record) or ""
            if not schema:
                raise loc.error(
                    None,
                    f"cannot detect the schema from fields {sorted(record)}: "
                    "expected {prompt, chosen, rejected} "
                    "or summarize_from_feedback {info, summaries, choice}; pass schema='generic' or 'tldr'",
                )
        if schema == "tldr" and _is_cnndm(record):
            stats["skipped_cnndm"] += 1
            continue
        if bad is None:
            yield _CONVERTERS[schema](record, loc, position)
            continue
        bad.rows += 1
        try:
            located, pair = _CONVERTERS[schema](record, loc, position)
        except DataError as exc:
            if exc.reason is None:
                raise
            bad.drop(exc)
            continue
        if pair.chosen.strip() == pair.rejected.strip():
            bad.drop(_identical(located))
            continue
        yield located, pair


def _identical(loc: Location) -> DataError:
    return loc.error(loc.field_name("rejected"), f"identical to '{loc.field_name('chosen')}'",
                     "chosen_equals_rejected")


# ----------------------------------------------------------------------------------------------------
# Validation: the checks every source shares, written once


def validate_pairs(
    pairs: Iterable[PreferencePair | tuple[Location, PreferencePair]], *, source: str = "pairs"
) -> list[PreferencePair]:
    """Check pairs and return them as a list; raise one DataError at the first problem.

    Items are pairs (located as ``<source>: item <i>``) or ``(Location, pair)`` as the loaders make them.
    Checks: every text is a non-blank string, ``chosen`` differs from ``rejected`` (ignoring outer
    whitespace), pair ids are non-blank strings and unique, and there is at least one pair.
    """
    out: list[PreferencePair] = []
    first_seen: dict[str, Location] = {}
    for i, item in enumerate(pairs):
        loc, pair = (Location(source, "item", i), item) if isinstance(item, PreferencePair) else item
        for attribute in ("pair_id", "prompt", "chosen", "rejected"):
            _text(getattr(pair, attribute), loc.field_name(attribute), loc)
        if pair.chosen.strip() == pair.rejected.strip():
            raise _identical(loc)
        if pair.pair_id in first_seen:
            first = first_seen[pair.pair_id]
            at = f"{first.unit} {first.index}" + (f" of {first.source}" if first.source != loc.source else "")
            raise loc.error(loc.field_name("pair_id"), f"duplicate pair id '{pair.pair_id}' (first at {at})")
        first_seen[pair.pair_id] = loc
        out.append(pair)
    if not out:
        raise _NoPairs(f"{source}: no preference pairs (empty)", source=source)
    return out


# ----------------------------------------------------------------------------------------------------
# Readers: a source -> (Location, record) in source order


def _read_jsonl(path: Path, label: str) -> _Records:
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            loc = Location(label, "line", number)
            try:
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                raise loc.error(
                    None, f"not valid UTF-8 (byte 0x{raw[exc.start]:02x} at column {exc.start + 1})"
                ) from exc
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise loc.error(None, f"invalid JSON: {exc.msg} (column {exc.colno})") from exc
            yield loc, record


def _arrow_rows(label: str, batches: Iterable[pa.RecordBatch | pa.Table]) -> _Records:
    row = 0
    try:
        for batch in batches:
            for record in batch.to_pylist():
                yield Location(label, "row", row), record
                row += 1
    except pa.ArrowException as exc:
        raise DataError(
            f"{label}: row {row}: cannot read ({exc})", source=label, location=f"row {row}"
        ) from exc


def _used(columns: list[str]) -> list[str]:
    """The columns worth reading; all of them when none is known, so the schema error can list them."""
    return [c for c in columns if c in _USED_COLUMNS] or list(columns)


def _read_parquet(path: Path, label: str) -> _Records:
    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"{label}: not a readable Parquet file ({exc})", source=label) from exc
    with parquet:
        columns = _used(parquet.schema_arrow.names)
        yield from _arrow_rows(label, parquet.iter_batches(batch_size=_BATCH_ROWS, columns=columns))


def _read_file(path: Path, label: str) -> _Records:
    suffix = path.suffix.lower()
    if suffix in _JSONL_SUFFIXES:
        return _read_jsonl(path, label)
    if suffix in _PARQUET_SUFFIXES:
        return _read_parquet(path, label)
    raise DataError(
        f"{label}: unsupported file type '{suffix}' (expected .jsonl, .json, .ndjson, .parquet or .pq)",
        source=label,
    )


def _one_split(splits: Mapping[str, Any], split: str | None, label: str) -> tuple[str, Any]:
    names = [str(s) for s in splits]
    if split is None:
        if len(names) != 1:
            raise DataError(f"{label}: has splits {names}; choose one with split=", source=label)
        split = names[0]
    if split not in names:
        raise DataError(f"{label}: no split '{split}' (has {names})", source=label)
    return split, splits[next(s for s in splits if str(s) == split)]


def _dataset_rows(dataset: Any, label: str) -> _Records:
    """Rows of a ``datasets.Dataset``, only the columns a schema can use, as Arrow batches."""
    dataset = dataset.select_columns(_used(dataset.column_names))
    return _arrow_rows(label, dataset.with_format("arrow").iter(batch_size=_BATCH_ROWS))


def _read_saved_dataset(path: Path, split: str | None) -> _Records:
    import datasets

    try:
        saved = datasets.load_from_disk(str(path))
    except Exception as exc:  # a damaged save: any error from datasets is the data's fault here
        raise DataError(
            f"{path}: cannot load the saved dataset ({type(exc).__name__}: {exc})", source=str(path)
        ) from exc
    if isinstance(saved, datasets.DatasetDict):
        split, saved = _one_split(saved, split, str(path))
    elif split is not None and saved.split is not None and str(saved.split) != split:
        raise DataError(f"{path}: holds split '{saved.split}', not '{split}'", source=str(path))
    return _dataset_rows(saved, f"{path} [{split}]" if split else str(path))


def _read_data_dir(path: Path, name: str | None, split: str | None) -> _Records:
    """A folder of data files: ``datasets`` resolves configs, splits and files (writing nothing), then
    each file is read here so that errors name it."""
    from datasets.load import dataset_module_factory

    data_dir = name if name is not None and (path / name).is_dir() else None
    try:
        module = dataset_module_factory(str(path), data_dir=data_dir)
    except Exception as exc:  # no data files, an unreadable README, ...: all about this folder
        raise DataError(
            f"{path}: not a dataset folder ({type(exc).__name__}: {exc})", source=str(path)
        ) from exc
    configs = module.builder_configs_parameters.builder_configs or []
    if name is not None and data_dir is None:
        config = next((c for c in configs if c.name == name), None)
        if config is None and name in MIRROR_CONFIG_ALIASES and [c.name for c in configs] == ["default"]:
            config = configs[0]  # a mirror whose one config is `default`
        if config is None:
            raise DataError(f"{path}: no config '{name}' (has {[c.name for c in configs]})", source=str(path))
        data_files = config.data_files
    elif len(configs) > 1:
        default = module.builder_configs_parameters.default_config_name
        config = next((c for c in configs if c.name == default), None)
        if config is None:
            raise DataError(
                f"{path}: has configs {[c.name for c in configs]}; choose one with name=", source=str(path)
            )
        data_files = config.data_files
    else:
        data_files = configs[0].data_files if configs else module.builder_kwargs["data_files"]
    split, files = _one_split(data_files, split, str(path))
    if not module.module_path.endswith((".parquet", ".json")):
        kind = module.module_path.rsplit(".", 1)[-1]
        raise DataError(
            f"{path}: split '{split}' holds {kind} files; expected Parquet or JSON Lines", source=str(path)
        )
    for file in files:
        yield from _read_file(Path(file), str(file))


def _hub_failure(dataset_id: str, exc: Exception) -> DataError:
    return DataError(
        f"{dataset_id}: no such local file or folder, and loading it from the Hugging Face Hub failed "
        f"({type(exc).__name__}: {exc})",
        source=dataset_id,
    )


def _hub_config(dataset_id: str, name: str | None, revision: str | None) -> dict[str, str | None]:
    """How ``load_dataset`` gets config `name` of a Hub dataset at `revision`: ``{"name": ...}`` or
    ``{"data_dir": ...}``.

    The Parquet conversion (``refs/convert/parquet``, or a commit of it pinned by sha) keeps each config in
    a folder ``<config>/<split>/*.parquet`` and declares none, so ``datasets`` sees only ``default`` there
    and the config is a ``data_dir``. Otherwise a declared config is passed by name; a source whose only
    config is ``default`` serves the names in ``MIRROR_CONFIG_ALIASES`` (a mirror of the comparisons) with
    it; any other name is an error listing the configs (and config folders) that exist."""
    import datasets

    if revision == PARQUET_CONVERSION:
        return {"data_dir": name} if name else {"name": None}
    if name is None:  # datasets takes the default or only config, or says which there are
        return {"name": None}
    try:
        configs = list(datasets.get_dataset_config_names(dataset_id, revision=revision))
    except Exception as exc:  # offline, unknown id or revision, a script dataset: all about this source
        raise _hub_failure(dataset_id, exc) from exc
    if name in configs:
        return {"name": name}
    folders: list[str] = []
    if configs == ["default"]:
        import huggingface_hub

        try:
            files = huggingface_hub.list_repo_files(dataset_id, repo_type="dataset", revision=revision)
        except Exception as exc:
            raise _hub_failure(dataset_id, exc) from exc
        data = tuple(_PARQUET_SUFFIXES | _JSONL_SUFFIXES)
        # the conversion's layout: <config>/<split>/<file> (a mirror's data/<split>-*.parquet is not a config)
        folders = sorted({f.split("/", 1)[0] for f in files
                          if f.count("/") >= 2 and f.lower().endswith(data)})
        if name in folders:
            return {"data_dir": name}
        if name in MIRROR_CONFIG_ALIASES:
            return {"name": "default"}
    at = f" at {revision}" if revision else ""
    has = f"has configs {configs}" + (f" and data folders {folders}" if folders else "")
    raise DataError(f"{dataset_id}{at}: no config '{name}' ({has}); set data.name to one of them",
                    source=dataset_id)


def _read_hub(dataset_id: str, name: str | None, split: str | None, revision: str | None) -> _Records:
    import datasets

    if dataset_id == OPENAI_TLDR_ID:  # a script dataset: only its Parquet conversion loads
        revision, name = revision or PARQUET_CONVERSION, name or "comparisons"
    kwargs = _hub_config(dataset_id, name, revision)
    config = next(iter(kwargs.values()))
    label = (
        f"{dataset_id} ({', '.join(str(x) for x in (config, revision) if x)})"
        if config or revision
        else dataset_id
    )
    try:
        loaded = datasets.load_dataset(dataset_id, split=split, revision=revision, **kwargs)
    except Exception as exc:  # offline, unknown id / config / split, gated: say so, as a DataError
        raise _hub_failure(dataset_id, exc) from exc
    if isinstance(loaded, datasets.DatasetDict):
        split, loaded = _one_split(loaded, split, label)
    return _dataset_rows(loaded, f"{label} [{split}]")


def _records(source: str | Path, name: str | None, split: str | None, revision: str | None) -> _Records:
    path = Path(source).expanduser()
    label = str(source)
    if path.is_file():
        if name is not None or split is not None or revision is not None:
            raise DataError(
                f"{label}: a single file has no configs, splits or revisions (name, split, revision)",
                source=label,
            )
        return _read_file(path, label)
    if path.is_dir():
        if revision is not None:
            raise DataError(f"{label}: a local folder has no revisions", source=label)
        if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
            return _read_saved_dataset(path, split)
        return _read_data_dir(path, name, split)
    if isinstance(source, Path) or path.suffix.lower() in _FILE_SUFFIXES or not _HUB_ID.match(label):
        raise DataError(f"{label}: no such file or folder", source=label)
    return _read_hub(label, name, split, revision)


def load_preferences(
    source: str | Path,
    *,
    schema: str = "auto",
    split: str | None = None,
    name: str | None = None,
    revision: str | None = None,
    limit: int | None = None,
    stats: dict | None = None,
    bad_rows: str = "error",
    max_bad_fraction: float = 0.001,
) -> list[PreferencePair]:
    """Read preference pairs from a JSONL / Parquet file, a local dataset folder or a Hub id.

    schema: ``"auto"``, ``"generic"`` ({prompt, chosen, rejected}) or ``"tldr"`` (summarize_from_feedback).
    split / name / revision: for dataset folders and Hub ids (a split, a config, a Hub revision).
    limit: read only the first ``limit`` pairs (and check only those).
    stats: a dict to receive counts of what was read but not used (``skipped_cnndm``; with
    ``bad_rows="skip"`` also ``skipped_<reason>`` for each of ``BAD_ROW_REASONS``).
    bad_rows: ``"error"`` (default): the first bad record raises. ``"skip"``: a row whose prompt, chosen or
    rejected text is empty (null or blank) or whose chosen equals its rejected is dropped and counted;
    other problems (wrong types, missing fields, duplicate ids, ...) still raise.
    max_bad_fraction: with ``"skip"``, more than this fraction of the rows read being dropped is a
    DataError naming the source, the counts and the first bad row.
    Returns the pairs in source order; raises one DataError (naming source, line or row, and field) on
    the first bad record. See the module docstring for the formats, the TL;DR prompt and pair ids.
    """
    if schema not in ("auto", *SCHEMAS):
        raise ValueError(f"schema must be 'auto', 'generic' or 'tldr', got {schema!r}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a positive integer or None, got {limit!r}")
    if bad_rows not in BAD_ROWS:
        raise ValueError(f"bad_rows must be 'error' or 'skip', got {bad_rows!r}")
    if isinstance(max_bad_fraction, bool) or not 0 <= max_bad_fraction <= 1:
        raise ValueError(f"max_bad_fraction must be in [0, 1], got {max_bad_fraction!r}")
    label = str(source)
    bad = _BadRows() if bad_rows == "skip" else None
    stats = {} if stats is None else stats
    # closing(): with a limit, the reader stops mid-file; close its file now, not at garbage collection.
    with closing(_records(source, name, split, revision)) as records:
        located = islice(_to_pairs(records, schema, stats, bad), limit)
        if bad is None:
            return validate_pairs(located, source=label)
        try:
            pairs = validate_pairs(located, source=label)
        except _NoPairs:  # every row dropped: the counts say more than "empty"
            bad.finish(label, stats, max_bad_fraction)
            raise
    bad.finish(label, stats, max_bad_fraction)
    return pairs


def preferences_to_table(pairs: Iterable[PreferencePair]) -> pa.Table:
    """Pairs as an Arrow table with string columns ``pair_id, prompt, chosen, rejected``."""
    pairs = list(pairs)
    columns = ("pair_id", "prompt", "chosen", "rejected")
    return pa.table(
        {c: pa.array([getattr(p, c) for p in pairs], type=pa.string()) for c in columns},
    )


__all__ = [
    "DataError",
    "Location",
    "OPENAI_TLDR_ID",
    "PreferencePair",
    "TLDR_PROMPT",
    "detect_schema",
    "load_preferences",
    "preferences_to_table",
    "tldr_prompt",
    "validate_pairs",
]
