"""The recorder against its peers: the same units, the same statistic, one process, round-robin.

    python bench/bench_peers.py [--units 10] [--rounds 3] [--threads N] [--batch 8] [--device cpu]

Every way computes, for each UDHR unit (en, zh, ar; ``--units`` per language, default all), the
mean over the unit's own tokens (special tokens excluded) of every layer's FFN down-projection
input on the offline default model (Gemma-3-270M, float32 on CPU): METHOD.md's a[c, l, s].

* authors: the release's way, one sentence per ``model.generate(max_new_tokens=1)`` with forward
  pre-hooks on the down-projections (it reduced over tokens on the host; here inside the hook);
* nnsight: ``LanguageModel.trace`` on length-sorted padded batches of ``--batch``, every layer's
  ``down_proj.input.save()``, then ``tracer.stop()``; the means taken from the saved tensors;
* transformer_lens: ``TransformerBridge.run_with_cache`` (TransformerLens 4, which supports
  Gemma-3 through the bridge; it forces eager attention) with a names filter on every
  ``blocks.i.mlp.out.hook_in`` and ``logits_to_keep=1``, same batches;
* hf_hooks: plain batched forward pre-hooks on the decoder body, same batches, mean in the hook;
* lingua_ray: ``capture_texts`` with the default ``CaptureConfig`` (packed rows, forward stopped
  after the last capture point).

nnsight and TransformerLens come from the optional ``bench`` extra; a missing one is reported and
skipped. Each of them gets its own deep copy of the model (both wrap or reconfigure the module).
Printed per way, in wall-clock and in CPU time (see bench_ablation.py on why both): tokens/s (own
tokens), ratio to the authors' way and to the fastest other way, useful body FLOPs per second as a
share of the fp32 matmul rate measured between the rounds, and the max deviation from the authors'
way (per unit: max |a − a_authors| / max |a_authors|).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import warnings

import numpy as np
import torch

from benchlib import CLOCKS, body_flops, env_line, matmul_rate, real_model, spaced, udhr_texts
from lingua_ray.capture import capture_texts
from lingua_ray.config import CaptureConfig
from lingua_ray.models.adapters import get_adapter


def own_mean(u: torch.Tensor, own: torch.Tensor) -> torch.Tensor:
    """u (B, T, F), own (B, T) → (B, F) float32 mean over own positions."""
    own = own.to(u.dtype)
    return (torch.einsum("btf,bt->bf", u.float(), own.float()) / own.sum(1, keepdim=True)).float()


class Ways:
    def __init__(self, model, tok, texts: list[str], batch: int):
        self.model, self.tok, self.texts = model, tok, texts
        self.downs = get_adapter(model).down_projections(model)
        self.L = len(self.downs)
        enc = tok(texts, add_special_tokens=True, return_special_tokens_mask=True)
        self.ids, self.special = enc["input_ids"], enc["special_tokens_mask"]
        order = sorted(range(len(texts)), key=lambda i: -len(self.ids[i]))
        self.batches = [order[k : k + batch] for k in range(0, len(order), batch)]

    def padded(self, index):
        w = max(len(self.ids[i]) for i in index)
        pad = self.tok.pad_token_id or 0
        ids = torch.tensor([self.ids[i] + [pad] * (w - len(self.ids[i])) for i in index])
        att = torch.tensor([[1] * len(self.ids[i]) + [0] * (w - len(self.ids[i])) for i in index])
        own = torch.tensor([[1 - s for s in self.special[i]] + [0] * (w - len(self.ids[i])) for i in index])
        return ids, att, own

    def authors(self) -> np.ndarray:
        out = np.zeros((len(self.texts), self.L, self.downs[0].in_features), np.float32)
        cur: dict = {}
        hooks = [m.register_forward_pre_hook(lambda mod, a, k=k: cur.__setitem__(k, own_mean(a[0], cur["own"])))
                 for k, m in enumerate(self.downs)]
        try:
            for i in range(len(self.texts)):
                ids = torch.tensor([self.ids[i]])
                cur["own"] = torch.tensor([[1 - s for s in self.special[i]]])
                self.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=1,
                                    do_sample=False, pad_token_id=self.tok.pad_token_id)
                out[i] = torch.stack([cur[k][0] for k in range(self.L)]).numpy()
        finally:
            for h in hooks:
                h.remove()
        return out

    def hf_hooks(self) -> np.ndarray:
        out = np.zeros((len(self.texts), self.L, self.downs[0].in_features), np.float32)
        body = get_adapter(self.model).body_module(self.model)
        cur: dict = {}
        hooks = [m.register_forward_pre_hook(lambda mod, a, k=k: cur.__setitem__(k, own_mean(a[0], cur["own"])))
                 for k, m in enumerate(self.downs)]
        try:
            for index in self.batches:
                ids, att, cur["own"] = self.padded(index)
                body(input_ids=ids, attention_mask=att, use_cache=False)
                out[index] = torch.stack([cur[k] for k in range(self.L)], 1).numpy()
        finally:
            for h in hooks:
                h.remove()
        return out

    def lingua_ray(self) -> np.ndarray:
        return capture_texts(self.model, self.tok, self.texts, CaptureConfig()).stats["mean"]


def nnsight_way(ways: Ways):
    from nnsight import LanguageModel

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lm = LanguageModel(copy.deepcopy(ways.model), tokenizer=ways.tok)

    def run(ways: Ways) -> np.ndarray:  # module paths as Gemma/LLaMA name them
        out = np.zeros((len(ways.texts), ways.L, ways.downs[0].in_features), np.float32)
        for index in ways.batches:
            ids, att, own = ways.padded(index)
            saves: list = []
            with lm.trace({"input_ids": ids, "attention_mask": att}) as tracer:
                for k in range(ways.L):
                    saves.append(lm.model.layers[k].mlp.down_proj.input.save())
                tracer.stop()
            out[index] = torch.stack([own_mean(s, own) for s in saves], 1).numpy()
        return out

    return run


def transformer_lens_way(ways: Ways, path: str):
    from transformer_lens.model_bridge import TransformerBridge

    bridge = TransformerBridge.boot_transformers(path, hf_model=copy.deepcopy(ways.model), tokenizer=ways.tok,
                                                 device=str(next(ways.model.parameters()).device))
    names = [f"blocks.{k}.mlp.out.hook_in" for k in range(ways.L)]
    wanted = set(names)

    def run(ways: Ways) -> np.ndarray:
        out = np.zeros((len(ways.texts), ways.L, ways.downs[0].in_features), np.float32)
        for index in ways.batches:
            ids, att, own = ways.padded(index)
            _, cache = bridge.run_with_cache(ids, names_filter=lambda n: n in wanted, attention_mask=att,
                                             logits_to_keep=1)
            out[index] = torch.stack([own_mean(cache[n], own) for n in names], 1).numpy()
        return out

    return run


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--units", type=int, default=None,
                    help="units per language, evenly spaced through the corpus (default: all 51)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    languages = ["en", "zh", "ar"]
    model, tok = real_model(a.device)
    texts = [t for ts in udhr_texts(languages).values() for t in spaced(ts, a.units)]
    ways = Ways(model, tok, texts, a.batch)
    fns = {"authors": Ways.authors}
    try:
        import nnsight

        fns[f"nnsight {nnsight.__version__}"] = nnsight_way(ways)
    except ImportError as e:
        print(f"nnsight: not installed ({e}); skipped. pip install -e '.[bench]'")
    try:
        import transformer_lens
        from importlib.metadata import version

        from lingua_ray.models.weights import model_cache_root

        fns[f"transformer_lens {version('transformer-lens')}"] = transformer_lens_way(
            ways, str(model_cache_root("~/.cache/lingua_ray/models") / "gemma3-270m"))
        del transformer_lens
    except ImportError as e:
        print(f"transformer_lens: not installed ({e}); skipped. pip install -e '.[bench]'")
    fns["hf_hooks"] = Ways.hf_hooks
    fns["lingua_ray"] = Ways.lingua_ray

    lengths = [len(x) for x in ways.ids]
    n_own = sum(len(s) - sum(s) for s in ways.special)
    flops = body_flops(model, lengths)
    print(env_line(a.device))
    print(f"Gemma-3-270M {next(model.parameters()).dtype}, UDHR {languages}: {len(texts)} units, {sum(lengths)} "
          f"tokens ({n_own} own); body {flops / sum(lengths) / 1e6:.0f} MFLOP/token; peers' batch {a.batch}", flush=True)
    with torch.inference_mode():
        warm = Ways(model, tok, texts[:2], a.batch)
        for fn in fns.values():  # warm-up: first-call costs (allocator, tracing setup) out of the timings
            fn(warm)
        got: dict[str, np.ndarray] = {}
        times = {k: {c: [] for c in CLOCKS} for k in fns}
        rates = {c: [matmul_rate(device=a.device, clock=c)] for c in CLOCKS}
        for r in range(a.rounds):
            for name, fn in fns.items():
                t0 = {c: f() for c, f in CLOCKS.items()}
                got[name] = fn(ways)
                for c, f in CLOCKS.items():
                    times[name][c].append(f() - t0[c])
            print(f"round {r + 1}/{a.rounds}: " + ", ".join(f"{k} {times[k][c][-1]:.1f}s {c}" for k in fns
                                                             for c in list(CLOCKS)[:1]), flush=True)
            for c in CLOCKS:
                rates[c].append(matmul_rate(device=a.device, clock=c))
    ref = got["authors"]
    scale = np.abs(ref).max(axis=(1, 2))
    dev = {k: float((np.abs(v - ref).max(axis=(1, 2)) / scale).max()) for k, v in got.items()}
    for c in CLOCKS:
        rate = statistics.median(rates[c])
        med = {k: statistics.median(v[c]) for k, v in times.items()}
        tps = {k: n_own / t for k, t in med.items()}
        print(f"\n[{c} time] fp32 matmul rate {rate / 1e9:.1f} GFLOP/s (median of {len(rates[c])}, "
              f"{min(rates[c]) / 1e9:.1f}-{max(rates[c]) / 1e9:.1f})")
        print(f"  {'way':24s} {'tokens/s':>9s} {'x authors':>9s} {'x fastest other':>15s} {'matmul share':>12s} "
              f"{'max dev':>8s}  rounds (s)")
        for k in fns:
            best_other = max(v for n, v in tps.items() if n != k)
            print(f"  {k:24s} {tps[k]:9.0f} {tps[k] / tps['authors']:8.2f}x {tps[k] / best_other:14.2f}x "
                  f"{flops / med[k] / rate:11.0%} {dev[k]:8.1e}  {', '.join(f'{t:.1f}' for t in times[k][c])}")


if __name__ == "__main__":
    main()
