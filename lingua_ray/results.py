"""results.json (schema version 3; versions 1 and 2 still load): pydantic models, validation, writing, reading.

The reduce and ablate stages build a ``Results`` (or the equivalent plain dict); this module
checks it against the models below and writes it as ``results.json`` plus flat CSV tables
(results_csv.py). It knows no models, Ray or Zarr. Each field's meaning and unit live here, in
its ``_doc(...)``; the field tables of ``docs/results.md`` are generated from the models' JSON
schema (``python -m lingua_ray.results_doc``) and a test keeps them current.

JSON has no NaN. A non-finite float is accepted only in a *nullable* field, where it means
"undefined" and is written as ``null``; in a required field it is an error naming its path.
Numpy scalars and arrays and tuples are accepted and written as plain JSON numbers and lists.
Errors are ``ResultsError(path, message)``, the path in the form
``checkpoints[0].per_layer.lrds[3].ci`` (data keys quoted: ``total["zh.Hans"]``). Building a
model directly (``Stat(value=..., ...)``) runs the same checks but raises pydantic's
ValidationError (a ValueError); ``write_results`` of the built model raises ResultsError.

Versions: 1 is the original file; 2 adds two top-level keys that may be absent (never null):
``evolution`` (results_evolution.py) and ``identical_checkpoints``. A version-1 file has
neither and still loads; a file that has either must say version 2. 3 adds ``criteria`` and
``alignment`` (results_criteria.py), also absent-or-present, never null.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

from pydantic import BeforeValidator, Field, ValidationError, field_validator, model_validator

from lingua_ray import atomic
from lingua_ray.results_checks import (ResultsError, check_against_grid, fail, normalize_results, plain_value,
                                       results_error)
from lingua_ray.results_csv import ABLATION_CSV_FILES, CSV_FILES, OPTIONAL_CSV_FILES, csv_tables
from lingua_ray.results_criteria import (Alignment, AlignmentCheckpoint, AlignmentScope, CriteriaBase,
                                         CriteriaCheckpoint, CriterionCounts, CriterionOverlap, CriterionStability,
                                         MetricCI, check_alignment, check_criteria)
from lingua_ray.results_evolution import (EdgeShare, Evolution, ShareStat, check_evolution,
                                          check_identical_checkpoints)
from lingua_ray.results_types import (COS_DIFF, NATS, Cosine, Count, Finite, NonEmptyStr, OptFloat, PValue, _doc,
                                      _doc_optional, _Model)

__all__ = [
    "SCHEMA_VERSION", "RESULTS_FILE", "CSV_FILES", "ABLATION_CSV_FILES", "OPTIONAL_CSV_FILES", "ResultsError", "normalize_results",
    "validate_results", "write_results", "load_results", "csv_tables", "Results", "ResultsRunInfo", "Grid",
    "CheckpointRef", "Settings", "Stat", "ScorePair", "PerLayer", "KeyNeurons", "CheckpointResults",
    "AblationRow", "Specificity", "AblationCheckpoint", "Ablation", "Evolution", "EdgeShare", "ShareStat",
    "SUPPORTED_VERSIONS", "VERSION_2_KEYS", "VERSION_3_KEYS", "Criteria", "CriteriaCheckpoint", "CriterionCounts",
    "CriterionOverlap", "CriterionStability", "Alignment", "AlignmentCheckpoint", "AlignmentScope", "MetricCI",
]

SCHEMA_VERSION = 3  # what write_results callers should put in new files
SUPPORTED_VERSIONS = (1, 2, 3)  # what this reader accepts
VERSION_2_KEYS = ("evolution", "identical_checkpoints")  # top-level keys a version-1 file cannot have
VERSION_3_KEYS = ("criteria", "alignment")  # top-level keys a version-1 or -2 file cannot have
RESULTS_FILE = "results.json"


# ---------------------------------------------------------------- the models


class Stat(_Model):
    """Every score is a Stat."""

    value: Finite = _doc("point estimate on all S units (not a bootstrap mean)", COS_DIFF)
    ci: Optional[Annotated[list[Finite], Field(min_length=2, max_length=2)]] = _doc(
        "[lo, hi] bootstrap interval at `settings.ci_level`, lo ≤ hi; null without bootstrap", COS_DIFF)
    p_value: PValue = _doc("permutation p-value of `value` against no structure; null without permutations",
                           "probability")

    @model_validator(mode="after")
    def _ordered_ci(self) -> "Stat":
        if self.ci is not None and self.ci[0] > self.ci[1]:
            fail("ci", f"lo {self.ci[0]} > hi {self.ci[1]}")
        return self


class ResultsRunInfo(_Model):
    """Where the numbers came from (``run``)."""

    name: NonEmptyStr = _doc("run name from the config")
    created_utc: NonEmptyStr = _doc("creation time, ISO 8601 with a UTC offset (`Z` or `+00:00`)")
    store: NonEmptyStr = _doc("path or URL of the activation store (Zarr) the numbers came from")
    config: dict[str, Any] = _doc("the resolved config, any JSON")
    model_fingerprint: NonEmptyStr = _doc("weight fingerprint of the model family/checkpoints")
    corpus_fingerprint: NonEmptyStr = _doc("fingerprint of the parallel corpus (ids and texts)")
    lingua_ray_version: NonEmptyStr = _doc("package version that wrote the file")

    @field_validator("created_utc")
    @classmethod
    def _iso_utc(cls, v: str) -> str:
        try:
            t = datetime.fromisoformat(v)
        except ValueError:
            fail("", f"{v!r} is not ISO 8601")
        if t.utcoffset() != timedelta(0):
            fail("", f"{v!r} must carry a UTC offset (Z or +00:00)")
        return v


class CheckpointRef(_Model):
    """One entry of ``grid.checkpoints``."""

    label: NonEmptyStr = _doc("checkpoint label; unique among `grid.checkpoints`")
    revision: Optional[NonEmptyStr] = _doc("hub revision (commit or tag) of the weights; null if none")
    step: Optional[Count] = _doc("training step; null if unknown", "training steps")


class Grid(_Model):
    """The shape of every array in the file (``grid``)."""

    languages: Annotated[list[NonEmptyStr], Field(min_length=2)] = _doc(
        "the K language codes, unique, in row order l = 0..K−1")
    n_units: Annotated[int, Field(ge=2)] = _doc("S, aligned units per language", "units")
    n_layers: Annotated[int, Field(ge=1)] = _doc("L, decoder layers", "layers")
    n_neurons: Annotated[int, Field(ge=1)] = _doc("F, FFN neurons per layer (down-projection input width)", "neurons")
    checkpoints: Annotated[list[CheckpointRef], Field(min_length=1)] = _doc(
        "the checkpoints, in training order; labels unique")

    @model_validator(mode="after")
    def _unique(self) -> "Grid":
        if len(set(self.languages)) != len(self.languages):
            fail("languages", "language codes repeat")
        labels = [r.label for r in self.checkpoints]
        if len(set(labels)) != len(labels):
            fail("checkpoints", "checkpoint labels repeat")
        return self


class Settings(_Model):
    """How key neurons and uncertainties were computed (``settings``)."""

    tau: OptFloat = _doc("z-score threshold τ; required when `key_mode` is `zscore`", "standard deviations")
    key_mode: Annotated[Literal["zscore", "top_fraction"], BeforeValidator(plain_value)] = _doc(
        "how key neurons were selected")
    top_fraction: OptFloat = _doc("fraction of neurons kept per language, in (0, 1]; required when `key_mode` "
                                  "is `top_fraction`", "fraction")
    n_boot: Count = _doc("bootstrap resamples behind every `ci`", "resamples")
    n_perm: Count = _doc("permutations behind every `p_value`", "permutations")
    seed: int = _doc("seed of bootstrap and permutation")
    perm_units: Optional[Count] = _doc_optional(
        "aligned units the permutation tests ran on: all S, or a seeded subsample when K·S exceeds "
        "`reduce.perm_max_rows` (docs/metrics.md, streamed summaries)", "units")
    ci_level: Annotated[Finite, Field(gt=0, lt=1)] = _doc("coverage of every `ci` (e.g. 0.95)", "fraction")

    @model_validator(mode="after")
    def _key_mode_needs(self) -> "Settings":
        if self.key_mode == "zscore" and self.tau is None:
            fail("tau", "key_mode 'zscore' needs a threshold tau")
        frac = self.top_fraction
        if self.key_mode == "top_fraction" and (frac is None or not 0 < frac <= 1):
            fail("top_fraction", f"key_mode 'top_fraction' needs 0 < top_fraction <= 1, got {frac}")
        return self


class ScorePair(_Model):
    """The two scores of METHOD.md on one set of vectors."""

    lrds: Stat = _doc("LRDS: > 0 when units in the same language are more alike than across languages", COS_DIFF)
    sads: Stat = _doc("SADS: > 0 when translations of a unit are more alike than different units", COS_DIFF)


class PerLayer(_Model):
    """Scores of each layer alone (``checkpoints[i].per_layer``)."""

    lrds: list[Stat] = _doc("length L: LRDS on `a[layer]` alone", COS_DIFF)
    sads: list[Stat] = _doc("length L: SADS on `a[layer]` alone", COS_DIFF)
    norm_share: list[Annotated[Finite, Field(ge=0)]] = _doc(
        "length L, sums to 1: each layer's share of the squared activation norm (how much it weighs in `overall`)",
        "fraction")


class KeyNeurons(_Model):
    """Language-specific neurons of one checkpoint (``checkpoints[i].key_neurons``); keys are ``grid.languages``."""

    counts: dict[str, list[Count]] = _doc("per language, length L, each ≤ F: key neurons in each layer", "neurons")
    total: dict[str, Count] = _doc("per language: Σ over layers of `counts[language]`", "neurons")
    overlap: list[list[Count]] = _doc("K × K: neurons key for both l and m; symmetric, diagonal = `total`, "
                                      "off-diagonal ≤ the smaller total", "neurons")


class CheckpointResults(_Model):
    """Everything measured on one checkpoint (``checkpoints[i]``)."""

    label: NonEmptyStr = _doc("must equal `grid.checkpoints[i].label`")
    revision: Optional[NonEmptyStr] = _doc("must equal `grid.checkpoints[i].revision`")
    step: Optional[Count] = _doc("must equal `grid.checkpoints[i].step`", "training steps")
    overall: ScorePair = _doc("the paper's definition: all layers concatenated into `v = flatten(a)`")
    overall_balanced: ScorePair = _doc("each layer's vector normalised to unit norm before concatenation, "
                                       "so every layer weighs the same")
    per_layer: PerLayer = _doc("scores of each layer alone")
    language_block_means: list[list[Cosine]] = _doc(
        "K × K: B[l][m] of METHOD.md on the concatenated vectors; `overall.lrds.value` = mean diag − mean "
        "off-diag (bounds allow 1e-6 rounding)", "cosine")
    meaning_block_means: list[list[Cosine]] = _doc(
        "S × S: D[s][s'] of METHOD.md on the concatenated vectors; `overall.sads.value` = mean diag − mean "
        "off-diag", "cosine")
    key_neurons: KeyNeurons = _doc("key-neuron counts and overlaps")


class AblationRow(_Model):
    """One mask (and repeat) evaluated on every eval language."""

    mask: Annotated[str, Field(pattern=r"^(none|(key|random):[\s\S]+)$")] = _doc(
        "`none` (intact model), `key:<lang>` (the key neurons of `<lang>`) or `random:<lang>` (random neurons, "
        "the key count in every layer); `<lang>` ∈ `grid.languages`")
    language: Optional[str] = _doc("`<lang>` of the mask; null for `none`")
    repeat: Optional[Count] = _doc("repeat index in [0, R) of a random mask; null otherwise")
    n_neurons: Count = _doc("neurons zeroed (0 for `none`; random = key count)", "neurons")
    ppl: dict[str, Annotated[Finite, Field(ge=1.0)]] = _doc("per eval language: held-out perplexity", "perplexity")
    log_ppl_ratio: dict[str, Finite] = _doc("per eval language: log(ppl / ppl of the `none` row)", NATS)


class Specificity(_Model):
    """How language-specific one language's key mask is (lingua_ray/specificity.py)."""

    own_log_ratio: Finite = _doc("damage to l's own perplexity by l's key mask", NATS)
    other_mean_log_ratio: OptFloat = _doc("mean damage to the other eval languages (null: only one)", NATS)
    other_median_log_ratio: OptFloat = _doc("median of the same", NATS)
    specificity: OptFloat = _doc("own − other mean", NATS)
    random_own_log_ratio_mean: OptFloat = _doc("mean over repeats of the random mask's own damage (null: R = 0)", NATS)
    random_own_log_ratio_sd: OptFloat = _doc("sample sd (ddof = 1) of the same (null: R < 2)", NATS)
    random_specificity_mean: OptFloat = _doc("mean over repeats of the random mask's own − other mean", NATS)
    random_specificity_sd: OptFloat = _doc("sample sd of the same (null: R < 2)", NATS)


