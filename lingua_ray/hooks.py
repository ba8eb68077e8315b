"""Hooks at the capture point: READ (reduce per unit on the device) and ZERO (deactivate neurons).

One abstraction, TransformerLens-style: a *hook point* names, per model, one module per
decoder layer and which side of it is hooked. The default point, ``down_proj_input``, is
METHOD.md's capture point u[layer, t, k]: the *input* of each layer's FFN down-projection,
shape (B, T, F), found by ``lingua_ray.models.adapters``. ``HookSet`` registers one hook per
chosen layer of a point, counts how often each ran, and removes them by handle on exit
(exceptions included; hooks others registered stay). Its ``check_fired`` is the ONE test
that an ablation or a capture actually happened: a forward that bypasses the hooked module
(a patched MLP, BLOOM's slow_but_exact path) runs without error and would otherwise
silently read nothing or zero nothing.

Two managers sit on ``HookSet``:
    ``Reader``          READ: per-unit statistics (U, L, F) float32 from ``STATISTICS``, for
                        the U units of a packed or padded batch (``batching.UnitPositions``);
                        per-token tensors never leave the device; the forward may stop after
                        the last read (``StopForward``).
    ``zero_neurons``    ZERO: a bool mask (L, F) written as exact zeros in the model's dtype.

A new statistic is one function registered in ``STATISTICS`` (``@statistic("name")``),
its name a ``lingua_ray.config.Statistic`` value; it may declare another hook point,
itself one entry of ``HOOK_POINTS``. ``act_pos_frac`` does: it reads ``act_fn_output``, the
output of each layer's FFN activation-function module (``Adapter.activation_modules``), shape
(B, T, F) like the capture point.
"""

from __future__ import annotations

from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from lingua_ray.batching import UnitPositions
from lingua_ray.config import ConfigError, Statistic
from lingua_ray.models.adapters import get_adapter
from lingua_ray.registry import Registry


class HookError(RuntimeError):
    """A hook that should have run did not (default error of ``HookSet.check_fired``)."""


# --------------------------------------------------------------------------- hook points


@dataclass(frozen=True)
class HookPoint:
    """Where hooks go: one module per decoder layer, and which of its tensors is hooked.

    Attributes:
        name: key in ``HOOK_POINTS``.
        modules: ``model -> [module per layer]``; names model internals only via the adapter.
        side: "input" (forward pre-hook on ``args[0]``) or "output" (forward hook on the output).
        description: what the hooked tensor is, for error messages.
    """

    name: str
    modules: Callable[[nn.Module], list[nn.Module]]
    side: str = "input"
    description: str = ""

    def __post_init__(self) -> None:
        if self.side not in ("input", "output"):
            raise ValueError(f"hook point {self.name!r}: side must be 'input' or 'output', got {self.side!r}")


HOOK_POINTS: Registry[HookPoint] = Registry("hook point", hint="Add one in lingua_ray/hooks.py.")

DOWN_PROJ_INPUT = HOOK_POINTS.register(
    "down_proj_input",
    HookPoint(
        "down_proj_input",
        modules=lambda model: get_adapter(model).down_projections(model),
        side="input",
        description="the FFN down-projection input",
    ),
)


# LAPE's activation (issue 12): the FFN activation-function output, act_fn(gate(x)) for gated FFNs
# (the down-projection input is act(gate(x)) * up(x), whose sign differs) and the activation output,
# i.e. the down-projection input itself, for BLOOM / GPT-2 / GPT-NeoX. The adapter names the module.
ACT_FN_OUTPUT = HOOK_POINTS.register(
    "act_fn_output",
    HookPoint(
        "act_fn_output",
        modules=lambda model: get_adapter(model).activation_modules(model),
        side="output",
        description="the FFN activation-function output",
    ),
)


def _point(point: str | HookPoint) -> HookPoint:
    return point if isinstance(point, HookPoint) else HOOK_POINTS.get(point)


