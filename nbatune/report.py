"""The comparison a team can decide from: table, confidence intervals, winners, plots, HTML."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

from . import techniques
from .decisions import BASELINE_LABEL, baseline_accuracies, comparison, finished, order, size_text


def _est(r: dict) -> str:
    est, ev, ev_est = r.get("estimated_peak_bytes"), r.get("eval_peak_memory_bytes"), r.get("estimated_eval_peak_bytes")
    return ((f" (est. {est / 2**20:,.0f})" if est else "") + (f"; eval +{ev / 2**20:,.0f}" if ev else "")
            + (f" (est. {ev_est / 2**20:,.0f})" if ev and ev_est else ""))


def table(results: dict) -> str:
    cmp = results.get("comparison") or comparison(results)
    head = ("| method | status | trainable / total params | test accuracy (95% CI) | vs strongest baseline | "
            "general retention | eval loss | train time | eval time | tokens/s | peak mem | saved |")
    rows = [head, "|" + "---|" * 12]
    for m in order(results):
        r = results.get(m)
        if not isinstance(r, dict):
            continue
        if r["status"] != "ok":
            rows.append(f"| {techniques.label(m)} | {r['status']}: {str(r.get('error'))[:80]} |" + " |" * 10)
            continue
        lo, hi = r["accuracy_ci95"]
        pct = f" ({r['trainable_pct']:.2f}%)" if m != "base" else ""
        acc = f"{r['accuracy']:.1%} ({lo:.1%}-{hi:.1%})"
        if r.get("accuracy_sd") is not None:
            acc += f"; {len(r['repeats'])} seeds: {r['accuracy_mean']:.1%} ± {r['accuracy_sd']:.1%}"
        d = cmp.get("learned", {}).get(m)
        vs = f"{d['diff']:+.1%} ({d['ci95'][0]:+.1%} to {d['ci95'][1]:+.1%})" if d else "-"
        ret = (r.get("retention") or {}).get("accuracy")
        f = cmp.get("forgot", {}).get(m)
        ret_s = "-" if ret is None else f"{ret:.1%}" + (f" (forgot {f['diff']:+.1%})" if f else "")
        rows.append(
            f"| {techniques.label(m)} | ok | {r['trainable_params']:,} / {r['total_params']:,}{pct} | {acc} | {vs} | {ret_s} | "
            f"{r['eval_loss']:.3f} | {r['train_seconds']:.0f} s | {r['eval_seconds']:.0f} s | "
            f"{r['tokens_per_second']:.0f}{_mfu(r)} | {size_text(r['peak_memory_bytes'])}{_est(r)} | "
            f"{size_text(r['saved_bytes']) if r['saved_bytes'] else '-'} |")
    return "\n".join(rows)


def _mfu(r: dict) -> str:
    return f" ({r['mfu']:.0%} MFU)" if r.get("mfu") else ""


def _peaks(m: dict) -> str:
    """bf16 and fp32 FLOP/s, a dtype this CPU emulates in software marked as such (``measure.machine_peak``)."""
    return ", ".join(f"{name} {m[name + '_flops'] / 1e9:,.0f} GFLOP/s"
                     + (" (emulated in software: this CPU has no native bf16)"
                        if name in m.get("emulated", ()) else "")
                     for name in ("bf16", "fp32"))


def machine_line(results: dict) -> str:
    """The machine the timings came from: its matmul kind and the peak measured in the run."""
    m = (results.get("environment") or {}).get("matmul")
    if not m:
        return ""
    alloc = (results.get("environment") or {}).get("allocator")
    return (f"Machine: {m['kind']} ({m['threads']} threads{', malloc: ' + alloc if alloc else ''}), matmul peak "
            f"measured in this run: {_peaks(m)}; MFU = training FLOP/s over the peak of the precision it trained "
            "in." + _lanes_note(results))


def _lanes_note(results: dict) -> str:
    lanes = (results.get("environment") or {}).get("lanes")
    if not lanes:
        return ""
    m = lanes["matmul"]
    return (f" The models ran side by side in {lanes['lanes']} processes of {m['threads']} core(s) each "
            f"(`lanes`): tokens/s and MFU are one such process's, beside another model, against the peak of its "
            f"cores ({_peaks(m)}); `lanes: 1` times each technique alone on every core.")


MEMORY_NOTE = ("Peak memory: training (loading and the steps) beside its estimate; eval: what evaluation added above "
               "the loaded model, measured in this process after training, beside the estimate for a fresh process "
               "(what training left in the heap adds to the measurement; BENCHMARKS.md).")


def phases_line(results: dict, with_report: bool = True) -> str:
    """Where the wall time went, per model and phase, so a slow machine shows where it is slow (the report
    itself quotes every phase but its own writing)."""
    ph = results.get("phases") or {}
    names = {"load_s": "load", "train_s": "train", "learning_curve_s": "learning curve",
             "train_setup_s": "trainer setup", "save_s": "save", "eval_s": "eval", "retention_s": "retention",
             "curve_s": "curve", "few_shot_s": "few-shot", "quantized_base_s": "4-bit base", "other_s": "other"}
    parts = []
    for m, p in ph.items():
        if m == "report":
            continue
        inner = ", ".join(f"{names[k]} {v:.0f}" for k, v in p.items() if k in names and v >= 0.5)
        if "all_cores_from_s" in p:  # nbatune.lanes.widen
            inner += f"; every core from {p['all_cores_from_s']:.0f} s, the other lanes done"
        if "reused_s" in p:
            src = Path((results.get(m) or {}).get("reused_from", {}).get("run_dir", "an earlier run")).name
            inner = f"reused: {src} measured it in {p['reused_s']:.0f} s"
        parts.append(f"{techniques.label(m)} {p['wall_s']:.0f} s ({inner})")
    if "report" in ph and with_report:
        parts.append(f"report {ph['report']['wall_s']:.0f} s")
    total = results.get("total_seconds")
    return "Wall time: " + "; ".join(parts) + (f"; total {total:.0f} s ({total / 60:.1f} min)." if total else ".")


def baseline_table(results: dict) -> str:
    base_lines = baseline_accuracies(results)
    if not base_lines:
        return "No baselines were measured."
    strongest = max(base_lines, key=lambda k: base_lines[k]["accuracy"])
    rows = ["| baseline | test accuracy (95% CI) |", "|---|---|"]
    for k, v in base_lines.items():
        lo, hi = v["accuracy_ci95"]
        mark = " **(strongest)**" if k == strongest else ""
        rows.append(f"| {BASELINE_LABEL.get(k, k)}{mark} | {v['accuracy']:.1%} ({lo:.1%}-{hi:.1%}) |")
    return "\n".join(rows)


def category_table(results: dict) -> str:
    ok = {m: r for m, r in finished(results).items() if m != "base"}
    cols = {BASELINE_LABEL.get(k, k): v for k, v in baseline_accuracies(results).items()}
    cols.update({techniques.label(m): r for m, r in ok.items()})
    cats = sorted({c for r in cols.values() for c in r["per_category"]})
    scored = _scoring_by_category(results)
    rows = ["| category | scored as | n | " + " | ".join(cols) + " |", "|---|---|---:|" + "---:|" * len(cols)]
    for c in cats:
        n = next(r["per_category"][c]["n"] for r in cols.values() if c in r["per_category"])
        rows.append(f"| {c} | {scored.get(c, '')} | {n} | " + " | ".join(
            f"{r['per_category'].get(c, {}).get('accuracy', 0):.0%}" for r in cols.values()) + " |")
    return "\n".join(rows)


def _pct(block: dict | None, key: str = "accuracy") -> str:
    """``61.2% (55.0-67.0%)`` from a dict holding an accuracy and its interval; ``-`` when absent."""
    if not block or block.get(key) is None:
        return "-"
    lo, hi = block.get("accuracy_ci95") or block.get("ci95") or (None, None)
    return f"{block[key]:.1%}" + (f" ({lo:.0%}-{hi:.0%})" if lo is not None else "")


def _quality(r: dict) -> list[str]:
    """Seen formats, unseen format, general retention (test) and its share of the base's."""
    f = r.get("formats") or {}
    return [_pct(f.get("seen")), _pct(f.get("unseen")), _pct(r.get("retention"))]