class AblationCheckpoint(_Model):
    """The deactivation of one checkpoint (``ablation.checkpoints[i]``)."""

    label: NonEmptyStr = _doc("a `grid.checkpoints` label")
    eval_languages: Annotated[list[NonEmptyStr], Field(min_length=1)] = _doc(
        "unique: languages whose perplexity was measured")
    rows: list[AblationRow] = _doc("one per mask (and repeat)")
    specificity: dict[str, Specificity] = _doc(
        "one per language that has a `key:` row and is among `eval_languages`")

    @field_validator("eval_languages")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        if not v or len(set(v)) != len(v):
            fail("", "is empty or repeats a language")
        return v


class Ablation(_Model):
    """Deactivation results (``ablation``)."""

    eval_corpus: NonEmptyStr = _doc("held-out text used for perplexity (not the units that picked the neurons)")
    n_eval_units: Annotated[int, Field(ge=1)] = _doc("held-out units per evaluation language", "units")
    n_random: Count = _doc("R, random control masks per language", "masks")
    seed: int = _doc("seed of the random masks")
    checkpoints: list[AblationCheckpoint] = _doc("per ablated checkpoint; labels are grid labels, unique")


class Criteria(CriteriaBase):
    """Key-neuron criteria side by side on the same activations (``criteria``; docs/criteria.md)."""

    ablation: Optional[dict[str, Ablation]] = _doc_optional(
        "per criterion of `ablation.criteria`: its deactivation matrix, the `key:<lang>` rows being this "
        "criterion's sets and the `random:<lang>` rows their matched controls; `ablation` repeats the "
        "`zscore` entry. Absent until the ablate stage ran")