def _model_type(model: nn.Module) -> str:
    return str(getattr(getattr(model, "config", None), "model_type", type(model).__name__))


# --------------------------------------------------------------------------- one hook set, one fired check

# fn(x) -> None (read only) or a tensor that replaces x; x is the hooked tensor, e.g. u (B, T, F).
TensorFn = Callable[[torch.Tensor], "torch.Tensor | None"]


class HookSet:
    """Hooks at one hook point on some layers; counts calls; a context manager.

    Args:
        model: a ``*ForCausalLM`` or decoder body with an adapter.
        fns: layer → ``fn(x)``; ``fn`` returns None to leave x alone or a tensor to replace it.
        point: a ``HOOK_POINTS`` name or a ``HookPoint``.
        role: what the hooks do, for messages ("read", "deactivation").
        error: exception class ``check_fired`` raises.

    On exit every hook this set registered is removed by its handle, exceptions included.
    """

    def __init__(
        self,
        model: nn.Module,
        fns: Mapping[int, TensorFn],
        point: str | HookPoint = DOWN_PROJ_INPUT,
        role: str = "read",
        error: type[Exception] = HookError,
    ):
        self.point = _point(point)
        self.modules = self.point.modules(model)
        bad = [layer for layer in fns if not 0 <= layer < len(self.modules)]
        if bad:
            raise error(f"{role} hooks asked for layers {bad}, but {_model_type(model)!r} has "
                        f"{len(self.modules)} at {self.point.name}")
        self.model_type = _model_type(model)
        self.layers = sorted(fns)
        self.role = role
        self.error = error
        self._fns = dict(fns)
        self._calls = {layer: 0 for layer in self.layers}
        self._handles: list = []

    def _wrap(self, layer: int):
        fn, calls = self._fns[layer], self._calls

        if self.point.side == "input":
            def pre_hook(module, args):
                calls[layer] += 1
                x = fn(args[0])
                return None if x is None else (x,) + tuple(args[1:])

            return pre_hook

        def hook(module, args, output):
            calls[layer] += 1
            return fn(output)

        return hook

    def __enter__(self) -> "HookSet":
        try:
            for layer in self.layers:
                module = self.modules[layer]
                if self.point.side == "input":
                    self._handles.append(module.register_forward_pre_hook(self._wrap(layer)))
                else:
                    self._handles.append(module.register_forward_hook(self._wrap(layer)))
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def remove(self) -> None:
        """Remove this set's hooks (by handle; other owners' hooks on the same modules stay)."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    @property
    def calls(self) -> dict[int, int]:
        """layer → forward calls that went through its hook so far."""
        return dict(self._calls)

    def mark(self) -> dict[int, int]:
        """A snapshot of ``calls``, to pass as ``since`` to ``silent_layers`` / ``check_fired``."""
        return dict(self._calls)

    def silent_layers(self, since: Mapping[int, int] | None = None) -> list[int]:
        """Hooked layers whose hook has not run (since the ``mark`` given, else ever)."""
        since = since or {}
        return [layer for layer, n in self._calls.items() if n <= since.get(layer, 0)]

    def check_fired(self, since: Mapping[int, int] | None = None, during: str = "") -> None:
        """Raise ``error`` if a hooked layer's hook did not run: the read or zero did not happen.

        ``during`` completes the message, e.g. "while evaluating 'fr'".
        """
        silent = self.silent_layers(since)
        if silent:
            where = f" {during}" if during else ""
            raise self.error(
                f"{self.role} hooks on layers {silent} never ran{where} (model_type {self.model_type!r}): "
                f"the forward bypasses {self.point.description or self.point.name}"
            )


# --------------------------------------------------------------------------- READ: statistics


@dataclass(frozen=True)
class StatisticSpec:
    """One per-unit statistic: ``reduce(x (B, T, F), units) -> (U, F) float32``, at hook point ``point``."""

    name: str
    reduce: Callable[[torch.Tensor, UnitPositions], torch.Tensor]
    point: str = DOWN_PROJ_INPUT.name


STATISTICS: Registry[StatisticSpec] = Registry(
    "statistic", error=ConfigError,
    hint="Add its value to lingua_ray.config.Statistic and register a reduction in lingua_ray/hooks.py.",
)


def statistic(name: str, point: str = DOWN_PROJ_INPUT.name):
    """Decorator: register ``fn(x (B, T, F), units: UnitPositions) -> (U, F) float32`` as statistic ``name``."""

    def deco(fn):
        STATISTICS.register(name, StatisticSpec(name, fn, point))
        return fn

    return deco


# Sums are taken in float32 so a bf16 model's sums don't lose precision (``.float()`` is free for
# a float32 model: it returns u itself, so the hook holds no second copy of the activation).
@statistic(Statistic.mean.value)
def _mean(u: torch.Tensor, units: UnitPositions) -> torch.Tensor:
    """mean over t in T(s) of u[t, k]   (METHOD.md; the default)."""
    return units.sum(u.float()) / units.counts[:, None]


@statistic(Statistic.last.value)
def _last(u: torch.Tensor, units: UnitPositions) -> torch.Tensor:
    """u[t_last, k], t_last the last own token."""
    return u.reshape(-1, u.shape[-1])[units.last].float()


@statistic(Statistic.pos_frac.value)
def _pos_frac(u: torch.Tensor, units: UnitPositions) -> torch.Tensor:
    """fraction of t in T(s) with u[t, k] > 0   (LAPE-style activation probability)."""
    return units.sum((u > 0).float()) / units.counts[:, None]


@statistic(Statistic.act_pos_frac.value, point=ACT_FN_OUTPUT.name)
def _act_pos_frac(h: torch.Tensor, units: UnitPositions) -> torch.Tensor:
    """fraction of t in T(s) with act_fn(gate(x))[t, k] > 0, at the activation-function output
    (LAPE's and LNA's p; equal to pos_frac only where the FFN is not gated)."""
    return units.sum((h > 0).float()) / units.counts[:, None]


def statistic_names(statistics: Sequence[str | Statistic]) -> list[str]:
    """Plain names, each checked against ``STATISTICS`` (unknown → ConfigError listing the valid ones)."""
    names = [s.value if isinstance(s, Statistic) else str(s) for s in statistics]
    for name in names:
        STATISTICS.get(name)
    return names


class StopForward(Exception):
    """Raised by a ``Reader`` hook once every hooked layer has been read: the rest of the forward
    (the last down-projection, the final norm) computes nothing the statistics need. ``Reader.run``
    catches it; it never escapes a ``Reader``."""


class Reader:
    """READ hooks: each forward reduces the hooked tensors to per-unit statistics on the device.

    Usage::

        with Reader(model, ["mean", "pos_frac"], error=CaptureError, stop=True) as reader:
            reader.start(units)        # UnitPositions of the coming batch (or a (B, T) own mask), on the device
            reader.run(body, **inputs) # one forward; with stop=True it ends after the last read
            stats = reader.collect()   # {name: (U, L, F) float32}, raises if a layer's hook did not run

    One ``HookSet`` per hook point the statistics use, hooked on every layer.
    """

    def __init__(self, model: nn.Module, statistics: Sequence[str | Statistic], error: type[Exception] = HookError,
                 stop: bool = False):
        self.specs = [STATISTICS.get(name) for name in statistic_names(statistics)]
        if not self.specs:
            raise error("no statistics to read")
        self.stop = stop
        self._units: UnitPositions | None = None
        self._out: dict[str, list[torch.Tensor | None]] = {}
        self._marks: list[dict[int, int]] = []
        self.sets: list[HookSet] = []
        for point in dict.fromkeys(spec.point for spec in self.specs):
            specs = [s for s in self.specs if s.point == point]
            n_layers = len(_point(point).modules(model))
            self.sets.append(HookSet(model, {layer: self._reduce(specs, layer, n_layers - 1)
                                             for layer in range(n_layers)}, point, role="read", error=error))
        self._stack = ExitStack()

    def _reduce(self, specs: list[StatisticSpec], layer: int, last: int) -> TensorFn:
        def fn(x: torch.Tensor) -> None:
            for spec in specs:
                self._out[spec.name][layer] = spec.reduce(x, self._units)
            if self.stop and layer == last and self._all_read():
                raise StopForward
            return None  # read only: the forward goes on unchanged

        return fn

    def _all_read(self) -> bool:
        """Every set's last layer has run since ``start`` (a set's hook counts its call before fn runs)."""
        return all(hs.calls[hs.layers[-1]] > mark.get(hs.layers[-1], 0) for hs, mark in zip(self.sets, self._marks))

    def __enter__(self) -> "Reader":
        for hook_set in self.sets:
            self._stack.enter_context(hook_set)
        return self

    def __exit__(self, *exc) -> None:
        self._stack.close()

    def start(self, units: UnitPositions | torch.Tensor) -> None:
        """Prepare for one batch: its ``UnitPositions``, or a (B, T) integer own mask (one unit per row,
        every row ≥ 1 own token), on the model's device."""
        self._units = units if isinstance(units, UnitPositions) else UnitPositions.of(units)
        self._out = {spec.name: [None] * len(hs.modules) for hs in self.sets for spec in self.specs
                     if spec.point == hs.point.name}
        self._marks = [hs.mark() for hs in self.sets]

    def run(self, body: nn.Module, **inputs) -> None:
        """``body(**inputs)``; with ``stop`` the forward ends at the last read (``StopForward``, caught here)."""
        try:
            body(**inputs)
        except StopForward:
            pass

    def collect(self, during: str = "") -> dict[str, torch.Tensor]:
        """{name: (U, L, F) float32} of the batch since ``start``, in the order statistics were given."""
        for hook_set, mark in zip(self.sets, self._marks, strict=True):
            hook_set.check_fired(mark, during)
        return {spec.name: torch.stack(self._out[spec.name], 1) for spec in self.specs}


