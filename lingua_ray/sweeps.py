"""Multirun members that never collide: each gets its own run name, folder and store.

``conf/config.yaml`` names a run ``${model.name}-${corpus.source}${oc.env:LINGUA_RAY_MEMBER,""}``
and registers ``MemberNames`` as a Hydra callback. In a multirun, before each member's task
runs, the callback sets ``LINGUA_RAY_MEMBER`` to ``__<key>-<value>`` for each swept override
(the ones that differ between members), so

    -m 'corpus.languages=[en,fr,de],[en,fr,es]'

runs ``runs/tiny-jsonl__corpus.languages-en+fr+de`` and ``runs/tiny-jsonl__corpus.languages-en+fr+es``,
each with its own ``activations.zarr``. A single run (and ``compose()`` in tests) sees no
variable and keeps ``${model.name}-${corpus.source}``, so resuming a run never renames it.

Refused at multirun start: a fixed ``run.name`` or a fixed ``run.out_dir`` without ``${run.name}``
(every member would overwrite the others' results). A fixed ``store.path`` is the user saying the
members share one store: allowed, with a warning.
"""

from __future__ import annotations

import logging
import os
import re
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback

MEMBER_ENV = "LINGUA_RAY_MEMBER"
log = logging.getLogger("lingua_ray")


class SweepError(ValueError):
    """A multirun whose members would write into one another's folder."""


def _clean(value: str) -> str:
    """A value as a name fragment: lists as a+b+c; only [A-Za-z0-9._+-], so the name is a valid
    unquoted Hydra value and a plain path or URL segment (no '=', ',', '/')."""
    v = re.sub(r"\s+", "", value)
    if v[:1] in "[(" and v[-1:] in "])":
        v = v[1:-1].replace(",", "+")
    v = re.sub(r"[^A-Za-z0-9._+-]+", "_", v).strip("_")
    return v or "_"


def _parse(overrides: list[str]) -> list[Any]:
    return OverridesParser.create().parse_overrides(list(overrides))


def member_suffix(member_overrides: list[str], swept: list[str]) -> str:
    """``__key-value`` for each swept key in this member's overrides (command-line order); "" if none."""
    return "".join(f"__{o.get_key_element().lstrip('+~')}-{_clean(o.get_value_element_as_str())}"
                   for o in _parse(member_overrides) if o.get_key_element() in swept)


def swept_keys(sweep_overrides: list[str]) -> list[str]:
    """The keys a multirun command sweeps (``a=1,2``, ``range(...)``, ``choice(...)``), in order;
    refuses fixed run names and output folders that every member would share."""
    parsed = _parse(sweep_overrides)
    swept = [o.get_key_element() for o in parsed if o.is_sweep_override()]
    if not swept:
        return swept
    for o in parsed:
        if o.is_sweep_override():
            continue
        key, value = o.get_key_element().lstrip("+~"), str(o.value())
        if key == "run.name":
            raise SweepError(f"run.name={value} is fixed for every member of this multirun: they would share one "
                             "folder and store. Drop it (each member is then named after its swept overrides) "
                             "or sweep it")
        if key == "run.out_dir" and "${run.name}" not in value:
            raise SweepError(f"run.out_dir={value} is fixed for every member of this multirun: each would overwrite "
                             "the others' results. Interpolate ${run.name} (e.g. 'run.out_dir=/mnt/runs/${run.name}')")
        if key == "store.path" and "${run.name}" not in value:
            log.warning("store.path=%s is fixed: every member of this multirun records into that one store", value)
    return swept


class MemberNames(Callback):
    """Hydra callback (``hydra.callbacks`` in conf/config.yaml) setting ``LINGUA_RAY_MEMBER``.

    Hydra turns an exception raised in a callback into a warning and carries on, which here would
    mean members silently sharing a folder. So every failure leaves as SystemExit (which Hydra
    does not catch): the multirun stops with the one-line reason before the member writes.
    """

    def __init__(self) -> None:
        self.swept: list[str] | None = None
        self.seen: dict[str, str] = {}  # out_dir -> the overrides of the member that used it

    def on_run_start(self, config: Any, **kwargs: Any) -> None:
        os.environ.pop(MEMBER_ENV, None)  # a single run is never renamed

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        try:
            self.swept = swept_keys(list(config.hydra.overrides.task))
        except Exception as e:  # noqa: BLE001 - see the class docstring
            raise SystemExit(f"multirun refused: {e}") from None

    def on_job_start(self, config: Any, **kwargs: Any) -> None:
        # Runs after Hydra copied the task config but before the task resolves it, so the
        # ${oc.env:LINGUA_RAY_MEMBER} in run.name picks this up.
        if self.swept is None:
            os.environ.pop(MEMBER_ENV, None)
            return
        try:
            self._name(config)
        except Exception as e:  # noqa: BLE001 - see the class docstring
            raise SystemExit(f"multirun member refused: {e}") from None

    def _name(self, config: Any) -> None:
        overrides = list(config.hydra.overrides.task)
        os.environ[MEMBER_ENV] = member_suffix(overrides, self.swept)
        # Two values can clean to one name ("/a/b" and "/a_b"): refuse before this member writes.
        from omegaconf import OmegaConf

        out_dir = os.path.normpath(str(OmegaConf.select(config, "run.out_dir")))
        if out_dir in self.seen:
            raise SweepError(f"multirun members {self.seen[out_dir]} and {' '.join(overrides)} would both write "
                             f"{out_dir}; give one of them its own run.name or run.out_dir")
        self.seen[out_dir] = " ".join(overrides)

    def on_job_end(self, config: Any, **kwargs: Any) -> None:
        os.environ.pop(MEMBER_ENV, None)


__all__ = ["MEMBER_ENV", "MemberNames", "SweepError", "member_suffix", "swept_keys"]