class Results(_Model):
    """The whole results.json. Build it from the stage's values; every check runs on construction."""

    schema_version: int = _doc("`3`; `2` for files written before `criteria` and `alignment` existed, `1` before "
                               "`evolution` and `identical_checkpoints` (they still load, and cannot hold those keys)")
    run: ResultsRunInfo = _doc("where the numbers came from")
    grid: Grid = _doc("the shapes K, S, L, F and the checkpoints")
    settings: Settings = _doc("key-neuron and uncertainty settings")
    checkpoints: list[CheckpointResults] = _doc("one per checkpoint, same order as `grid.checkpoints`")
    ablation: Optional[Ablation] = _doc("deactivation results; null when not run")
    evolution: Evolution = _doc_optional("how the measurements move across the checkpoints; absent when not "
                                         "computed (version 1, or written without it)")
    identical_checkpoints: list[Annotated[list[NonEmptyStr], Field(min_length=2)]] = _doc_optional(
        "groups of `grid.checkpoints` labels whose weights hash the same (`weights_sha256`), each in grid order, "
        "no label in two groups; `[]`: checked, none found; absent: not checked")
    criteria: Criteria = _doc_optional("every configured key-neuron criterion side by side (version 3); absent "
                                       "when not computed")
    alignment: Alignment = _doc_optional("retrieval, MEXA, ILO and CKA per layer and overall (version 3); absent "
                                         "when `reduce.alignment` is false")

    @field_validator("schema_version")
    @classmethod
    def _known_version(cls, v: int) -> int:
        if v not in SUPPORTED_VERSIONS:
            fail("", f"is {v!r}; this reader knows versions {', '.join(map(str, SUPPORTED_VERSIONS))}")
        return v

    @field_validator(*VERSION_2_KEYS, *VERSION_3_KEYS, mode="before")
    @classmethod
    def _absent_not_null(cls, v: Any) -> Any:
        if v is None:
            fail("", "is null; leave the key out instead (absent means not computed)")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> "Results":
        for keys, version in ((VERSION_2_KEYS, 2), (VERSION_3_KEYS, 3)):
            for key in keys:
                if self.schema_version < version and getattr(self, key) is not None:
                    fail(key, f"needs schema_version {version} (the file says {self.schema_version})")
        check_against_grid(self)  # shapes that depend on the grid, and what the numbers imply
        if self.evolution is not None:
            check_evolution(self.evolution, "evolution", self)
        if self.identical_checkpoints is not None:
            check_identical_checkpoints(self.identical_checkpoints, "identical_checkpoints", self.grid)
        if self.criteria is not None:
            check_criteria(self.criteria, "criteria", self)
        if self.alignment is not None:
            check_alignment(self.alignment, "alignment", self)
        return self


