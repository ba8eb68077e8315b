"""The building blocks of the results.json models: field types, ``_doc`` and the strict base model.

Shared by results.py (the run, grid, scores and ablation) and results_evolution.py (the
``evolution`` section), so both declare fields the same way. Nothing here knows the schema.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Optional

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationInfo, model_validator

from lingua_ray.results_checks import fail, plain_value


def _undefined_to_none(x: Any) -> Any:
    return None if isinstance(x, float) and not math.isfinite(x) else x


Finite = Annotated[float, Field(allow_inf_nan=False)]
NonEmptyStr = Annotated[str, Field(min_length=1)]
Count = Annotated[int, Field(ge=0)]
Cosine = Annotated[Finite, Field(ge=-1 - 1e-6, le=1 + 1e-6)]  # cosine means may overshoot ±1 by rounding
OptFloat = Annotated[Optional[float], BeforeValidator(_undefined_to_none)]  # NaN/inf → None ("undefined")
PValue = Annotated[Optional[Annotated[float, Field(ge=0.0, le=1.0)]], BeforeValidator(_undefined_to_none)]
Fraction = Annotated[float, Field(ge=0.0, le=1.0)]
OptFraction = Annotated[Optional[Fraction], BeforeValidator(_undefined_to_none)]
NATS = "nats"  # natural-log perplexity ratio
COS_DIFF = "cosine difference"


def _doc(meaning: str, unit: str = "—") -> Any:
    """A field's row in docs/results.md: its meaning (markdown) and unit, carried in the JSON schema."""
    return Field(description=meaning, json_schema_extra={"unit": unit})


def _doc_optional(meaning: str, unit: str = "—") -> Any:
    """Like ``_doc`` for a field that may be absent (added in a later schema version); never null."""
    return Field(default=None, description=meaning, json_schema_extra={"unit": unit})


class _Model(BaseModel):
    """Strict (no bool for a number, no float for an int), closed (unknown keys are errors).

    Every field is required except those declared with ``_doc_optional``: those may be left out
    (absent means "not computed"), and a dump leaves them out again when they are unset.
    """

    model_config = ConfigDict(strict=True, extra="forbid")

    # No __init__ override: pydantic would call it for every nested model and lose the context.

    @model_validator(mode="before")
    @classmethod
    def _object_with_exactly_our_keys(cls, data: Any, info: ValidationInfo) -> Any:
        if isinstance(data, cls):
            return data
        if not isinstance(data, dict):
            fail("", f"expected an object, got {type(data).__name__}")
        names = list(cls.model_fields)
        missing = [k for k, f in cls.model_fields.items() if f.is_required() and k not in data]
        if missing:
            fail(missing[0], "missing required key")
        extra = sorted(set(data) - set(names))
        if extra:
            fail(extra[0], f"unknown key (allowed: {', '.join(names)})")
        if info.context and info.context.get("plain"):
            return data  # validate_results normalised it already
        return {k: plain_value(v) for k, v in data.items()}  # numpy values from a stage