def operating_table(results: dict) -> str:
    """Per model: where it is used (alpha and why) and its test figures there, beside the trained model's
    (alpha = 1): NBA questions in the seen formats, in the unseen format, and general retention."""
    ok = finished(results)
    if not ok:
        return "No model finished."
    base_ret = (ok.get("base") or {}).get("retention", {}).get("accuracy")
    rows = ["| model | alpha (chosen on validation) | seen formats | unseen format | general retention (test) | "
            "kept of base | at alpha = 1: seen / unseen / retention |", "|---|---|---|---|---|---:|---|"]
    for m, r in ok.items():
        op = r.get("operating_point") or {}
        ret = (r.get("retention") or {}).get("accuracy")
        kept = f"{ret / base_ret:.0%}" if ret is not None and base_ret else "-"
        trained = r.get("trained") or {}
        at_one = " / ".join(_quality(trained)) if trained else ("same" if m != "base" else "-")
        alpha = "-" if m == "base" else (f"{op['alpha']:g}" if op else "1 (no curve)")
        rows.append(f"| {techniques.label(m)} | {alpha} | " + " | ".join(_quality(r)) + f" | {kept} | {at_one} |")
        q = r.get("quantized_base") or {}
        if m == "base" and (q.get("retention") or {}).get("accuracy") is not None:
            qkept = f"{q['retention']['accuracy'] / base_ret:.0%}" if base_ret else "-"
            rows.append(f"| 4-bit base (untrained: alpha 0 of {techniques.label(q['method'])}) | 0 | not measured | "
                        f"not measured | {_pct(q['retention'])} | {qkept} | - |")
    reasons = {techniques.label(m): r["operating_point"]["reason"] for m, r in ok.items()
               if r.get("operating_point")}
    policy = next((r["operating_point"]["policy"] for r in ok.values() if r.get("operating_point")), None)
    if policy:
        rows += ["", f"Policy: {policy}. " + "; ".join(f"{k}: {v}" for k, v in reasons.items()) + "."]
    both = {techniques.label(m): r["operating_point"] for m, r in ok.items()
            if {"kept_known", "general_validation"} <= set(r.get("operating_point") or {})
            and r["operating_point"].get("base_general_validation")}
    if both:
        third = all("kept_stratified" in r for r in both.values())
        rows += ["", "General validation kept at the chosen points, as a share of the base's score / of the questions "
                 "the base answers right" + (" / of the base's score reweighted to the test's mix" if third else "")
                 + " (the second gives no credit for questions the base got wrong, `eval.keep_measure`): " + "; ".join(
                     f"{k} {r['general_validation'] / r['base_general_validation']:.0%} / {r['kept_known']:.0%}"
                     + (f" / {r['kept_stratified']:.0%}" if third else "") for k, r in both.items()) + "."]
    skipped = {techniques.label(m): r["operating_point"]["not_scored"] for m, r in ok.items()
               if (r.get("operating_point") or {}).get("not_scored")}
    if skipped:
        rows += ["", "Not scored, since a larger alpha already kept the floor (`eval.curve_every_point`): "
                 + "; ".join(f"{k}: alpha {', '.join(f'{a:g}' for a in v)}" for k, v in skipped.items()) + "."]
    return "\n".join(rows)