# ---------------------------------------------------------------- validation, writing, reading


def _validate(d: Any) -> Results:
    plain = normalize_results(d)  # also a Results (its dict), so a mutated model is checked again
    try:
        return Results.model_validate(plain, context={"plain": True})
    except ValidationError as e:
        raise results_error(Results, e) from None


def validate_results(d: Any) -> Results:
    """Raise ResultsError naming the first bad field of ``d`` (a dict or a Results); return the model.

    Besides types, bounds and shapes it checks what the numbers imply: checkpoint labels agree
    with the grid, ``norm_share`` sums to 1, the paper LRDS/SADS equal the contrasts of B and
    D, key-neuron totals and overlaps agree with the counts, log PPL ratios agree with the
    perplexities, and the specificity table agrees with the ablation rows.
    """
    return _validate(d)


def write_results(d: Any, out_dir: str | os.PathLike) -> Path:
    """Validate ``d`` (a dict or a Results) and write ``out_dir/results.json`` plus the CSV tables.

    Returns the JSON path. Every file is written atomically; results.json last, so its
    presence means the set is complete. Optional CSVs (ablation, criteria, alignment) left in
    ``out_dir`` by an earlier run are removed when ``d`` lacks their section, so the folder never
    mixes two runs. Non-finite floats
    (allowed only in nullable fields) are stored as null. Keys keep the order of ``d``.
    """
    _validate(d)
    plain = normalize_results(d, nan_to_null=True)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tables = csv_tables(plain)
    for name, text in tables.items():
        atomic.write_text(out / name, text)
    for name in OPTIONAL_CSV_FILES:
        if name not in tables and (out / name).exists():
            (out / name).unlink()
    path = out / RESULTS_FILE
    atomic.write_text(path, json.dumps(plain, indent=1, allow_nan=False, ensure_ascii=False) + "\n")
    return path


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON (lingua_ray writes undefined numbers as null)")


def load_results(path: str | os.PathLike) -> dict:
    """Read and validate a results.json (``path`` may be the file or its folder); the plain dict.

    ``validate_results(load_results(p))`` gives the typed model.
    """
    p = Path(path)
    if p.is_dir():
        p = p / RESULTS_FILE
    try:
        d = json.loads(p.read_text(encoding="utf-8"), parse_constant=_reject_constant)
    except (OSError, ValueError) as e:
        raise ResultsError("", f"cannot read {p}: {e}") from e
    try:
        validate_results(d)
    except ResultsError as e:
        raise ResultsError(e.path, f"{e.message} (in {p})") from None
    return d