# --------------------------------------------------------------------------- ZERO: deactivation


def _zero_fn(index: torch.Tensor) -> TensorFn:
    per_device: dict[torch.device, torch.Tensor] = {}

    def fn(x: torch.Tensor) -> torch.Tensor:
        idx = per_device.get(x.device)
        if idx is None:
            idx = per_device[x.device] = index.to(x.device)
        # index_fill writes exact zeros in x's dtype; a multiply by a keep-vector would turn inf into nan.
        return x.index_fill(-1, idx, 0)

    return fn


@contextmanager
def zero_neurons(
    model: nn.Module,
    mask: np.ndarray,
    point: str | HookPoint = DOWN_PROJ_INPUT,
    error: type[Exception] = HookError,
) -> Iterator[HookSet]:
    """ZERO hooks: neurons (layer, k) with ``mask[layer, k]`` read as exact zeros while open.

    Args:
        mask: bool ndarray (L, F), L = the point's layer count (checked by the caller).

    One hook per layer with at least one masked neuron; layers with none are untouched,
    so an all-False mask leaves the forward bit-identical. Yields the ``HookSet``
    (``.layers``, ``.calls``, ``.check_fired``).
    """
    fns = {layer: _zero_fn(torch.from_numpy(np.flatnonzero(row))) for layer, row in enumerate(mask) if row.any()}
    with HookSet(model, fns, point, role="deactivation", error=error) as hook_set:
        yield hook_set


def hook_count(model: nn.Module, point: str | HookPoint = DOWN_PROJ_INPUT) -> int:
    """Hooks currently on the point's modules, any owner (pre-hooks for an input point, else forward hooks)."""
    p = _point(point)
    attr = "_forward_pre_hooks" if p.side == "input" else "_forward_hooks"
    return sum(len(getattr(m, attr)) for m in p.modules(model))
