"""The report's "Criteria side by side" section, from results.json's ``criteria`` and ``alignment``.

For the last checkpoint (the others in collapsed tables): the set sizes per layer of every
criterion (a figure and its table), the pairwise Jaccard overlap, stability across checkpoints,
each criterion's ablation specificity against its own matched random control, and the alignment
metrics per layer beside LRDS and SADS. Every element carries an ``id`` or ``data-*`` attribute the
browser tests find it by (tests/test_report.py).
"""

from __future__ import annotations

import numpy as np

from lingua_ray.report_common import colors, details, esc, figure, figure_html, fmt, fmt_ci, fmt_sd, note, table, tex

__all__ = ["criteria_markdown", "criteria_section", "specificity_by_criterion"]


def _fig_counts(cp: dict, names: list[str], L: int):
    """Set size per layer (summed over languages) of every criterion, one line each."""
    fig = figure(7.5, 3.4)
    ax = fig.subplots()
    for name, c in zip(names, colors(len(names))):
        counts = cp["criteria"][name]["counts"]
        ax.plot(range(L), np.sum([counts[lang] for lang in counts], axis=0), marker="o", ms=3, color=c,
                label=tex(name))
    ax.set_xlabel("layer")
    ax.set_ylabel("neurons in a language's set (Σ over languages)")
    ax.set_title(tex(f"set sizes per layer, {cp['label']}"))
    ax.legend(fontsize=8)
    return fig


def specificity_by_criterion(d: dict, label: str) -> list[dict]:
    """Per ablated criterion on checkpoint ``label``: the mean over languages of its specificity, of its
    matched random control's, and of the difference (the effect beyond a random set of the same sizes)."""
    out = []
    for name, ab in ((d.get("criteria") or {}).get("ablation") or {}).items():
        cp = next((c for c in ab["checkpoints"] if c["label"] == label), None)
        if cp is None:
            continue
        sp = list(cp["specificity"].values())

        def mean(key, rows=sp):
            vals = [r[key] for r in rows if r[key] is not None]
            return sum(vals) / len(vals) if vals else None

        diffs = [r["specificity"] - r["random_specificity_mean"] for r in sp
                 if r["specificity"] is not None and r["random_specificity_mean"] is not None]
        # A criterion that zeroes more neurons does more damage; per 1,000 neurons of each language's set
        # the criteria compare at equal cost (languages with an empty set left out).
        sizes = {r["mask"][len("key:"):]: r["n_neurons"] for r in cp["rows"] if r["mask"].startswith("key:")}
        per_k = [1000 * (r["specificity"] - r["random_specificity_mean"]) / sizes[lang]
                 for lang, r in cp["specificity"].items()
                 if sizes.get(lang) and r["specificity"] is not None and r["random_specificity_mean"] is not None]
        out.append({"criterion": name, "specificity": mean("specificity"),
                    "random_specificity": mean("random_specificity_mean"),
                    "beyond_random": sum(diffs) / len(diffs) if diffs else None,
                    "beyond_random_per_1k": sum(per_k) / len(per_k) if per_k else None,
                    "n_neurons": sum(sizes.values()),
                    "per_language": cp["specificity"]})
    return out


def _jaccard_table(M: list, names: list[str], attr: str) -> str:
    rows = ([f"<b>{esc(n)}</b>"] + [fmt(v, 3) for v in row] for n, row in zip(names, M))
    return table([""] + [esc(n) for n in names], rows, f"num {attr}")


def _alignment_table(d: dict, i: int) -> str:
    al, cp = d["alignment"]["checkpoints"][i], d["checkpoints"][i]
    metrics = ("retrieval", "mexa", "ilo", "cka")

    def cells(scope):
        return sum(([fmt(scope[m]["value"], 3), fmt_ci(scope[m]["ci"])] for m in metrics[:3]), []) + \
            [fmt(scope["cka"]["value"], 3)]

    head = ["layer", "LRDS", "SADS"] + sum(([m, "CI"] for m in ("retrieval", "MEXA", "ILO")), []) + ["CKA"]
    rows = [[str(k), fmt(cp["per_layer"]["lrds"][k]["value"]), fmt(cp["per_layer"]["sads"][k]["value"])]
            + cells(scope) for k, scope in enumerate(al["per_layer"])]
    rows.append(["all", fmt(cp["overall"]["lrds"]["value"]), fmt(cp["overall"]["sads"]["value"])]
                + cells(al["overall"]))
    return table(head, rows, "num alignment-per-layer")


