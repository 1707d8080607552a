"""The comparison a team can decide from: table, confidence intervals, winners, plots, HTML."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

from .evaluation import paired_difference

ORDER = ("base", "full", "lora", "qlora")
LABEL = {"base": "base (untouched)", "full": "full fine-tuning", "lora": "LoRA", "qlora": "QLoRA (4-bit)"}


def _ok(results: dict) -> dict[str, dict]:
    return {m: results[m] for m in ORDER if isinstance(results.get(m), dict) and results[m].get("status") == "ok"}


def comparison(results: dict) -> dict:
    """Winners on quality, memory and speed, paired accuracy differences, and a recommendation."""
    ok = _ok(results)
    trained = {m: r for m, r in ok.items() if m != "base"}
    out: dict = {"pairs": {}, "winners": {}, "recommendation": ""}
    names = list(ok)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            d = paired_difference(ok[b]["correct"], ok[a]["correct"])
            out["pairs"][f"{b}-vs-{a}"] = d
    if not trained:
        out["recommendation"] = "No technique finished; see the errors in results.json."
        return out
    best_q = max(trained, key=lambda m: trained[m]["accuracy"])
    out["winners"] = {
        "quality": best_q,
        "memory": min(trained, key=lambda m: trained[m]["peak_memory_bytes"]),
        "speed": max(trained, key=lambda m: trained[m]["tokens_per_second"]),
        "disk": min(trained, key=lambda m: trained[m]["saved_bytes"]),
    }
    tied = [m for m in trained if m != best_q and _pair(out, best_q, m)["within_noise"]]
    rec = [f"Best accuracy: {LABEL[best_q]} ({trained[best_q]['accuracy']:.1%})."]
    if tied:
        rec.append(f"{', '.join(LABEL[m] for m in tied)} {'is' if len(tied) == 1 else 'are'} within noise of it "
                   "(paired bootstrap 95% interval of the difference contains 0).")
        cheapest = min([best_q] + tied, key=lambda m: (trained[m]["peak_memory_bytes"], trained[m]["saved_bytes"]))
        if cheapest != best_q:
            rec.append(f"Since quality is indistinguishable, prefer {LABEL[cheapest]}: less peak memory "
                       f"({_mb(trained[cheapest]['peak_memory_bytes'])} vs {_mb(trained[best_q]['peak_memory_bytes'])})"
                       f" and a {_mb(trained[cheapest]['saved_bytes'])} artefact.")
    else:
        rec.append("Its lead over the other techniques is larger than the noise on this test set.")
    if "base" in ok:
        rec.append(f"The untouched base model scores {ok['base']['accuracy']:.1%}.")
    out["recommendation"] = " ".join(rec)
    return out


def _pair(cmp: dict, a: str, b: str) -> dict:
    return cmp["pairs"].get(f"{a}-vs-{b}") or {**cmp["pairs"][f"{b}-vs-{a}"], "diff": -cmp["pairs"][f"{b}-vs-{a}"]["diff"]}


def _mb(b: float) -> str:
    return f"{b / 2**20:,.0f} MiB" if b >= 2**20 else f"{b / 2**10:,.0f} KiB"


def _est(r: dict) -> str:
    est = r.get("estimated_peak_bytes")
    return f" (est. {est / 2**20:,.0f})" if est else ""


def table(results: dict) -> str:
    head = ("| method | status | trainable / total params | test accuracy (95% CI) | eval loss | ppl | "
            "train time | eval time | tokens/s | peak mem | weights | saved |")
    rows = [head, "|" + "---|" * 12]
    for m in ORDER:
        r = results.get(m)
        if not isinstance(r, dict):
            continue
        if r["status"] != "ok":
            rows.append(f"| {LABEL[m]} | {r['status']}: {str(r.get('error'))[:80]} |" + " |" * 10)
            continue
        lo, hi = r["accuracy_ci95"]
        pct = f" ({r['trainable_pct']:.2f}%)" if m != "base" else ""
        rows.append(
            f"| {LABEL[m]} | ok | {r['trainable_params']:,} / {r['total_params']:,}{pct} | "
            f"{r['accuracy']:.1%} ({lo:.1%}-{hi:.1%}) | {r['eval_loss']:.3f} | {r['perplexity']:.2f} | "
            f"{r['train_seconds']:.0f} s | {r['eval_seconds']:.0f} s | "
            f"{r['tokens_per_second']:.0f} | {_mb(r['peak_memory_bytes'])}{_est(r)} | {_mb(r['weights_bytes'])} | "
            f"{_mb(r['saved_bytes']) if r['saved_bytes'] else '-'} |")
    return "\n".join(rows)


def category_table(results: dict) -> str:
    ok = _ok(results)
    cats = sorted({c for r in ok.values() for c in r["per_category"]})
    rows = ["| category | n | " + " | ".join(LABEL[m] for m in ok) + " |", "|---|---:|" + "---:|" * len(ok)]
    for c in cats:
        n = next(r["per_category"][c]["n"] for r in ok.values() if c in r["per_category"])
        rows.append(f"| {c} | {n} | " + " | ".join(f"{r['per_category'].get(c, {}).get('accuracy', 0):.0%}"
                                                   for r in ok.values()) + " |")
    return "\n".join(rows)


def samples(results: dict, k: int = 6) -> str:
    ok = _ok(results)
    if not ok:
        return ""
    test = results.get("test_questions") or []
    n = len(next(iter(ok.values()))["predictions"])
    step = max(1, n // k)
    lines = []
    for i in range(0, min(n, step * k), step):
        q = test[i] if i < len(test) else {}
        lines.append(f"**Q:** {q.get('question', f'test example {i}')}  \n**reference:** `{q.get('answer', '?')}`  ")
        for m, r in ok.items():
            mark = "✅" if r["correct"][i] else "❌"
            lines.append(f"- {LABEL[m]} {mark}: {r['predictions'][i][:160]!r}")
        lines.append("")
    return "\n".join(lines)


def plots(results: dict, out_dir: Path) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = _ok(results)
    trained = {m: r for m, r in ok.items() if m != "base"}
    paths = {}
    colors = {"base": "#888888", "full": "#1f77b4", "lora": "#2ca02c", "qlora": "#d62728"}

    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    for m, r in trained.items():
        if r["loss_curve"]:
            s, l = zip(*r["loss_curve"])
            ax.plot(s, l, label=LABEL[m], color=colors[m], marker="o", ms=3)
    ax.set(xlabel="optimizer step", ylabel="training loss (answer tokens)", title="Training loss")
    ax.grid(alpha=0.3)
    ax.legend()
    paths["loss_curves"] = _save(fig, out_dir / "loss_curves.png")

    cats = sorted({c for r in ok.values() for c in r["per_category"]})
    if cats:
        fig, ax = plt.subplots(figsize=(max(7, 0.45 * len(cats) * len(ok)), 4))
        w = 0.8 / len(ok)
        for j, (m, r) in enumerate(ok.items()):
            ax.bar([i + j * w for i in range(len(cats))],
                   [r["per_category"].get(c, {}).get("accuracy", 0) for c in cats], w, label=LABEL[m], color=colors[m])
        ax.set_xticks([i + 0.4 - w / 2 for i in range(len(cats))], cats, rotation=45, ha="right", fontsize=8)
        ax.set(ylabel="test accuracy", ylim=(0, 1), title="Accuracy per category")
        ax.legend(fontsize=8)
        paths["accuracy_per_category"] = _save(fig, out_dir / "accuracy_per_category.png")

    if trained:
        fig, axes = plt.subplots(1, 3, figsize=(11, 3.4))
        labels = [LABEL[m] for m in trained]
        cs = [colors[m] for m in trained]
        for ax, key, title, scale in ((axes[0], "peak_memory_bytes", "Peak memory (MiB)", 2**20),
                                      (axes[1], "tokens_per_second", "Training tokens/s", 1),
                                      (axes[2], "accuracy", "Test accuracy (95% CI)", 1)):
            values = [r[key] / scale for r in trained.values()]
            err = None
            if key == "accuracy":
                err = [[v - r["accuracy_ci95"][0] for v, r in zip(values, trained.values())],
                       [r["accuracy_ci95"][1] - v for v, r in zip(values, trained.values())]]
            ax.bar(labels, values, color=cs, yerr=err, capsize=4)
            ax.set_title(title)
            ax.tick_params(axis="x", labelsize=8)
        paths["cost_bars"] = _save(fig, out_dir / "cost_bars.png")
    plt.close("all")
    return paths


def _save(fig, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return str(path)


def markdown(results: dict) -> str:
    cmp = results.get("comparison") or comparison(results)
    env = results.get("environment", {})
    parts = [
        "# Fine-tuning comparison: full vs LoRA vs QLoRA", "",
        f"Run `{results.get('run_dir')}` on {env.get('device')}; base model `{results.get('model_path')}`; "
        f"{results.get('dataset', {}).get('test_evaluated')} test questions; total "
        f"{results.get('total_seconds', 0):.0f} s.", "",
        table(results), "",
        "## Recommendation", "", cmp["recommendation"], "",
        "Winners: " + ", ".join(f"{k}: **{LABEL.get(v, v)}**" for k, v in cmp.get("winners", {}).items()), "",
        "## Differences in accuracy (paired bootstrap, same test questions)", "",
        "| comparison | difference | 95% interval | within noise? |", "|---|---:|---|---|",
    ]
    for k, d in cmp["pairs"].items():
        parts.append(f"| {k} | {d['diff']:+.1%} | {d['ci95'][0]:+.1%} to {d['ci95'][1]:+.1%} | "
                     f"{'yes' if d['within_noise'] else 'no'} |")
    parts += ["", "## Accuracy per category", "", category_table(results), "", "## Sample answers", "",
              samples(results, (results.get("config") or {}).get("eval", {}).get("num_samples", 6)), "",
              "## Plots", "", "![loss](loss_curves.png)",
              "![categories](accuracy_per_category.png)", "![cost](cost_bars.png)", ""]
    return "\n".join(parts)


def write_all(results: dict, run_dir: Path) -> dict[str, str]:
    """Write report.md, report.html and the PNG plots into ``run_dir``; return their paths."""
    run_dir = Path(run_dir)
    paths = plots(results, run_dir)
    md = markdown(results)
    (run_dir / "report.md").write_text(md, encoding="utf-8")
    (run_dir / "report.html").write_text(to_html(md, run_dir), encoding="utf-8")
    return {"markdown": str(run_dir / "report.md"), "html": str(run_dir / "report.html"), **paths}


def to_html(md: str, run_dir: Path) -> str:
    """A self-contained page: markdown tables become HTML tables, images are inlined."""
    out, in_table = [], False
    for line in md.splitlines():
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if set("".join(cells)) <= set("-: "):
                continue
            if not in_table:
                out.append("<table>")
                in_table = True
                out.append("<tr>" + "".join(f"<th>{_inline(c)}</th>" for c in cells) + "</tr>")
                continue
            out.append("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in cells) + "</tr>")
            continue
        if in_table:
            out.append("</table>")
            in_table = False
        if line.startswith("!["):
            src = line[line.index("(") + 1:-1]
            p = run_dir / src
            if p.is_file():
                data = base64.b64encode(p.read_bytes()).decode()
                out.append(f'<img alt="{html.escape(src)}" src="data:image/png;base64,{data}">')
        elif line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            out.append(f"<h{level}>{_inline(line.lstrip('#').strip())}</h{level}>")
        elif line.strip():
            out.append(f"<p>{_inline(line)}</p>")
    if in_table:
        out.append("</table>")
    style = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
             "table{border-collapse:collapse;margin:1em 0;font-size:13px}td,th{border:1px solid #ccc;padding:4px 8px}"
             "th{background:#f3f3f3}img{max-width:100%;margin:0.5em 0}")
    return f"<!doctype html><html><head><meta charset='utf-8'><title>nbatune report</title><style>{style}</style>" \
           f"</head><body>{''.join(out)}</body></html>"


def _inline(text: str) -> str:
    import re

    t = html.escape(text)
    t = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", t)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", t)


def rebuild(run_dir: str | Path) -> dict:
    """Re-create the comparison and report from a saved ``results.json`` without retraining."""
    run_dir = Path(run_dir)
    path = run_dir / "results.json"
    if not path.is_file():
        raise FileNotFoundError(f"no results.json in {run_dir}")
    results = json.loads(path.read_text())
    results["comparison"] = comparison(results)
    results["report"] = write_all(results, run_dir)
    return results