def _scoring_by_category(results: dict) -> dict[str, str]:
    out = {}
    for q in results.get("test_questions") or []:
        a = q["answer"]
        out.setdefault(q["category"], "formula (program-aided)" if any(op in a for op in (" / ", " x ", " + "))
                       else "name, no competitor")
    return out



def parity(results: dict) -> str:
    """Same data, steps and tokens for every technique; the precision each technique allows; where the
    learning rates came from."""
    trained = {m: r for m, r in finished(results).items() if m != "base"}
    if not trained:
        return "No technique finished."
    seen = {(r["steps"], r["train_tokens"]) for r in trained.values()}
    cfg = (results.get("config") or {}).get("train", {})
    lines = [("Every technique trained the same steps on the same examples in the same order: "
              f"{next(iter(seen))[0]} steps, {next(iter(seen))[1]:,} tokens.") if len(seen) == 1 else
             "Steps or tokens differ between techniques: " + ", ".join(
                 f"{techniques.label(m)} {r['steps']} steps / {r['train_tokens']:,} tokens" for m, r in trained.items()),
             "Precision (as each technique allows; the rest is the same): " + "; ".join(
                 f"{techniques.label(m)}: {techniques.get(m).precision}" for m in trained) + "."]
    rates = cfg.get("learning_rate") or {}
    if rates:
        lines.append("Learning rates: " + ", ".join(f"{techniques.label(m)} {rates[m]:g}" for m in trained if m in rates)
                     + (f" (from {cfg['learning_rate_source']})." if cfg.get("learning_rate_source") else
                        " (set by hand: no sweep named in train.learning_rate_source)."))
    return " ".join(lines)