def criteria_section(d: dict) -> str:
    """The section's HTML ('' when results.json has neither ``criteria`` nor ``alignment``)."""
    cr, al = d.get("criteria"), d.get("alignment")
    if cr is None and al is None:
        return ""
    level = d["settings"]["ci_level"]
    labels = [c["label"] for c in d["checkpoints"]]
    parts = ['<section id="criteria-side-by-side"><h2>Criteria side by side</h2>', note(
        "Every key-neuron criterion runs on the same stored activations (docs/criteria.md): zscore is the "
        "paper's, lape Tang et al. 2024, average_precision Kojima et al. 2024, lna Zhang et al. 2026. "
        "Overlaps are Jaccard |A ∧ B| / |A ∨ B| of their (language, layer, neuron) sets (— where both are "
        "empty). Specificity is own-language damage minus the mean damage to the others, in nats of log "
        "PPL ratio; each criterion is compared with random sets of its own per-layer sizes.")]
    if cr is not None:
        names, L = cr["names"], d["grid"]["n_layers"]
        last = cr["checkpoints"][-1]
        parts.append(figure_html(_fig_counts(last, names, L), "Set sizes per layer by criterion", esc(
            "Neurons selected per layer by each criterion, summed over languages (a neuron in two languages' "
            "sets counts twice)."), [last["label"]], labels))
        for i, cp in enumerate(cr["checkpoints"]):
            counts = table(["criterion"] + [str(k) for k in range(L)] + ["total", "distinct neurons"],
                           ([esc(n)] + [str(int(v)) for v in np.sum(list(cp["criteria"][n]["counts"].values()),
                                                                    axis=0)]
                            + [str(sum(cp["criteria"][n]["total"].values())), str(cp["criteria"][n]["n_neurons"])]
                            for n in names), "num criteria-counts")
            per_lang = table(["criterion"] + [esc(lang) for lang in d["grid"]["languages"]],
                             ([esc(n)] + [str(cp["criteria"][n]["total"][lang]) for lang in d["grid"]["languages"]]
                              for n in names), "num")
            body = (f"<h4>Set sizes per layer</h4>{counts}<h4>Totals per language</h4>{per_lang}"
                    f"<h4>Jaccard overlap (all languages and layers)</h4>"
                    f"{_jaccard_table(cp['overlap']['overall'], names, 'criteria-overlap')}")
            parts.append(details(f"criteria on {esc(cp['label'])}", body, open_=i == len(cr["checkpoints"]) - 1))
        if cr.get("stability"):
            rows = ([esc(n)] + [fmt(v, 3) for v in cr["stability"][n]["overall"]] for n in names)
            parts.append("<h3>Stability across checkpoints</h3>" + table(
                ["criterion"] + [f"{esc(a)} → {esc(b)}" for a, b in zip(labels[:-1], labels[1:])], rows,
                "num criteria-stability"))
        spec = specificity_by_criterion(d, labels[-1])
        if spec:
            ranked = [s for s in spec if s["beyond_random"] is not None]
            best = max(ranked, key=lambda s: s["beyond_random"]) if ranked else None
            answer = ("" if best is None else
                      f'<p class="answer" id="most-specific-criterion">Most language-specific in effect on '
                      f'{esc(labels[-1])}: <b>{esc(best["criterion"])}</b>, whose sets raise their own language\'s '
                      f'log PPL {fmt(best["beyond_random"], 3)} nats more (relative to the other languages) than '
                      "random sets of the same per-layer sizes, averaged over languages.</p>")
            dense = [s for s in spec if s["beyond_random_per_1k"] is not None]
            top = max(dense, key=lambda s: s["beyond_random_per_1k"]) if dense else None
            if top is not None:
                answer += (f'<p class="answer" id="most-specific-per-neuron">Per neuron zeroed: '
                           f'<b>{esc(top["criterion"])}</b>, {fmt(top["beyond_random_per_1k"], 3)} nats beyond random '
                           "per 1,000 neurons of a language's set (sets differ in size by criterion, and a larger "
                           "set does more damage).</p>")
            rows = ([esc(s["criterion"]), str(s["n_neurons"]), fmt(s["specificity"]), fmt(s["random_specificity"]),
                     fmt(s["beyond_random"]), fmt(s["beyond_random_per_1k"], 3)] for s in spec)
            parts.append("<h3>Ablation specificity against the matched random control</h3>" + answer + table(
                ["criterion", "neurons zeroed (Σ languages)", "specificity", "random specificity",
                 "specificity − random", "per 1,000 neurons"], rows, "num criteria-specificity"))
            langs = d["grid"]["languages"]
            detail = table(["criterion"] + [esc(lang) for lang in langs], (
                [esc(s["criterion"])] + [fmt_sd(s["per_language"][lang]["specificity"], None) + " vs "
                                         + fmt_sd(s["per_language"][lang]["random_specificity_mean"],
                                                  s["per_language"][lang]["random_specificity_sd"])
                                         if lang in s["per_language"] else "—" for lang in langs]
                for s in spec), "num")
            parts.append(details("specificity per language (criterion vs random mean ± sd)", detail))
    if al is not None:
        parts.append(f"<h3>Alignment per layer beside LRDS and SADS</h3><p>k = {al['knn_k']} neighbours, bridge "
                     f"threshold t = {al['bridge_threshold']} languages; intervals are {100 * level:g}% bootstraps "
                     "over units (CKA has none).</p>")
        for i, cp in enumerate(al["checkpoints"]):
            parts.append(details(f"alignment per layer: {esc(cp['label'])}", _alignment_table(d, i),
                                 open_=i == len(al["checkpoints"]) - 1))
    parts.append("</section>")
    return "".join(parts)


