"""The reward tensor (DESIGN step 5), the hinge of the system: every analysis reads only this.

``rewards.parquet`` (long: ``prompt_id, sample_id, model_id, reward, is_reference``) and ``models.parquet``
(``model_id, role, pretrain_id, finetune_seed``, and optionally ``finetune_seed_scope``: how its finetune
seeds relate to its pretrains, ``shared`` = crossed or ``per_rm`` = nested, one value for every RM row;
``ensemble``: the comma-separated names of the named ensembles a model belongs to; ``kind``: what a model is,
e.g. ``lora``). Roles: ``rm`` (a reward model of the seed grid), ``member`` (a model that only belongs to
named ensembles, not to the grid: every grid statistic ignores it), ``evaluator`` and ``gold``.
:func:`load_reward_tensor` validates them — errors name the file and the field or rows — and turns them into a
dense :class:`RewardTensor`; :func:`reward_tensor_to_frames` is its inverse, and
:func:`synthetic_reward_tensor` makes a known-answer tensor for checks and benchmarks.
:func:`load_ensemble_costs` reads the optional ``ensembles.parquet`` beside models.parquet (what each ensemble
cost to train and to score). The pool of a prompt is ordered by ascending ``sample_id``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

import numpy as np
import pandas as pd

ROLES = ("rm", "member", "evaluator", "gold")
REWARD_COLUMNS = ("prompt_id", "sample_id", "model_id", "reward", "is_reference")
MODEL_COLUMNS = ("model_id", "role", "pretrain_id", "finetune_seed")
SCOPE_COLUMN = "finetune_seed_scope"  # optional: the tensor declares its seed design
SCOPES = ("shared", "per_rm")
ENSEMBLE_COLUMN = "ensemble"  # optional: comma-separated names of the named ensembles a model belongs to
KIND_COLUMN = "kind"  # optional: what a model is (multihead, lora, warm, ...); informational
ENSEMBLE_NAME = re.compile(r"[A-Za-z0-9_.+-]+")
RESERVED_ENSEMBLES = ("single", "finetune", "pretrain", "evaluator", "gold", "none")
ENSEMBLE_ROLES = ("rm", "member")  # roles whose models may belong to a named ensemble
COST_COLUMNS = {  # ensembles.parquet: one row per ensemble, what it cost
    "ensemble": "str",
    "kind": "nullable_str",
    "n_members": "int",
    "params_trained": "nullable_int",  # null: unknown (a named ensemble)
    "params_held": "nullable_int",
    "forwards_per_candidate": "int",
    "train_s": "float",
    "score_s": "float",
    "note": "nullable_str",
}


class RewardTensorError(ValueError):
    """The reward tensor files are malformed; the message names the file and the field or rows."""


@dataclass(frozen=True)
class RewardTensor:
    """Dense reward tensor: every model's reward for every pool (and reference) sample of every prompt.

    Attributes:
        pool: ``(M, P, N)`` float64, model × prompt × pool candidate (candidates by ascending sample_id).
        reference: ``(M, P, K)`` float64 rewards of the K separate reference (SFT) samples per prompt,
            used only for win rates; ``None`` when there are none.
        model_ids, roles, pretrain_ids, finetune_seeds: per-model metadata, length M, in the order of
            ``models.parquet``; ``pretrain_ids``/``finetune_seeds`` hold ``None`` where unknown.
        prompt_ids: ``(P,)`` int64, ascending.
        sample_ids: ``(P, N)`` int64, the pool's sample ids, ascending per prompt.
        reference_ids: ``(P, K)`` int64 or ``None``.
        seed_scope: the seed design the tensor declares (``shared``: finetune seeds crossed with pretrains;
            ``per_rm``: nested), or ``None`` when it declares none (the run's `reward.finetune_seed_scope`).
        ensembles: the named ensembles, name → model indices (ascending), in the order the names first occur
            in the models table; a read-only mapping (empty when there are none). Members have role ``rm`` or
            ``member``; names match :data:`ENSEMBLE_NAME` and are not in :data:`RESERVED_ENSEMBLES`.
        kinds: per model, what it is (``multihead``, ``lora``, ``warm``, ...) or ``None``; informational.
    """

    pool: np.ndarray
    reference: np.ndarray | None
    model_ids: tuple[str, ...]
    roles: tuple[str, ...]
    pretrain_ids: tuple[str | None, ...]
    finetune_seeds: tuple[int | None, ...]
    prompt_ids: np.ndarray
    sample_ids: np.ndarray
    reference_ids: np.ndarray | None = None
    seed_scope: str | None = None
    ensembles: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    kinds: tuple[str | None, ...] | None = None

    def __post_init__(self):
        m = len(self.model_ids)
        if self.pool.ndim != 3 or self.pool.shape[0] != m:
            raise ValueError(f"pool must be (M={m}, P, N), got {self.pool.shape}")
        object.__setattr__(self, "kinds", (None,) * m if self.kinds is None else tuple(self.kinds))
        if len(self.kinds) != m:
            raise ValueError(f"kinds must have one entry per model ({m})")
        ensembles = {}
        for name, members in dict(self.ensembles).items():
            problem = ensemble_name_problem(name)
            if problem:
                raise ValueError(f"ensemble {name!r}: {problem}")
            idx = tuple(sorted({int(i) for i in members}))
            if not idx or idx[0] < 0 or idx[-1] >= m:
                raise ValueError(f"ensemble {name!r}: member indices must lie in 0..{m - 1}, "
                                 f"got {list(members)}")
            bad = [self.model_ids[i] for i in idx if self.roles[i] not in ENSEMBLE_ROLES]
            if bad:
                raise ValueError(f"ensemble {name!r}: members must have role {' or '.join(ENSEMBLE_ROLES)}, "
                                 f"not {bad}")
            ensembles[str(name)] = idx
        object.__setattr__(self, "ensembles", MappingProxyType(ensembles))
        for name in ("roles", "pretrain_ids", "finetune_seeds"):
            if len(getattr(self, name)) != m:
                raise ValueError(f"{name} must have one entry per model ({m})")
        if len(set(self.model_ids)) != m:
            raise ValueError("model_ids must be unique")
        bad_roles = sorted(set(self.roles) - set(ROLES))
        if bad_roles:
            raise ValueError(f"unknown roles {bad_roles}; allowed: {', '.join(ROLES)}")
        _, p, n = self.pool.shape
        if self.prompt_ids.shape != (p,) or self.sample_ids.shape != (p, n):
            raise ValueError("prompt_ids must be (P,) and sample_ids (P, N)")
        if self.reference is not None and self.reference.shape[:2] != (m, p):
            raise ValueError(f"reference must be (M={m}, P={p}, K), got {self.reference.shape}")

    @property
    def n_prompts(self) -> int:
        return self.pool.shape[1]

    @property
    def pool_size(self) -> int:
        return self.pool.shape[2]

    @property
    def rm_indices(self) -> list[int]:
        """Indices of the reward models of the grid (role ``rm``), in model order; ``member`` models
        are not."""
        return [i for i, r in enumerate(self.roles) if r == "rm"]

    def ensembles_of(self, i: int) -> tuple[str, ...]:
        """Names of the named ensembles model ``i`` belongs to, in :attr:`ensembles` order."""
        return tuple(name for name, members in self.ensembles.items() if i in members)

    def role_index(self, role: str) -> int | None:
        """Index of the (single) model with this role, e.g. ``evaluator`` or ``gold``; None if absent."""
        idx = [i for i, r in enumerate(self.roles) if r == role]
        return idx[0] if idx else None


# ----------------------------------------------------------------------------------------------------
# Loading and validation


def _is_str_column(col: pd.Series, allow_null: bool) -> bool:
    if not (pd.api.types.is_string_dtype(col) or pd.api.types.is_object_dtype(col)):
        return False
    if not allow_null and col.isna().any():
        return False
    return col.notna().sum() == 0 or pd.api.types.infer_dtype(col, skipna=True) == "string"


def _check_dtypes(df: pd.DataFrame, spec: Mapping[str, str], source: str) -> pd.DataFrame:
    """Check columns and dtypes; returns ``df`` with categorical string columns made plain."""
    missing = [c for c in spec if c not in df.columns]
    if missing:
        raise RewardTensorError(
            f"{source}: missing column(s) {missing}; expected {list(spec)}, found {list(df.columns)}"
        )
    categorical = [
        c for c, k in spec.items() if k.endswith("str") and isinstance(df[c].dtype, pd.CategoricalDtype)
    ]
    if categorical:
        df = df.assign(**{c: df[c].astype(object) for c in categorical})
    for col, kind in spec.items():
        series = df[col]
        if kind == "int":
            ok = pd.api.types.is_integer_dtype(series) and not pd.api.types.is_bool_dtype(series)
            ok = ok and not series.isna().any()
            want = "integer (no nulls)"
        elif kind == "nullable_int":
            values = series.dropna()
            ok = (pd.api.types.is_integer_dtype(series) and not pd.api.types.is_bool_dtype(series)) or (
                len(values) == 0
                or (pd.api.types.is_float_dtype(series) and bool(np.all(np.mod(values, 1) == 0)))
            )
            want = "integer (nulls allowed)"
        elif kind == "float":
            ok = pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series)
            want = "numeric (float or int)"
        elif kind == "bool":
            ok = pd.api.types.is_bool_dtype(series) and not series.isna().any()
            want = "bool (no nulls)"
        elif kind == "str":
            ok = _is_str_column(series, allow_null=False)
            want = "string (no nulls)"
        elif kind == "nullable_str":
            ok = _is_str_column(series, allow_null=True)
            want = "string (nulls allowed)"
        else:  # pragma: no cover - programming error
            raise AssertionError(kind)
        if not ok:
            raise RewardTensorError(f"{source}: column '{col}' has dtype {series.dtype}, expected {want}")
    return df


def _example(df: pd.DataFrame, cols: Sequence[str], limit: int = 3) -> str:
    rows = df[list(cols)].head(limit).to_dict("records")
    return "; ".join(", ".join(f"{k}={v!r}" for k, v in r.items()) for r in rows)


def ensemble_name_problem(name) -> str | None:
    """Why ``name`` cannot name a named ensemble (bad characters, reserved), or None when it can."""
    if not isinstance(name, str) or not ENSEMBLE_NAME.fullmatch(name):
        return f"a name must match {ENSEMBLE_NAME.pattern} (letters, digits, _ . + -), got {name!r}"
    if name in RESERVED_ENSEMBLES:
        return f"{name!r} is reserved ({', '.join(RESERVED_ENSEMBLES)})"
    return None


def _ensemble_names(value) -> list[str]:
    """The names of a models row's ``ensemble`` field (comma-separated; null or blank: none), unvalidated."""
    if value is None or (not isinstance(value, str) and pd.isna(value)) or not str(value).strip():
        return []
    return list(dict.fromkeys(part.strip() for part in str(value).split(",")))


def _parse_ensembles(models: pd.DataFrame) -> dict[str, list[int]]:
    """Name → row indices (model order) from the ``ensemble`` column, names in order of first occurrence."""
    out: dict[str, list[int]] = {}
    if ENSEMBLE_COLUMN in models.columns:
        for i, value in enumerate(models[ENSEMBLE_COLUMN]):
            for name in _ensemble_names(value):
                out.setdefault(name, []).append(i)
    return out


def _validate_ensembles(models: pd.DataFrame, source: str) -> None:
    field_ = f"field '{ENSEMBLE_COLUMN}'"
    if ENSEMBLE_COLUMN in models.columns:
        names = models[ENSEMBLE_COLUMN].map(_ensemble_names)
        bad = models[[any(ensemble_name_problem(n) for n in v) for v in names]]
        if len(bad):
            problem = next(ensemble_name_problem(n) for v in names[bad.index] for n in v
                           if ensemble_name_problem(n))
            raise RewardTensorError(
                f"{source}: {field_} holds comma-separated ensemble names; {problem}; bad rows: "
                f"{_example(bad, ['model_id', ENSEMBLE_COLUMN])}")
        judged = models[(names.map(len) > 0) & ~models.role.isin(ENSEMBLE_ROLES)]
        if len(judged):
            raise RewardTensorError(
                f"{source}: {field_} is only for models of role {' or '.join(ENSEMBLE_ROLES)}, not the "
                f"evaluator or gold; bad rows: {_example(judged, ['model_id', 'role', ENSEMBLE_COLUMN])}")
        lone = models[(names.map(len) == 0) & (models.role == "member")]
    else:
        lone = models[models.role == "member"]
    if len(lone):
        raise RewardTensorError(
            f"{source}: {field_} is null for model(s) of role 'member' {list(lone.model_id)}: a member "
            "belongs to one or more named ensembles")


def _validate_models(models: pd.DataFrame, source: str) -> pd.DataFrame:
    spec = {"model_id": "str", "role": "str", "pretrain_id": "nullable_str", "finetune_seed": "nullable_int"}
    optional = [c for c in (ENSEMBLE_COLUMN, KIND_COLUMN) if c in models.columns]
    spec |= {c: "nullable_str" for c in optional}
    empty = [c for c in optional if models[c].isna().all()]  # e.g. all NaN as float: nothing declared
    if empty:
        models = models.assign(**{c: pd.Series([None] * len(models), index=models.index, dtype=object)
                                  for c in empty})
    models = _check_dtypes(models, spec, source)
    dup = models[models.model_id.duplicated(keep=False)]
    if len(dup):
        raise RewardTensorError(f"{source}: duplicate model_id {sorted(set(dup.model_id))}")
    bad = models[~models.role.isin(ROLES)]
    if len(bad):
        raise RewardTensorError(
            f"{source}: field 'role' must be one of {list(ROLES)}; "
            f"bad rows: {_example(bad, ['model_id', 'role'])}"
        )
    if not (models.role == "rm").any():
        raise RewardTensorError(f"{source}: no reward models (no row with role 'rm')")
    no_pretrain = models[(models.role == "rm") & models.pretrain_id.isna()]
    if len(no_pretrain):
        raise RewardTensorError(
            f"{source}: field 'pretrain_id' is null for reward model(s) {list(no_pretrain.model_id)}"
        )
    if SCOPE_COLUMN in models.columns:
        values = set(models.loc[models.role == "rm", SCOPE_COLUMN].dropna().astype(str))
        bad = sorted(values - set(SCOPES))
        if bad or len(values) > 1:
            raise RewardTensorError(
                f"{source}: field '{SCOPE_COLUMN}' must hold one of {list(SCOPES)} for every reward model "
                f"(the tensor's seed design), got {sorted(values)}")
    for role in ("evaluator", "gold"):
        if (models.role == role).sum() > 1:
            raise RewardTensorError(
                f"{source}: more than one model with role '{role}': "
                f"{list(models.model_id[models.role == role])}"
            )
    _validate_ensembles(models, source)
    return models.reset_index(drop=True)


def reward_tensor_from_frames(
    rewards: pd.DataFrame,
    models: pd.DataFrame,
    rewards_source: str = "rewards",
    models_source: str = "models",
) -> RewardTensor:
    """Validate the long tables and build the dense :class:`RewardTensor`.

    ``is_reference`` may be absent from ``rewards`` (then every sample is a pool sample). Raises
    :class:`RewardTensorError` naming the source and the field or example rows for: missing columns,
    wrong dtypes, unknown model ids, models without rewards, duplicate (prompt_id, sample_id, model_id),
    a sample marked both reference and pool, a model missing for some sample, prompts with unequal pool
    (or reference) sizes, NaN/inf rewards, and no reward models.
    """
    models = _validate_models(models, models_source)
    if "is_reference" not in rewards.columns:
        rewards = rewards.assign(is_reference=False)
    rewards = _check_dtypes(
        rewards,
        {
            "prompt_id": "int",
            "sample_id": "int",
            "model_id": "str",
            "reward": "float",
            "is_reference": "bool",
        },
        rewards_source,
    )
    if len(rewards) == 0:
        raise RewardTensorError(f"{rewards_source}: no rows")
    model_ids = list(models.model_id)
    present = set(rewards.model_id.unique())
    unknown = sorted(present - set(model_ids))
    if unknown:
        raise RewardTensorError(
            f"{rewards_source}: field 'model_id' has ids not in {models_source}: {unknown[:10]}"
        )
    absent = [m for m in model_ids if m not in present]
    if absent:
        raise RewardTensorError(
            f"{rewards_source}: no rewards at all for model(s) {absent} listed in {models_source}"
        )
    reward = rewards.reward.to_numpy(dtype=np.float64, na_value=np.nan)
    bad = ~np.isfinite(reward)
    if bad.any():
        raise RewardTensorError(
            f"{rewards_source}: field 'reward' has {int(bad.sum())} NaN/inf value(s), e.g. "
            f"{_example(rewards[bad], ['prompt_id', 'sample_id', 'model_id'])}"
        )
    key = ["prompt_id", "sample_id", "model_id"]
    dup = rewards.duplicated(key, keep=False)
    if dup.any():
        raise RewardTensorError(
            f"{rewards_source}: {int(dup.sum())} rows share a (prompt_id, sample_id, model_id), e.g. "
            f"{_example(rewards[dup], key)}"
        )
    per_sample = rewards.groupby(["prompt_id", "sample_id"], sort=True).agg(
        n_models=("model_id", "size"),
        n_kinds=("is_reference", "nunique"),
        is_reference=("is_reference", "first"),
    )
    mixed = per_sample[per_sample.n_kinds > 1].reset_index()
    if len(mixed):
        raise RewardTensorError(
            f"{rewards_source}: field 'is_reference' differs between models for the same sample, e.g. "
            f"{_example(mixed, ['prompt_id', 'sample_id'])}"
        )
    n_models = len(model_ids)
    short = per_sample[per_sample.n_models != n_models].reset_index()
    if len(short):
        first = short.iloc[0]
        have = set(
            rewards.model_id[(rewards.prompt_id == first.prompt_id) & (rewards.sample_id == first.sample_id)]
        )
        raise RewardTensorError(
            f"{rewards_source}: {len(short)} sample(s) lack a reward from some model, e.g. "
            f"prompt_id={first.prompt_id}, sample_id={first.sample_id} misses {sorted(set(model_ids) - have)}"
        )
    sizes = per_sample.groupby(level="prompt_id").is_reference.agg(["size", "sum"])
    sizes = pd.DataFrame({"n_pool": sizes["size"] - sizes["sum"], "n_ref": sizes["sum"]})
    for col, what in (("n_pool", "pool"), ("n_ref", "reference")):
        counts = sizes[col].value_counts()
        if len(counts) > 1:
            raise RewardTensorError(
                f"{rewards_source}: prompts have unequal {what} sizes (sample count per prompt -> "
                f"number of prompts: {counts.sort_index().to_dict()}); every prompt needs the same number"
            )
    pool_size, n_ref = int(sizes.n_pool.iloc[0]), int(sizes.n_ref.iloc[0])
    if pool_size == 0:
        raise RewardTensorError(f"{rewards_source}: no pool samples (every row has is_reference=True)")

    # Dense arrays: sort by (is_reference, prompt, sample, model) and reshape; validation above makes
    # every (prompt, sample) block exactly M rows and every prompt exactly N (+K) samples.
    code = pd.Categorical(rewards.model_id, categories=model_ids).codes
    pid = rewards.prompt_id.to_numpy(dtype=np.int64)
    sid = rewards.sample_id.to_numpy(dtype=np.int64)
    is_ref = rewards.is_reference.to_numpy(dtype=bool)
    order = np.lexsort((code, sid, pid, is_ref))
    prompt_ids = np.unique(pid)
    n_prompts = len(prompt_ids)

    def dense(mask_value: bool, k: int):
        sel = order[is_ref[order] == mask_value]
        values = reward[sel].reshape(n_prompts, k, n_models).transpose(2, 0, 1).copy()
        ids = sid[sel][::n_models].reshape(n_prompts, k)
        return values, ids

    pool, sample_ids = dense(False, pool_size)
    reference, reference_ids = dense(True, n_ref) if n_ref else (None, None)

    def seed(v):
        return None if pd.isna(v) else int(v)

    return RewardTensor(
        pool=pool,
        reference=reference,
        model_ids=tuple(model_ids),
        roles=tuple(models.role),
        pretrain_ids=tuple(None if pd.isna(v) else str(v) for v in models.pretrain_id),
        finetune_seeds=tuple(seed(v) for v in models.finetune_seed),
        prompt_ids=prompt_ids,
        sample_ids=sample_ids,
        reference_ids=reference_ids,
        seed_scope=_declared_scope(models),
        ensembles=_parse_ensembles(models),
        kinds=tuple(None if pd.isna(v) else str(v) for v in models[KIND_COLUMN])
        if KIND_COLUMN in models.columns else None,
    )


def _declared_scope(models: pd.DataFrame) -> str | None:
    if SCOPE_COLUMN not in models.columns:
        return None
    values = models.loc[models.role == "rm", SCOPE_COLUMN].dropna()
    return str(values.iloc[0]) if len(values) else None


def load_reward_tensor(rewards_path, models_path) -> RewardTensor:
    """Read ``rewards.parquet`` and ``models.parquet``, validate, and return the :class:`RewardTensor`.

    Errors are :class:`RewardTensorError` with the file path and the offending field in the message.
    """
    frames = []
    for path in (rewards_path, models_path):
        try:
            frames.append(pd.read_parquet(path))
        except (OSError, ValueError) as exc:
            raise RewardTensorError(f"{path}: cannot read as Parquet ({exc})") from exc
    return reward_tensor_from_frames(frames[0], frames[1], str(rewards_path), str(models_path))


def reward_tensor_to_frames(tensor: RewardTensor) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Inverse of :func:`reward_tensor_from_frames`: the long ``(rewards, models)`` tables."""
    m, p, n = tensor.pool.shape
    parts = [(tensor.pool, tensor.sample_ids, False)]
    if tensor.reference is not None:
        parts.append((tensor.reference, tensor.reference_ids, True))
    frames = []
    for values, ids, is_ref in parts:
        k = values.shape[2]
        frames.append(
            pd.DataFrame(
                {
                    "prompt_id": np.tile(np.repeat(tensor.prompt_ids, k), m).astype(np.int64),
                    "sample_id": np.tile(ids.reshape(-1), m).astype(np.int64),
                    "model_id": np.repeat(np.array(tensor.model_ids, dtype=object), p * k),
                    "reward": values.reshape(-1).astype(np.float64),
                    "is_reference": np.full(m * p * k, is_ref),
                }
            )
        )
    models = pd.DataFrame(
        {
            "model_id": list(tensor.model_ids),
            "role": list(tensor.roles),
            "pretrain_id": pd.Series(list(tensor.pretrain_ids), dtype=object),
            "finetune_seed": pd.array(list(tensor.finetune_seeds), dtype="Int64"),
        }
    )
    if tensor.seed_scope is not None:
        models[SCOPE_COLUMN] = [tensor.seed_scope if r == "rm" else None for r in tensor.roles]
    if tensor.ensembles:
        models[ENSEMBLE_COLUMN] = pd.Series([",".join(tensor.ensembles_of(i)) or None for i in range(m)],
                                            dtype=object)
    if any(k is not None for k in tensor.kinds):
        models[KIND_COLUMN] = pd.Series(list(tensor.kinds), dtype=object)
    return pd.concat(frames, ignore_index=True), models


def load_ensemble_costs(path) -> pd.DataFrame:
    """Read ``ensembles.parquet``: one row per ensemble (``single``, ``finetune``, ``pretrain`` for the grid,
    and each named ensemble) with what it cost, columns :data:`COST_COLUMNS`: ``ensemble``, ``kind``,
    ``n_members``, ``params_trained`` (parameters updated by training, summed over what training ran,
    pretraining included where the run paid for it), ``params_held`` (parameters in memory while scoring),
    ``forwards_per_candidate``, ``train_s`` and ``score_s`` (seconds, NaN unknown), ``note``.

    Returns the table with those columns (int64, float64 and object dtypes), or an empty one when ``path``
    does not exist. Raises :class:`RewardTensorError` naming the file and the field for a missing column, a
    wrong dtype or a repeated ensemble name.
    """
    path = Path(path)
    if not path.exists():
        return pd.DataFrame({c: pd.Series(dtype=_COST_DTYPES[k]) for c, k in COST_COLUMNS.items()})
    try:
        df = pd.read_parquet(path)
    except (OSError, ValueError) as exc:
        raise RewardTensorError(f"{path}: cannot read as Parquet ({exc})") from exc
    df = _check_dtypes(df, COST_COLUMNS, str(path))
    dup = df[df.ensemble.duplicated(keep=False)]
    if len(dup):
        raise RewardTensorError(f"{path}: field 'ensemble' repeats {sorted(set(dup.ensemble))}: "
                                "one row per ensemble")
    df = df.reset_index(drop=True)
    return pd.DataFrame({c: pd.Series([None if pd.isna(v) else str(v) for v in df[c]], dtype=object)
                         if k.endswith("str") else df[c].astype(_COST_DTYPES[k])
                         for c, k in COST_COLUMNS.items()})


_COST_DTYPES = {"str": object, "nullable_str": object, "int": np.int64, "nullable_int": np.float64,
                "float": np.float64}


def synthetic_reward_tensor(
    n_pretrains: int = 5,
    n_finetune: int = 2,
    n_prompts: int = 200,
    pool_size: int = 16,
    n_reference: int = 4,
    pretrain_effect: float = 1.0,
    finetune_noise: float = 0.5,
    seed: int = 0,
) -> RewardTensor:
    """A known-answer reward tensor for checks and benchmarks.

    Each candidate has a true quality ``q ~ N(0, 1)``. Reward model (pretrain p, finetune seed f) scores
    ``q + pretrain_effect · u_p + finetune_noise · e_pf + offset_pf``, where ``u_p`` is noise shared by
    all RMs of pretrain p and ``e_pf`` is the model's own (all standard normal per candidate; the offset
    is a per-model, per-prompt constant that centring must remove). The evaluator scores
    ``q + 0.3·noise``, the gold reward is ``q``. Reference samples are drawn the same way.
    With ``pretrain_effect = 0`` models sharing a pretrain are no more alike than any others.
    """
    rng = np.random.default_rng(seed)
    total = pool_size + n_reference
    quality = rng.standard_normal((n_prompts, total))
    shared = rng.standard_normal((n_pretrains, n_prompts, total))
    rows, ids, roles, pretrains, seeds = [], [], [], [], []
    for p in range(n_pretrains):
        for f in range(n_finetune):
            own = rng.standard_normal((n_prompts, total))
            offset = rng.normal(0.0, 2.0, size=(n_prompts, 1))
            rows.append(quality + pretrain_effect * shared[p] + finetune_noise * own + offset)
            ids.append(f"rm-p{p}-f{f}")
            roles.append("rm")
            pretrains.append(f"p{p}")
            seeds.append(f)
    rows.append(quality + 0.3 * rng.standard_normal((n_prompts, total)))
    rows.append(quality)
    ids += ["evaluator", "gold"]
    roles += ["evaluator", "gold"]
    pretrains += [None, None]
    seeds += [None, None]
    scores = np.stack(rows)  # (M, P, N + K)
    sample_ids = np.broadcast_to(np.arange(total, dtype=np.int64), (n_prompts, total))
    return RewardTensor(
        pool=scores[:, :, :pool_size].copy(),
        reference=scores[:, :, pool_size:].copy() if n_reference else None,
        model_ids=tuple(ids),
        roles=tuple(roles),
        pretrain_ids=tuple(pretrains),
        finetune_seeds=tuple(seeds),
        prompt_ids=np.arange(n_prompts, dtype=np.int64),
        sample_ids=sample_ids[:, :pool_size].copy(),
        reference_ids=sample_ids[:, pool_size:].copy() if n_reference else None,
    )