def pairs_table(cmp: dict) -> str:
    rows = ["| comparison | difference | 95% interval | McNemar p (Holm) | seeds: mean diff / spread | real? |",
            "|---|---:|---|---|---|---|"]
    for k, d in cmp["pairs"].items():
        sp = d.get("seeds")
        seeds = f"{sp['mean_diff']:+.1%} / {sp['spread']:.1%} ({sp['seeds']} seeds)" if sp else "one seed: unknown"
        rows.append(f"| {k} | {d['diff']:+.1%} | {d['ci95'][0]:+.1%} to {d['ci95'][1]:+.1%} | "
                    f"{d.get('p_mcnemar', 1):.3f} ({d.get('p_holm', 1):.3f}) | {seeds} | "
                    f"{'yes' if d.get('real') else 'no'} |")
    return "\n".join(rows)


def samples(results: dict, k: int = 6) -> str:
    ok = finished(results)
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
            mark = "(right)" if r["correct"][i] else "(wrong)"  # plain text: no emoji font needed
            lines.append(f"- {techniques.label(m)} {mark}: {r['predictions'][i][:160]!r}")
        lines.append("")
    return "\n".join(lines)


def plots(results: dict, out_dir: Path) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = finished(results)
    trained = {m: r for m, r in ok.items() if m != "base"}
    paths = {}

    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    for m, r in trained.items():
        if r["loss_curve"]:
            s, l = zip(*r["loss_curve"])
            ax.plot(s, l, label=techniques.label(m), color=techniques.color(m), marker="o", ms=3)
    ax.set(xlabel="optimizer step", ylabel="training loss (answer tokens)", title="Training loss")
    ax.grid(alpha=0.3)
    ax.legend()
    paths["loss_curves"] = _save(fig, out_dir / "loss_curves.png")

    curves = {m: r["learning_curve"] for m, r in trained.items() if r.get("learning_curve")}
    if curves:
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharey=True)
        for m, pts in curves.items():
            for ax, key in zip(axes, ("tokens", "seconds")):
                ax.plot([p[key] for p in pts], [p["exact_match"] for p in pts], label=techniques.label(m), color=techniques.color(m),
                        marker="o", ms=3)
        axes[0].set(xlabel="training tokens", ylabel="validation exact match (teacher-forced)", ylim=(0, 1))
        axes[1].set(xlabel="training seconds")
        for ax in axes:
            ax.grid(alpha=0.3)
        axes[0].legend()
        fig.suptitle("Learning curves")
        paths["learning_curves"] = _save(fig, out_dir / "learning_curves.png")

    cmp = results.get("comparison") or comparison(results)
    if cmp.get("learned") and cmp.get("forgot"):
        fig, ax = plt.subplots(figsize=(5.5, 4))
        for m in cmp["forgot"]:
            l, f = cmp["learned"][m], cmp["forgot"][m]
            ax.errorbar(f["diff"], l["diff"], xerr=[[f["diff"] - f["ci95"][0]], [f["ci95"][1] - f["diff"]]],
                        yerr=[[l["diff"] - l["ci95"][0]], [l["ci95"][1] - l["diff"]]], fmt="o", color=techniques.color(m),
                        capsize=4, label=techniques.label(m))
        ax.axhline(0, color="#888", lw=0.8)
        ax.axvline(0, color="#888", lw=0.8)
        ax.set(xlabel="forgot: general-knowledge accuracy lost vs base", ylabel="learned: NBA accuracy above "
               "strongest baseline", title="Learned vs forgot (95% CI)")
        ax.legend(fontsize=8)
        paths["learned_vs_forgot"] = _save(fig, out_dir / "learned_vs_forgot.png")

    if any(r.get("curve") for r in trained.values()):
        paths["tradeoff"] = _tradeoff_plot(plt, ok, out_dir / "tradeoff.png")
    if len(trained) >= 2:
        paths["pareto"] = _cost_front_plot(plt, trained, (ok.get("base") or {}).get("retention"), out_dir / "pareto.png")

    cats = sorted({c for r in ok.values() for c in r["per_category"]})
    if cats:
        fig, ax = plt.subplots(figsize=(max(7, 0.45 * len(cats) * len(ok)), 4))
        w = 0.8 / len(ok)
        for j, (m, r) in enumerate(ok.items()):
            ax.bar([i + j * w for i in range(len(cats))],
                   [r["per_category"].get(c, {}).get("accuracy", 0) for c in cats], w, label=techniques.label(m), color=techniques.color(m))
        ax.set_xticks([i + 0.4 - w / 2 for i in range(len(cats))], cats, rotation=45, ha="right", fontsize=8)
        ax.set(ylabel="test accuracy", ylim=(0, 1), title="Accuracy per category")
        ax.legend(fontsize=8)
        paths["accuracy_per_category"] = _save(fig, out_dir / "accuracy_per_category.png")

    if trained:
        fig, axes = plt.subplots(1, 3, figsize=(11, 3.4))
        labels = [techniques.label(m) for m in trained]
        cs = [techniques.color(m) for m in trained]
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