def _md(head: list[str], rows: list[list[str]]) -> str:
    return "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
                      + ["| " + " | ".join(r) + " |" for r in rows])


def criteria_markdown(d: dict) -> str:
    """The section's numbers as Markdown tables, for the last checkpoint (workflows/criteria_table.py):
    set sizes per language, the pairwise Jaccard, ablation specificity against each criterion's
    random control (with `per 1,000 neurons` of a language's set), and alignment per layer beside
    LRDS and SADS. Parts whose section is absent are left out; '' with neither section."""
    cr, al = d.get("criteria"), d.get("alignment")
    langs, out = d["grid"]["languages"], []
    label = d["checkpoints"][-1]["label"]

    def num(v, nd=3):
        return "—" if v is None else f"{v:.{nd}f}"

    if cr is not None:
        names, cp = cr["names"], cr["checkpoints"][-1]
        out.append(f"Set sizes on {label} (neurons):\n\n" + _md(
            ["criterion", "total (Σ languages)", "distinct neurons"] + langs,
            [[n, f"{sum(cp['criteria'][n]['total'].values()):,}", f"{cp['criteria'][n]['n_neurons']:,}"]
             + [f"{cp['criteria'][n]['total'][lang]:,}" for lang in langs] for n in names]))
        out.append("Jaccard overlap (all languages and layers):\n\n" + _md(
            [""] + names, [[n] + [num(v) for v in row] for n, row in zip(names, cp["overlap"]["overall"])]))
        spec = specificity_by_criterion(d, label)
        if spec:
            out.append("Ablation specificity (nats of log-PPL ratio, mean over languages):\n\n" + _md(
                ["criterion", "neurons zeroed", "specificity", "random control", "beyond random",
                 "per 1,000 neurons"],
                [[s["criterion"], f"{s['n_neurons']:,}", num(s["specificity"]), num(s["random_specificity"]),
                  num(s["beyond_random"]), num(s["beyond_random_per_1k"])] for s in spec]))
    if al is not None:
        a, c = al["checkpoints"][-1], d["checkpoints"][-1]

        def ci(m):
            return "" if m["ci"] is None else f" [{m['ci'][0]:.2f}, {m['ci'][1]:.2f}]"

        scopes = [(str(k), sc, c["per_layer"]["lrds"][k]["value"], c["per_layer"]["sads"][k]["value"])
                  for k, sc in enumerate(a["per_layer"])]
        scopes.append(("all", a["overall"], c["overall"]["lrds"]["value"], c["overall"]["sads"]["value"]))
        out.append(f"Alignment per layer (k = {al['knn_k']}, t = {al['bridge_threshold']}):\n\n" + _md(
            ["layer", "LRDS", "SADS", "retrieval", "MEXA", "bridge", "reach", "ILO", "CKA"],
            [[k, num(lr), num(sa, 4), num(sc["retrieval"]["value"]) + ci(sc["retrieval"]),
              num(sc["mexa"]["value"]) + ci(sc["mexa"]), num(sc["bridge"]["value"]), num(sc["reach"]["value"]),
              num(sc["ilo"]["value"]) + ci(sc["ilo"]), num(sc["cka"]["value"])] for k, sc, lr, sa in scopes]))
    return "\n\n".join(out)
