"""Optional torch.compile of a decoder's hook-free parts (``model.compile=true``), with an eager fallback.

What is compiled: in every decoder layer, each child except the FFN (attention, the norms), and the
FFN's activation function: the elementwise work between the big matmuls, which eager PyTorch runs as
one kernel per op. What stays eager: the FFN's projections, because lingua_ray's hooks sit on the
down-projection (hooks.py) and a compiled graph does not replay a hook's Python side effects (its
call counter, the per-layer outputs): compiling the whole layer makes `Reader`'s fired check refuse
the batch ("read hooks ... never ran"). Shapes are dynamic (packed rows vary in length).

Numbers change only by float rounding (the fused kernels sum in another order; measured ≤ 2.2e-7
relative on Gemma-3-270M, bench/bench_compile_threads.py), as token_budget's batching does, so
``model.compile`` is not part of any store or evaluation key.

Fallback: compilation happens on the first forward of each new shape. If the compiler fails there
(no C++ compiler, an unsupported op, a backend error), ``with_fallback`` logs one warning naming the
error, restores every compiled part to eager and runs the call again; the model then stays eager.
"""

from __future__ import annotations

import logging
from typing import Callable, TypeVar

import torch
from torch import nn

from lingua_ray.models.adapters import get_adapter

log = logging.getLogger(__name__)
T = TypeVar("T")


def compile_hook_free(model: nn.Module, backend="inductor") -> list[nn.Module]:
    """Compile (in place) every hook-free part of every decoder layer; returns the compiled modules."""
    adapter = get_adapter(model)
    hooked = {id(m) for m in adapter.down_projections(model)}
    parts: list[nn.Module] = []
    for layer in adapter.body_module(model).layers:
        for name, child in layer.named_children():
            # the FFN holds the capture point; any other child that did would be left eager too
            if name != "mlp" and not any(id(m) in hooked for m in child.modules()):
                parts.append(child)
        act = getattr(getattr(layer, "mlp", None), "act_fn", None)
        if isinstance(act, nn.Module):
            parts.append(act)
    for part in parts:
        part.compile(backend=backend, dynamic=True)
    return parts


def uncompile(parts: list[nn.Module]) -> None:
    """Back to eager: ``nn.Module.compile`` only sets ``_compiled_call_impl``."""
    for part in parts:
        part._compiled_call_impl = None


def is_compile_error(e: BaseException) -> bool:
    """An error of the compiler (dynamo or a backend), not of the model or of lingua_ray."""
    from torch._dynamo.exc import TorchDynamoException

    errors: tuple[type[BaseException], ...] = (TorchDynamoException,)
    try:
        from torch._inductor.exc import InductorError

        errors += (InductorError,)
    except ImportError:  # older torch
        pass
    return isinstance(e, errors)


def with_fallback(parts: list[nn.Module], fn: Callable[[], T], what: str = "") -> T:
    """``fn()``; on a compiler error, warn once, make ``parts`` eager (the list is emptied) and retry."""
    if not parts:
        return fn()
    try:
        return fn()
    except Exception as e:  # noqa: BLE001 - only compiler errors are handled; the rest re-raise
        if not is_compile_error(e):
            raise
        cause = getattr(e, "inner_exception", None) or e.__cause__ or e  # the backend's own error
        first = str(cause).strip().splitlines()[0][:300] if str(cause).strip() else ""
        log.warning("model.compile: torch.compile failed%s (%s: %s); running eager from here",
                    f" {what}" if what else "", type(cause).__name__, first)
        uncompile(parts)
        parts.clear()
        torch._dynamo.reset()
        return fn()