def _tradeoff_plot(plt, ok: dict, path: Path) -> str:
    """The learning-forgetting Pareto view on validation: each technique's curve from its alpha = 0 (the base; for
    a quantized technique the 4-bit base, a diamond) to the trained model (alpha = 1, square), its chosen point
    starred, the points no other point beats on both axes circled (the front)."""
    base = (ok.get("base") or {}).get("validation") or {}
    qbase = ((ok.get("base") or {}).get("quantized_base") or {}).get("validation") or {}
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    points = []
    for m, r in ok.items():
        curve = r.get("curve") or []
        if not curve:
            continue
        origin = qbase if qbase and m in techniques.names() and techniques.get(m).quantized else base
        pts = ([origin] if origin else []) + curve
        xs, ys = [p["general_validation"] for p in pts], [p["nba_validation"] for p in pts]
        ax.plot(xs, ys, color=techniques.color(m), marker="o", ms=4, label=techniques.label(m))
        for p in curve:
            ax.annotate(f"{p['alpha']:g}", (p["general_validation"], p["nba_validation"]), fontsize=7,
                        textcoords="offset points", xytext=(4, 3), color=techniques.color(m))
            points.append((p["general_validation"], p["nba_validation"]))
        one = curve[-1]
        ax.plot(one["general_validation"], one["nba_validation"], "s", ms=8, mfc="none", color=techniques.color(m))
        chosen = next((p for p in curve if p["alpha"] == (r.get("operating_point") or {}).get("alpha")), None)
        if chosen:
            ax.plot(chosen["general_validation"], chosen["nba_validation"], "*", ms=15, color=techniques.color(m),
                    mec="black")
    best = [points[i] for i in front([(-x, y) for x, y in points])]  # more retention is better here
    if best:
        ax.plot(*zip(*best), "o", ms=13, mfc="none", mec="#444", lw=0.8, label="Pareto front")
    if qbase:
        ax.plot(qbase["general_validation"], qbase["nba_validation"], "kD", ms=6, mfc="white",
                label="4-bit base (alpha 0 of the quantized)")
    if base:
        ax.plot(base["general_validation"], base["nba_validation"], "ko", ms=7, label="base (alpha 0)")
        share = next((r["operating_point"].get("keep", 0.9) for r in ok.values() if r.get("operating_point")), 0.9)
        ax.axvline(share * base["general_validation"], color="#888", ls="--", lw=0.8)
    ax.set(xlabel="general knowledge (validation accuracy) ->  forgets less",
           ylabel="NBA validation (teacher-forced exact match)",
           title="Learning vs forgetting along each technique's curve\n(square: trained; star: chosen; dashed: "
                 "policy's retention floor)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats: cost (x) no higher and accuracy (y) no lower, one strictly."""
    return [i for i, (x, y) in enumerate(points)
            if not any(u <= x and v >= y and (u, v) != (x, y) for u, v in points)]


COSTS = (("peak_memory_bytes", "peak training memory (MiB)", 2**20), ("train_seconds", "training time (s)", 1),
         ("saved_bytes", "saved artefact (MB)", 1e6), ("forgot", "general retention lost vs base (points)", 0.01))


def _cost_front_plot(plt, trained: dict, base_retention: dict | None, path: Path) -> str:
    """PEFT's method-comparison view: test accuracy (95% CI) against each cost, one point per technique, the
    Pareto front (nothing cheaper is as accurate) joined and circled."""
    base_acc = (base_retention or {}).get("accuracy")
    costs = [c for c in COSTS if c[0] != "forgot" or base_acc is not None]
    fig, axes = plt.subplots(1, len(costs), figsize=(3.6 * len(costs), 3.6), sharey=True)
    for ax, (key, title, scale) in zip(axes, costs):
        pts = []
        for m, r in trained.items():
            if key == "forgot":
                ret = (r.get("retention") or {}).get("accuracy")
                cost = None if ret is None else base_acc - ret
            else:
                cost = r.get(key)
            if cost is None:
                continue
            x, y = cost / scale, r["accuracy"]
            lo, hi = r["accuracy_ci95"]
            ax.errorbar(x, y, yerr=[[y - lo], [hi - y]], fmt="o", color=techniques.color(m), capsize=3, ms=6)
            ax.annotate(techniques.label(m), (x, y), fontsize=7, textcoords="offset points", xytext=(4, 4))
            pts.append((x, y))
        best = sorted((pts[i] for i in front(pts)), key=lambda p: p[0])
        if best:
            ax.plot(*zip(*best), "-o", color="#444", lw=0.8, ms=13, mfc="none", zorder=0)
        ax.set(xlabel=title)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test accuracy (95% CI)")
    fig.suptitle("Accuracy against cost, one point per technique (circled and joined: the Pareto front)")
    return _save(fig, path)


def _save(fig, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return str(path)


def markdown(results: dict) -> str:
    cmp = results.get("comparison") or comparison(results)
    env = results.get("environment", {})
    prov = results.get("provenance") or {}
    nf4 = prov.get("nf4_error")
    parts = [
        "# Fine-tuning comparison: " + " vs ".join(techniques.label(m) for m in finished(results) if m != "base"), "",
        f"Run `{results.get('run_dir')}` on {env.get('device')}; base model `{results.get('model_path')}`; "
        f"{results.get('dataset', {}).get('test_evaluated')} test questions; total "
        f"{results.get('total_seconds', 0):.0f} s.", "",
        table(results), "", phases_line(results, with_report=False), "", machine_line(results), "", MEMORY_NOTE, "",
        "![accuracy against cost](pareto.png)", "",
        "## Where to use each model: seen and unseen formats, forgetting", "",
        "Each technique's operating point is chosen on validation alone (NBA validation, general-knowledge "
        "validation); the test figures here and in every other table are that point's, and the trained model's "
        "(alpha = 1) are beside them. The unseen format is a stat-line layout no training or validation "
        "question used.", "",
        operating_table(results), "", "![tradeoff](tradeoff.png)", "",
        "## Recommendation", "", cmp["recommendation"], "",
        "Winners: " + ", ".join(f"{k}: **{techniques.label(v)}**" for k, v in cmp.get("winners", {}).items()), "",
        "## Baselines (what a model that learned nothing scores)", "",
        "A technique has learned only what it scores above the strongest of these. The trivial baseline is, per "
        "category, the best constant answer or copied number of the question, fitted on the training split.", "",
        baseline_table(results), "",
        "## Differences between techniques (same test questions)", "",
        f"{cmp.get('comparisons_made', 0)} comparisons; a difference is called real only when the paired bootstrap "
        "interval excludes 0, the Holm-adjusted McNemar p is below 0.05, and the mean difference over training "
        "seeds exceeds twice the larger seed standard deviation (train.repeats >= 2).", "",
        pairs_table(cmp), "",
        "## Accuracy per category", "", category_table(results), "",
        "## Parity", "", parity(results), "",
        "## Base model provenance", "",
        f"{prov.get('source', '')}. {prov.get('note', '')}".strip() + (
            f" NF4{' + double quant' if nf4.get('double_quant') else ''} adds a relative weight error of "
            f"{nf4['relative_error']:.1%} on its {nf4['layers']} linear layers (measured with bitsandbytes)."
            if nf4 else ""), "",
        "## Sample answers", "",
        samples(results, (results.get("config") or {}).get("eval", {}).get("num_samples", 6)), "",
        "## Plots", "", "![loss](loss_curves.png)", "![learning curves](learning_curves.png)",
        "![learned vs forgot](learned_vs_forgot.png)", "![categories](accuracy_per_category.png)",
        "![cost](cost_bars.png)", ""]
    return "\n".join(parts)


def write_all(results: dict, run_dir: Path) -> dict[str, str]:
    """Write report.md, report.html, the PNG plots and the per-technique JSONL files into ``run_dir``;
    return their paths."""
    run_dir = Path(run_dir)
    paths = {**plots(results, run_dir), **jsonl_files(results, run_dir)}
    md = markdown(results)
    (run_dir / "report.md").write_text(md, encoding="utf-8")
    (run_dir / "report.html").write_text(to_html(md, run_dir), encoding="utf-8")
    return {"markdown": str(run_dir / "report.md"), "html": str(run_dir / "report.html"), **paths}


def jsonl_files(results: dict, run_dir: Path) -> dict[str, str]:
    """Files a user opens with ``pandas.read_json(path, lines=True)`` without knowing results.json:
    ``predictions-<method>.jsonl`` (question, category, format, unseen, reference, prediction, correct) for the base and
    each technique, and ``train_log-<method>.jsonl`` (step, loss, learning rate, gradient norm, tokens,
    seconds) for each trained one."""
    questions = results.get("test_questions") or []
    paths = {}
    for m, r in finished(results).items():
        rows = [{"question": q["question"], "category": q["category"], "format": q.get("format", ""),
                 "unseen": q.get("unseen", False), "reference": q["answer"], "prediction": p, "correct": c}
                for q, p, c in zip(questions, r.get("predictions") or [], r.get("correct") or [])]
        files = {"predictions": rows, "train_log": r.get("train_log") or []}
        for kind, data in files.items():
            if data:
                path = run_dir / f"{kind}-{m}.jsonl"
                path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in data), encoding="utf-8")
                paths[f"{kind}_{m}"] = str(path)
    return paths


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
