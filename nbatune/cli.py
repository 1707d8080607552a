"""Command line: ``nbatune run | memory | report | ask | dataset``."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from . import techniques


ALPHA_HELP = ("where on the learning-forgetting curve, 0 (base) to 1 (trained); default: the run's chosen operating point")

def entry() -> int:
    """The ``nbatune`` console command: a long run (``run``, ``train``) goes on tcmalloc where it is installed
    (``nbatune.allocator``), then ``main``."""
    if sys.argv[1:2] in (["run"], ["train"]):
        from . import allocator

        allocator.relaunch(sys.argv[1:])
    return main()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="nbatune", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)

    r = sub.add_parser("run", help="run the comparison (base, full, LoRA, QLoRA)")
    r.add_argument("--config", default=None, help="YAML config (default: configs/default.yaml)")
    r.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a field, e.g. --set train.max_steps=20 (repeatable)")
    r.add_argument("--methods", default=None, help="comma-separated subset, e.g. lora,qlora")
    r.add_argument("--resume", action="store_true",
                   help="continue the interrupted run named by --set run_name=... (finished methods are kept)")

    t = sub.add_parser("train", help="fine-tune one technique on the configured data: no base evaluation, no "
                                      "comparison; the same run folder, results and report for that technique")
    t.add_argument("--method", required=True, choices=techniques.names())
    t.add_argument("--config", default=None, help="YAML config (default: configs/default.yaml)")
    t.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a field, e.g. --set train.epochs=2 (repeatable)")
    t.add_argument("--resume", action="store_true", help="continue the interrupted run named by --set run_name=...")

    mem = sub.add_parser("memory", help="estimate each technique's peak training memory; exit 1 if one will not fit")
    mem.add_argument("--config", default=None, help="YAML config (default: configs/default.yaml)")
    mem.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    mem.add_argument("--model", default=None, help="checkpoint directory or hub id (default: the config's model)")
    mem.add_argument("--seq-len", type=int, default=None,
                     help="tokens per example; with it, the model's config is all that is read (no data, no "
                          "tokenizer), and every token is counted as an answer token (an upper bound)")
    mem.add_argument("--device", default=None, choices=["cpu", "cuda"], help="plan for this device (default: this machine's)")

    rep = sub.add_parser("report", help="rebuild report.md/html and plots from a run's results.json")
    rep.add_argument("run_dir")

    a = sub.add_parser("ask", help="ask a saved model or adapter from a run one question")
    a.add_argument("run_dir")
    a.add_argument("question")
    a.add_argument("--method", required=True, choices=[techniques.BASE, *techniques.names()])
    a.add_argument("--max-new-tokens", type=int, default=64)
    a.add_argument("--alpha", type=float, default=None, help=ALPHA_HELP)

    x = sub.add_parser("export", help="a standalone checkpoint of a run's technique (adapters merged), in bf16 by "
                                      "default, that plain transformers loads")
    x.add_argument("run_dir")
    x.add_argument("--method", required=True, choices=techniques.names())
    x.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    x.add_argument("--out", default=None, help="default: <run>/<method>/merged (adapters) or export-<dtype> (full)")
    x.add_argument("--gguf", default=None, choices=["f16", "q8_0"],
                   help="also write model-<type>.gguf for llama.cpp / Ollama (llama-architecture models)")
    x.add_argument("--alpha", type=float, default=None, help=ALPHA_HELP)

    h = sub.add_parser("harness", help="lm-evaluation-harness on a run's technique: the run's NBA test and retention "
                                       "splits as lm-eval tasks, scored by nbatune (needs nbatune[harness])")
    h.add_argument("run_dir")
    h.add_argument("--method", required=True, choices=[techniques.BASE, *techniques.names()])
    h.add_argument("--alpha", type=float, default=None, help=ALPHA_HELP)
    h.add_argument("--limit", type=int, default=None, help="the first N questions of each task (a quick look)")

    d = sub.add_parser("dataset", help="build, inspect or validate instruction data")
    dsub = d.add_subparsers(dest="action", required=True)
    b = dsub.add_parser("build", help="write the built-in dataset (JSONL + card)")
    b.add_argument("--out", default="data/nba")
    b.add_argument("--seed", type=int, default=42)
    b.add_argument("--train-size", type=int, default=3200)
    b.add_argument("--val-size", type=int, default=160)
    b.add_argument("--test-size", type=int, default=320)
    i = dsub.add_parser("inspect", help="show the built-in dataset's card: sizes, scoring and baselines per category")
    i.add_argument("--seed", type=int, default=42, help="data.seed (default: 42, the default config's)")
    i.add_argument("--results", default=None, help="a run's results.json: add its base zero-/few-shot per category")
    v = dsub.add_parser("validate", help="check a user dataset file; exit 1 with the reasons if invalid")
    v.add_argument("path")
    v.add_argument("--format", default="auto")

    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return {"run": _run, "train": _train, "memory": _memory, "report": _report, "ask": _ask, "export": _export, "harness": _harness,
                "dataset": _dataset}[args.cmd](args)
    except Exception as e:  # a CLI user wants the message, not a traceback
        from .config import ConfigError
        from .data.loading import DataError
        from .modeling import ModelLoadError

        from .memory import MemoryBudgetError
        from .training import CheckpointError

        if isinstance(e, (ConfigError, DataError, ModelLoadError, CheckpointError, MemoryBudgetError, FileNotFoundError,
                          FileExistsError, ValueError)):
            print(f"error: {e}", file=sys.stderr)
            return 1
        raise


def _train(args) -> int:
    # one technique: the untouched base is neither evaluated nor used as a few-shot baseline
    args.methods = args.method
    args.overrides = [*args.overrides, "evaluate_base=false", "eval.few_shot=0"]
    return _run(args)


def _run(args) -> int:
    from .compare import Comparison
    from .report import machine_line, phases_line, table

    # --methods narrows config.methods, so that setup() checks memory only for what will run
    cmp = Comparison(args.config, args.overrides + ([f"methods=[{args.methods}]"] if args.methods else []))
    cmp.setup(resume=args.resume)
    try:
        res = cmp.execute(resume=args.resume)
    except KeyboardInterrupt as e:
        print(f"\ninterrupted: {e or 'checkpoint and results.json saved'}", file=sys.stderr)
        return 130
    if res.get("status") == "disabled":
        print(res["message"])
        return 0
    print("\n" + table(res) + "\n")
    print(res["comparison"]["recommendation"])
    print("\n" + phases_line(res))
    print(machine_line(res))
    print(f"\nresults: {res['run_dir']}/results.json\nreport:  {res['report']['markdown']} and report.html")
    failed = [m for m in (techniques.BASE, *techniques.names())
              if isinstance(res.get(m), dict) and res[m]["status"] == "failed"]
    return 1 if failed else 0


def _memory(args) -> int:
    from .config import load_config
    from .memory import GiB, estimate_for_config, estimate_for_run, memory_budget
    from .runtime import resolve

    overrides = list(args.overrides) + ([f"model.name_or_path={args.model}"] if args.model else [])
    cfg = load_config(args.config, overrides)
    t = cfg.train
    if args.device:
        device = args.device
        precision = t.precision if t.precision != "auto" else "bf16"
    else:
        rt = resolve(t.device, t.precision)
        device, precision = rt.device, rt.precision
    if args.seq_len:
        tokens = t.batch_size * args.seq_len
        by_method = {m: estimate_for_config(cfg, m, cfg.model.name_or_path, tokens, tokens, device, precision,
                                            args.seq_len)
                     for m in cfg.methods}
    else:
        from .data.prepare import prepare_training_data

        data = prepare_training_data(cfg)
        by_method = estimate_for_run(cfg, data.model_path, data.train_rows, data.tokenizer.pad_token_id, device,
                                     precision)
    # the free memory of this machine says nothing about another device
    budget = memory_budget(t, device) if t.memory_budget_gib or device == resolve().device else None
    fits = {m: "?" if budget is None else ("yes" if e.total <= budget else "NO") for m, e in by_method.items()}
    print(f"peak training memory, GiB ({device}, {precision}, batch {t.batch_size})")
    _print_estimates(list(by_method.values()), "technique", fits)
    worst = "NO" in fits.values()
    if budget is not None:
        print(f"budget: {budget / GiB:.1f} GiB ({'train.memory_budget_gib' if t.memory_budget_gib else 'free now'})")
    if not args.seq_len:  # evaluation's, sized by the questions this config answers
        from .data import retention
        from .evaluation import memory_estimates

        ret = retention.records(cfg.model.system_prompt, "test") if cfg.eval.retention else []
        evals = memory_estimates(cfg, data.model_path, data.tokenizer, data.records.get("test", []), ret, device,
                                 precision)
        if evals:
            print(f"\nevaluation, above the loaded model, GiB (a fresh process; {cfg.eval.batch_size} answers at a "
                  "time; parts before the heap's slack)")
            _print_estimates(list(evals.values()), "model")
    return 1 if worst else 0


def _print_estimates(estimates: list, first: str, fits: dict | None = None) -> None:
    """A markdown table of memory estimates: one row each, its parts and total in GiB (and whether it fits)."""
    from .memory import GiB

    parts = list(estimates[0].parts)
    print(f"| {first} | " + " | ".join(parts) + " | total |" + (" fits |" if fits else ""))
    print("|---|" + "---:|" * (len(parts) + 1 + bool(fits)))
    for est in estimates:
        print(f"| {est.method} | " + " | ".join(f"{est.parts[k] / GiB:.2f}" for k in parts) +
              f" | {est.total / GiB:.2f} |" + (f" {fits[est.method]} |" if fits else ""))


def _report(args) -> int:
    from .report import rebuild, table

    res = rebuild(args.run_dir)
    print(table(res))
    print(f"\nreport: {res['report']['markdown']}")
    return 0


def _ask(args) -> int:
    from .inference import load_from_run

    model, tok, rt, system = load_from_run(args.run_dir, args.method, args.alpha)
    from .evaluation import generate_answers

    rec = {"messages": [{"role": "system", "content": system}, {"role": "user", "content": args.question},
                        {"role": "assistant", "content": ""}]}
    answer = generate_answers(model, tok, [rec], rt, args.max_new_tokens, 1, desc="thinking")[0]
    print(answer or "(the model gave an empty answer)")
    return 0


def _harness(args) -> int:
    from .harness import evaluate

    res = evaluate(args.run_dir, args.method, args.alpha, args.limit)
    for task, r in res.items():
        own = f"{r['nbatune']:.1%}" if r["nbatune"] is not None and args.limit is None else "-"
        print(f"{task}: lm-eval acc {r['acc']:.1%} on {r['n']} questions (nbatune's own score: {own})")
    print(f"tasks: {Path(args.run_dir) / 'harness'} (lm_eval --include_path)")
    return 0


def _export(args) -> int:
    from .inference import export

    out = export(args.run_dir, args.method, args.out, args.dtype, args.gguf, args.alpha)
    quantized = techniques.get(args.method).quantized
    note = " (merged into the unquantized base: not the 4-bit model that was scored)" if quantized else ""
    print(f"exported {args.method} as {args.dtype} to {out}{note}")
    if args.gguf:
        print(f"GGUF ({args.gguf}): {out / f'model-{args.gguf}.gguf'}")
    return 0


def _dataset(args) -> int:
    from . import dataset_card
    from .data import builtin

    if args.action == "build":
        splits = builtin.build(args.seed, args.train_size, args.val_size, args.test_size)
        out = dataset_card.write(splits, args.out)
        print(dataset_card.card(splits))
        print(f"written to {out}")
        return 0
    if args.action == "inspect":
        splits = builtin.build(args.seed)
        measured = json.loads(Path(args.results).read_text()).get("baselines") if args.results else None
        print(dataset_card.card(splits, measured))
        return 0
    from .data.loading import DataError, detect_format, read_source, to_record

    try:
        raw = read_source(args.path)
        fmt = args.format if args.format != "auto" else detect_format(raw["train"], args.path)
        n = 0
        for split, rows in raw.items():
            for j, row in enumerate(rows):
                to_record(row, fmt, j, split, "", args.path)
                n += 1
        if n == 0:
            raise DataError(f"{args.path}: dataset is empty (0 rows)")
    except DataError as e:
        print(f"invalid: {e}", file=sys.stderr)
        return 1
    print(json.dumps({"path": args.path, "format": fmt, "rows": {s: len(r) for s, r in raw.items()}, "valid": True}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
