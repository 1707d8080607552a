"""The comparison recipe: ``setup()`` once, then for each technique load -> train -> save ->
evaluate -> free, and a report at the end. A technique that fails is recorded as failed with its
reason; the others still run, and ``results.json`` is rewritten atomically after each one."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import statistics
import time
import traceback
from pathlib import Path

import torch

from . import (allocator, basecache, baselines, decisions, evaluation, interpolation, lanes, model_card, provenance,
               replay, report, rundir, scoring, techniques)
from .config import RunConfig, load_config
from .data import retention
from .data.prepare import prepare_training_data
from .data.tokenize import tokenize_records
from .measure import (PeakMemory, dir_size, free_memory, machine_peak, reuse_freed_memory, train_flops_per_token,
                      weights_bytes)
from .memory import GiB, MemoryBudgetError, check_fits, estimate_for_run, memory_budget
from .modeling import (check_bitsandbytes, count_parameters, load_model, reload_adapter, save_converted_adapter,
                       save_initial_adapter)
from .results import SCHEMA_VERSION, MethodResult, Status, environment, write_json_atomic
from .runtime import cpu_precision_advice, resolve
from .training import latest_checkpoint, train

log = logging.getLogger(__name__)
# evaluation settings the base phase does not read: a change to them keeps its cached evaluation (basecache)
BASE_IGNORES = ("reuse_base", "keep_general", "keep_measure", "fallback_margin", "fallback_share", "curve_alphas",
                "curve_every_point", "curve_refine", "curve_examples", "num_samples")
# what a technique's result keeps of alpha = 1 when its operating point is elsewhere
TRAINED_KEYS = ("accuracy", "accuracy_ci95", "per_category", "formats", "retention", "predictions", "correct",
                "eval_loss", "perplexity")
ORIGIN_FILE = ".origin.json"  # in lanes: every curve's origin, written by the job that measured it


class Comparison:
    """Fine-tune one base model with each configured technique on the same data and compare.

    Args:
        config: None (configs/default.yaml), a YAML path, a dict, or a ``RunConfig``.
        overrides: dotted ``key=value`` strings applied on top, e.g. ``["train.max_steps=20"]``.

    Raises:
        ConfigError: invalid configuration (all problems listed), before anything is loaded.
    """

    def __init__(self, config=None, overrides: list[str] | None = None):
        self.cfg: RunConfig = load_config(config, overrides)
        # Under torchrun / accelerate launch every process trains (data-parallel); only rank 0
        # evaluates, saves and writes results.
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.is_main = int(os.environ.get("RANK", "0")) == 0
        self.run_dir: Path | None = None
        self.results: dict = {}
        self._ready = False
        self.replay_info: dict = {}
        self.replay_rows: list[dict] = []  # the base's own answers to general prompts, tokenized (train.replay_share)
        self._mixed: dict[float, list[dict]] = {}  # rows_for's lists, by replay share
        self.base_validation: dict = {}  # every curve's origin (the base's validation point), once measured
        self._lane_dir: Path | None = None
        self._origin: dict = {}  # in lanes: which job measures the origin, and the file it writes it to

    # ---- setup ------------------------------------------------------------------------------
    def setup(self, resume: bool = False) -> "Comparison":
        """Resolve device and precision, load and tokenize the data, resolve the base model and
        tokenizer, and create the run directory. Data and environment errors surface here, before
        any model weights are loaded.

        Args:
            resume: reuse the existing folder ``output_dir/run_name`` of an interrupted run; its saved
                config must match this one on every field that changes what is trained.
        """
        from transformers import set_seed

        cfg = self.cfg
        set_seed(cfg.seed)
        self.rt = resolve(cfg.train.device, cfg.train.precision)
        if techniques.any_quantized(cfg.methods):
            check_bitsandbytes()
        data = prepare_training_data(cfg)
        self.model_path, self.tokenizer, self.records, self.train_rows = (data.model_path, data.tokenizer, data.records,
                                                                          data.train_rows)
        if cfg.train.replays(cfg.methods):
            self.train_rows, self.replay_rows, self.replay_info = replay.prepare(
                self.train_rows, self.model_path, self.tokenizer, cfg, self.rt)
        val_records = self.records["validation"][: cfg.eval.max_val_examples]
        self.val_rows, val_stats = tokenize_records(val_records, self.tokenizer, cfg.model.max_length, "drop",
                                                    "validation", cfg.data.train_on == "all_assistant_turns")
        self.test_records = self.records["test"][: cfg.eval.max_test_examples]
        self.pools = scoring.candidate_pools(*self.records.values())
        sp = cfg.model.system_prompt
        self.retention_records = retention.records(sp, "test") if cfg.eval.retention else []
        self.general_val = retention.records(sp, "validation") if cfg.eval.retention else []
        self.general_like_test = retention.like_test(self.general_val)
        self.retention_pools = retention.pools()
        # the curve's NBA measure: teacher-forced exact match on the whole validation split
        self.select_rows = tokenize_records(self.records["validation"], self.tokenizer, cfg.model.max_length, "drop",
                                            "validation", cfg.data.train_on == "all_assistant_turns")[0]
        self.curve_rows = self.val_rows[: cfg.eval.curve_examples]
        self.dataset_info = {
            "replay": self.replay_info,
            "source": cfg.data.source,
            "sizes": {s: len(r) for s, r in self.records.items()},
            "test_evaluated": len(self.test_records),
            "train_tokenization": data.train_stats.to_dict(),
            "validation_tokenization": val_stats.to_dict(),
            "train_tokens_per_epoch": {m: sum(r["length"] for r in self.rows_for(m)) for m in cfg.methods},
        }
        self.memory_estimates = self._check_memory()
        # what each model's evaluation will add to its loaded weights
        self.eval_memory_estimates = evaluation.memory_estimates(cfg, self.model_path, self.tokenizer,
                                                                 self.test_records, self.retention_records,
                                                                 self.rt.device, self.rt.precision)
        if self._lane_dir:  # a lane's process works in its run's folder (lane_job)
            self.run_dir = self._lane_dir
        else:
            self.run_dir = rundir.create(cfg, self.world_size, resume)
            if self.is_main:
                rundir.write_config(self.run_dir, cfg)
        self._ready = True
        return self

    def rows_for(self, method: str) -> list[dict]:
        """What ``method`` trains on: the NBA training rows with the base's own answers to general prompts mixed in
        at its ``train.replay_share`` (one list per share)."""
        share = self.cfg.train.replay_share_for(method) if self.replay_rows else 0.0
        if share not in self._mixed:
            self._mixed[share] = replay.mix(self.train_rows, self.replay_rows, share)
        return self._mixed[share]

    def _check_memory(self) -> dict:
        """Estimate each technique's peak before anything trains; refuse (or warn about) those that
        will not fit, all named at once."""
        t = self.cfg.train
        if t.memory_check == "skip":
            return {}
        try:
            estimates = estimate_for_run(self.cfg, self.model_path, self.rows_for, self.tokenizer.pad_token_id,
                                         self.rt.device, self.rt.precision)
        except ValueError as e:  # an architecture the estimator does not know: train without a check
            log.warning("no memory estimate: %s", e)
            return {}
        budget, problems = memory_budget(t, self.rt.device), []
        for m, est in estimates.items():
            log.info("memory estimate %s (budget %.1f GiB)", est.describe(), budget / GiB)
            try:
                check_fits(est, budget, t.batch_size, t.memory_check, t.gradient_checkpointing[m], t.grad_accum)
            except MemoryBudgetError as e:
                problems.append(str(e))
        if problems:
            raise MemoryBudgetError("the run will not fit in memory:\n  - " + "\n  - ".join(problems))
        return estimates

    # ---- execute ----------------------------------------------------------------------------
    def execute(self, methods: list[str] | None = None, resume: bool = False) -> dict:
        """Evaluate the base model, then run each technique; return the comparison dict (also
        written to ``<run_dir>/results.json``).

        Args:
            methods: registered techniques (``nbatune.techniques``). Default: ``config.methods``.
            resume: continue the interrupted run ``output_dir/run_name``: methods that finished are kept,
                an interrupted one continues from its last checkpoint, the rest run.

        Raises:
            KeyboardInterrupt: after the current method saved a checkpoint and results.json was written.
        """
        if not self.cfg.enabled:
            return {"status": "disabled", "message": "config.enabled is false: nothing was run"}
        if not self._ready:
            self.setup(resume=resume)
        methods = list(methods or self.cfg.methods)
        bad = [m for m in methods if m not in techniques.names()]
        if bad:
            raise ValueError(f"methods: {bad} are not techniques (allowed: {', '.join(techniques.names())})")
        if self.rt.device == "cpu" and (tip := allocator.advice()):
            log.warning("%s", tip)
        if tip := cpu_precision_advice(self.rt):
            log.warning("%s", tip)
        with reuse_freed_memory():
            return self._execute(methods, resume)

    def _execute(self, methods: list[str], resume: bool) -> dict:
        t0 = time.perf_counter()
        self.results = {"schema_version": SCHEMA_VERSION, "run_dir": str(self.run_dir), "config": self.cfg.to_dict(),
                        "fingerprint": self._fingerprint(),
                        "environment": {**environment(self.rt.describe()), "matmul": machine_peak(self.rt.device)},
                        "dataset": self.dataset_info,
                        "model_path": self.model_path,
                        "provenance": provenance.origin(self.cfg.model, self.model_path),
                        "test_questions": [{"question": baselines.question_text(r), "answer": r["answer"],
                                            "category": r["category"], "format": r.get("format", ""),
                                            "unseen": r.get("unseen", False)} for r in self.test_records]}
        previous = rundir.earlier_results(self.run_dir) if resume else {}
        if self.is_main:
            self.results["baselines"] = previous.get("baselines") or {"trivial": self._trivial_baseline()}
        order = (["base"] if self.cfg.evaluate_base and self.is_main else []) + methods
        todo, base_key = [], None
        for m in order:
            if previous.get(m, {}).get("status") == Status.OK.value:
                log.info("=== %s: finished in the interrupted run, kept ===", m)
                self.results[m] = previous[m]
                continue
            if m == "base":
                base_key = self._base_key()  # hashes the model's files: once per run
                if self._reuse_base(base_key, time.perf_counter()):
                    self._add_base_baselines()
                    self._write()
                    continue
            todo.append(m)
        n = self._lanes(todo)
        interrupted = None
        for m, out in (self._in_lanes(todo, n, resume) if n > 1 else self._one_by_one(todo, resume)):
            self._take(m, out, base_key)
            if self.results[m].get("status") == Status.INTERRUPTED.value:
                interrupted = m
        for m in order:  # the config's order, not the order the lanes finished in
            if m in self.results:
                self.results[m] = self.results.pop(m)
            if m in self.results.get("phases", {}):
                self.results["phases"][m] = self.results["phases"].pop(m)
        if interrupted:
            raise KeyboardInterrupt(f"interrupted during {interrupted}; resume with execute(resume=True) and "
                                    f"run_name={self.run_dir.name!r}")
        self.results["total_seconds"] = time.perf_counter() - t0
        if not self.is_main:
            return self.results
        self.results["comparison"] = decisions.comparison(self.results)
        self._write()
        for m in methods:  # once the comparison they quote exists
            if self.results[m].get("status") == Status.OK.value and self.results[m].get("saved_path"):
                self._write_card(self.results[m]["saved_path"], m)
        t_r = time.perf_counter()
        self.results["report"] = report.write_all(self.results, self.run_dir)
        # after the report that quotes the phases before it, so that a rebuild writes the same report
        self.results.setdefault("phases", {})["report"] = {"wall_s": time.perf_counter() - t_r}
        self._write()
        return self.results

    def _job(self, method: str, resume: bool = False) -> dict:
        """One model's whole work (its repeats, evaluation and curve): its result, where its time went, and for
        the base the NF4 error it measured. JSON-able, so that a lane's process can hand it back."""
        if self._origin.get("by") == method:
            self._measure_origin()
        t0 = time.perf_counter()  # the origin's seconds are the base's (``_take``)
        res = self._run_repeats(method, resume)
        out = {"result": res.to_dict(), "phases": self._phases(res, time.perf_counter() - t0)}
        if lanes.widened_at() is not None:
            out["phases"]["all_cores_from_s"] = lanes.widened_at()
        if method == "base":
            out["nf4_error"] = self.results["provenance"].get("nf4_error")
        return out

    def _one_by_one(self, todo: list[str], resume: bool):
        for m in todo:
            out = self._job(m, resume)
            yield m, out
            if out["result"].get("status") == Status.INTERRUPTED.value:
                return  # the rest waits for the resumed run

    def _lanes(self, todo: list[str]) -> int:
        """``lanes`` for this run (``nbatune.lanes.auto_lanes``), and 1 where the two largest training estimates
        together would not fit the memory budget."""
        n = lanes.auto_lanes(self.cfg.lanes, self.rt.device, self.world_size, len(todo))
        est = sorted((self.memory_estimates[m].total for m in todo if m in self.memory_estimates), reverse=True)
        budget = memory_budget(self.cfg.train, self.rt.device)
        if n > 1 and sum(est[:n]) > budget:
            log.warning("one model at a time: %d models side by side would need %.1f GiB of the %.1f GiB budget",
                        n, sum(est[:n]) / GiB, budget / GiB)
            return 1
        return n

    def _in_lanes(self, todo: list[str], n: int, resume: bool):
        """``todo`` in ``n`` lanes (``nbatune.lanes``), longest first. Every curve's origin, the base's validation
        point, is measured by the first job before its own work (``_measure_origin``): no lane waits for the base's
        job, and the lanes start at once. The matmul peak of one lane's cores is measured here, the denominator of
        each technique's MFU."""
        sets = lanes.core_sets(n)
        threads = torch.get_num_threads()
        torch.set_num_threads(len(sets[0]))
        try:
            self.results["environment"]["lanes"] = {"lanes": n, "cores": sets,
                                                    "matmul": machine_peak(self.rt.device)}
        finally:
            torch.set_num_threads(threads)
        # longest first: the lanes end closer together
        todo = sorted(todo, key=lambda m: -self.memory_estimates[m].total if m in self.memory_estimates else 0)
        origin = {}
        if "base" in todo and self._curve_on():
            origin = {"by": todo[0], "file": str(self.run_dir / ORIGIN_FILE)}
            Path(origin["file"]).unlink(missing_ok=True)
            Path(origin["file"]).with_suffix(".failed").unlink(missing_ok=True)
        spec = {"config": self.cfg.to_dict(), "run_dir": str(self.run_dir), "resume": resume,
                "results": self.results, "base_validation": self.base_validation, "origin": origin}
        try:
            for m, out in lanes.run(todo, "nbatune.compare:lane_job", spec, n, self.run_dir / ".lanes"):
                if m == origin.get("by") and not Path(origin["file"]).exists():
                    # its process ended before measuring: whoever waits for the origin measures its own
                    Path(origin["file"]).with_suffix(".failed").touch()
                yield m, out
        finally:
            if origin:
                Path(origin["file"]).unlink(missing_ok=True)
                Path(origin["file"]).with_suffix(".failed").unlink(missing_ok=True)

    def _measure_origin(self) -> None:
        """In the lane's first job: the base's validation point, every curve's origin, written where the other
        lanes' jobs read it (``_origin_point``)."""
        t0, path, model = time.perf_counter(), Path(self._origin["file"]), None
        try:
            model = load_model(self.model_path, "base", self.cfg.model, self.rt, self.cfg.lora, self.cfg.quant,
                               self.cfg.seed)
            point = self._validation_point(model, 0.0, origin=True)
        except Exception as e:  # noqa: BLE001 -- this job goes on; each technique then measures its own origin
            log.warning("the base's validation point (every curve's origin) failed here: %s: %s", type(e).__name__, e)
            path.with_suffix(".failed").touch()
            return
        finally:
            del model
            free_memory()
        self.base_validation = {**point, "seconds": time.perf_counter() - t0, "measured_by": self._origin["by"]}
        write_json_atomic(path, self.base_validation)

    def _origin_point(self) -> dict:
        """Every curve's origin: the base's validation point as measured in this run ({} when it was not). In a
        lane, waits for the job that measures it (the first one started, so seconds at most) unless it failed."""
        if self.base_validation or not self._origin:
            return self.base_validation
        path = Path(self._origin["file"])
        while not path.exists() and not path.with_suffix(".failed").exists():
            time.sleep(0.2)
        if path.exists():
            self.base_validation = json.loads(path.read_text())
        return self.base_validation

    def _take(self, method: str, out: dict, base_key: str | None) -> None:
        """A finished model's results into the run's (and results.json)."""
        if "lane_error" in out:
            res = MethodResult(method=method, status=Status.FAILED, error=f"its lane failed: {out['lane_error']}")
            log.error("%s failed: %s", method, res.error)
            self.results[method] = res.to_dict()
        else:
            self.results[method] = out["result"]
            self.results.setdefault("phases", {})[method] = out["phases"]
            if out.get("nf4_error") is not None:
                self.results["provenance"]["nf4_error"] = out["nf4_error"]
        if method == "base":
            origin = self.results["base"].get("validation") or {}
            if origin.get("measured_by") not in (None, "base") and "base" in self.results.get("phases", {}):
                for k in ("wall_s", "other_s"):  # its origin, measured in another job's process
                    self.results["phases"]["base"][k] += origin["seconds"]
            self._add_base_baselines()
            self._store_base(base_key)
        self._write()

    @staticmethod
    def _phases(res: MethodResult, wall: float) -> dict:
        """Where one model's wall time went (seconds): loading, training (its optimizer steps, the learning
        curve's measurements, the trainer's setup), saving, the eval loss and test answers (and the operating
        point's second ones), the retention test's answers (both of them too), the curve (the base: its validation point,
        every curve's origin), the few-shot baseline; ``other`` is what is left (freeing memory, parameter counts,
        copies for the curve, repeats)."""
        out = {"wall_s": wall, "load_s": res.load_seconds, "train_s": res.train_seconds,
               "learning_curve_s": res.learning_curve_seconds, "train_setup_s": res.train_setup_seconds,
               "save_s": res.save_seconds, "eval_s": res.eval_seconds, "retention_s": res.retention_seconds}
        if res.operating_point:
            out["curve_s"] = res.operating_point.get("seconds", 0.0)
        elif res.validation:
            out["curve_s"] = res.validation.get("seconds", 0.0)
        if res.few_shot:
            out["few_shot_s"] = res.few_shot.get("seconds", 0.0)
        if res.quantized_base:
            out["quantized_base_s"] = res.quantized_base.get("seconds", 0.0)
        out["other_s"] = wall - sum(v for k, v in out.items() if k != "wall_s")
        return out

    def _trivial_baseline(self) -> dict:
        """The best rule per category (constant answer or copying a number), fitted on train, scored on test
        (and on validation, for choosing operating points)."""
        cats = {r["category"] for r in self.test_records + self.records["validation"]}
        rules = baselines.fit_trivial(self.records["train"], self.pools, cats)
        preds = baselines.trivial_predictions(rules, self.test_records)
        val = self.records["validation"]
        val_acc = scoring.score(val, baselines.trivial_predictions(rules, val), self.pools)["accuracy"] if val else 0.0
        return {**scoring.score(self.test_records, preds, self.pools), "predictions": preds, "rules": rules,
                "validation_accuracy": val_acc}

    def _add_base_baselines(self) -> None:
        base = self.results["base"]
        if base["status"] != Status.OK.value:
            return
        b = self.results["baselines"]
        b["zero_shot"] = {k: base[k] for k in ("accuracy", "accuracy_ci95", "per_category", "correct", "formats")}
        if base.get("few_shot"):
            b["few_shot"] = base["few_shot"]

    def _base_key(self) -> str | None:
        """``basecache``'s key for this run's base phase: everything that phase reads, and what computes it."""
        cfg = self.cfg.to_dict()
        # what only the techniques read (their curves, the policy, the report), or this cache itself
        cfg["eval"] = {k: v for k, v in cfg["eval"].items() if k not in BASE_IGNORES}
        env = self.results["environment"]
        inputs = {"config": {k: cfg[k] for k in ("model", "eval", "quant", "data")},
                  "nf4_error": techniques.any_quantized(self.cfg.methods), "curve": self._curve_on(),
                  "quantized_base": self._quantized_method(),
                  "records": [self.test_records, self.val_rows, self.retention_records, self.retention_pools,
                              self.pools, self.general_val, self.select_rows, self.records["train"]]}
        # the threads the base will answer with: a lane's cores, or all of them
        n = lanes.auto_lanes(self.cfg.lanes, self.rt.device, self.world_size, 1 + len(self.cfg.methods))
        machine = {"device": env["device"], "versions": env["versions"],
                   "matmul": {k: env["matmul"].get(k) for k in ("kind", "features", "threads")},
                   **({"lane_cores": len(lanes.core_sets(n)[0])} if n > 1 else {})}
        return basecache.key(self.model_path, inputs, machine)

    def _reuse_base(self, k: str | None, t0: float) -> bool:
        """Take the base's results from ``basecache`` (key ``k``) when ``eval.reuse_base`` allows and an earlier run
        with the same key stored them; True when taken."""
        if not self.cfg.eval.reuse_base:
            return False
        if k is None:
            log.info("base: %s is not a local folder, so its evaluation is not kept between runs", self.model_path)
            return False
        entry = basecache.load(k)
        if entry is None:
            log.info("base: no earlier evaluation with this code, model, data, settings and machine; measuring it")
            return False
        log.info("=== base: reused from %s (%s; eval.reuse_base=false measures it again) ===",
                 entry["run_dir"], entry["written"])
        self.results["base"] = {**entry["base"], "reused_from": {"run_dir": entry["run_dir"],
                                                                 "written": entry["written"], "key": k}}
        if entry.get("nf4_error") is not None:
            self.results["provenance"]["nf4_error"] = entry["nf4_error"]
        self.results.setdefault("phases", {})["base"] = {"wall_s": time.perf_counter() - t0,
                                                         "reused_s": entry["phases"]["wall_s"]}
        return True

    def _store_base(self, k: str | None) -> None:
        """Keep a finished base evaluation for later runs under key ``k`` (a failure to write costs a warning,
        nothing else)."""
        if k is None or self.results["base"].get("status") != Status.OK.value or not self.is_main:
            return
        try:
            path = basecache.store(k, self.results["base"],
                                   self.results["provenance"].get("nf4_error"), self.results["phases"]["base"],
                                   str(self.run_dir))
            log.info("base: evaluation kept for later runs in %s", path)
        except OSError as e:
            log.warning("base: could not keep its evaluation for later runs: %s", e)

    def _run_repeats(self, method: str, resume: bool) -> MethodResult:
        """``train.repeats`` trainings of one technique with seeds seed, seed+1, ...; the first is kept
        whole (and saved), the others as summaries, with the mean and spread of their accuracies."""
        n = 1 if method == "base" else self.cfg.train.repeats
        first = None
        for i in range(n):
            seed = self.cfg.seed + i
            log.info("=== %s%s ===", method, f" (repeat {i + 1}/{n}, seed {seed})" if n > 1 else "")
            res = self._run_method(method, seed, resume=resume and i == 0, save=i == 0)
            if first is None:
                first = res
            first.repeats.append(res.summary())
            if res.status != Status.OK:
                first.status, first.error = res.status, res.error
                break
        accs = [r["accuracy"] for r in first.repeats if r["accuracy"] is not None]
        if accs:
            first.accuracy_mean = sum(accs) / len(accs)
            first.accuracy_sd = statistics.stdev(accs) if len(accs) > 1 else None
        return first

    def _write_card(self, folder: str, method: str) -> None:
        """The saved model's card with the run's evidence; a card that cannot be written costs a warning,
        never the technique's results."""
        try:
            model_card.write(folder, self.results, method)
        except Exception as e:  # noqa: BLE001
            log.warning("no model card for %s: %s: %s", method, type(e).__name__, e)

    def _fingerprint(self) -> dict:
        """What makes two runs comparable: the same config, data and seed on the same software."""
        def digest(obj) -> str:
            return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]

        trained = {k: v for k, v in self.cfg.to_dict().items() if k not in ("output_dir", "run_name")}
        return {"config_sha256": digest(trained), "data_sha256": digest(self.records), "seed": self.cfg.seed}

    def _write(self):
        if self.is_main:
            write_json_atomic(self.run_dir / "results.json", self.results)

    def _run_method(self, method: str, seed: int, resume: bool = False, save: bool = True) -> MethodResult:
        res = MethodResult(method=method, seed=None if method == "base" else seed)
        model = None
        try:
            gc_on = self.cfg.train.gradient_checkpointing.get(method, False)
            with PeakMemory(self.rt.device) as mem:
                t_load = time.perf_counter()
                model = load_model(self.model_path, method, self.cfg.model, self.rt, self.cfg.lora, self.cfg.quant,
                                   seed, gradient_checkpointing=gc_on)
                res.load_seconds = time.perf_counter() - t_load
                res.trainable_params, res.total_params = count_parameters(model)
                if method != "base":
                    res.train_flops_per_token = train_flops_per_token(
                        res.total_params, model.get_input_embeddings().weight.numel(), not techniques.get(method).adapter)
                res.weights_bytes = weights_bytes(model)
                how = interpolation.curve_kind(method, self.cfg.lora) if method != "base" else None
                # the interpolated path starts at the parameters' values before training
                initial = interpolation.trainable_state(model) if how == "interpolate" and self._curve_on() else None
                converts = method != "base" and techniques.get(method).converts_to_lora
                if converts and self.is_main:
                    save_initial_adapter(model, self._initial_adapter(method, seed))
                if method != "base":
                    ckpt_dir = self.run_dir / method / ("checkpoints" if save else f"checkpoints-seed{seed}")
                    def curve(mdl, mem=mem):
                        with mem.paused():  # the learning curve is a measurement, not training memory
                            return evaluation.teacher_forced_exact_match(mdl, self.tokenizer, self.curve_rows,
                                                                         self.rt)
                    out = train(model, self.tokenizer, self.rows_for(method), method, self.cfg.train, self.rt, ckpt_dir,
                                seed, resume=resume and latest_checkpoint(ckpt_dir) is not None,
                                curve=curve if self.is_main else None)
                    res.record_training(out)
                    env = self.results.get("environment", {})
                    peak = ((env.get("lanes") or env).get("matmul") or {}).get(
                        "fp32_flops" if self.rt.precision == "fp32" else "bf16_flops")
                    res.mfu = res.tokens_per_second * res.train_flops_per_token / peak if peak else None
            res.trainable_pct = 100 * res.trainable_params / res.total_params if res.total_params else 0.0
            res.peak_memory_bytes = mem.peak_bytes
            if method in self.memory_estimates:
                res.estimated_peak_bytes = self.memory_estimates[method].total
            if not self.is_main:
                return res
            t_save = time.perf_counter()
            if method == "base":
                res.saved_path = self.model_path
            elif save:
                res.saved_path = str(self._save(model, method, seed))
                if initial is not None and techniques.get(method).adapter:
                    interpolation.save_initial(initial, res.saved_path)
                res.saved_bytes = dir_size(res.saved_path)
            res.save_seconds = time.perf_counter() - t_save
            if converts:  # score what reloads: the converted LoRA on the untouched base, not the split base
                t_load = time.perf_counter()
                folder = Path(res.saved_path) if save else self._save(model, method, seed, f"adapter-seed{seed}")
                del model
                free_memory()
                model = reload_adapter(self.model_path, method, self.cfg.model, self.rt, folder)
                if not save:
                    shutil.rmtree(folder)
                res.load_seconds += time.perf_counter() - t_load
            with PeakMemory(self.rt.device) as eval_mem:
                res.record_evaluation(self._evaluate(model))
            res.eval_peak_memory_bytes = eval_mem.peak_bytes
            if method in self.eval_memory_estimates:
                res.estimated_eval_peak_bytes = self.eval_memory_estimates[method].total
            if method == "base":
                self._base_extras(model, res)
            elif self._curve_on():
                self._operating_point(model, res, interpolation.AlphaPath(model, how, initial))
        except KeyboardInterrupt:
            res.status, res.error = Status.INTERRUPTED, "interrupted (Ctrl-C); a checkpoint was saved if a step finished"
        except Exception as e:  # one technique failing must not lose the others
            log.error("%s failed: %s", method, e)
            res.status, res.error = Status.FAILED, f"{type(e).__name__}: {e}"
            (self.run_dir / f"{method}-error.txt").write_text(traceback.format_exc())
        finally:
            del model
            free_memory()
        return res

    def _evaluate(self, model) -> dict:
        lanes.widen()
        return evaluation.evaluate_model(model, self.tokenizer, self.val_rows, self.test_records, self.rt,
                                         self.cfg.eval, self.pools, self.retention_records, self.retention_pools)

    def _curve_on(self) -> bool:
        return bool(self.cfg.eval.curve_alphas and self.general_val and self.is_main)

    def _validation_point(self, model, alpha: float, base: dict | None = None, origin: bool = False) -> dict:
        """The curve's cheap measures at one point: NBA validation (teacher-forced exact match, every row) and
        general validation (generated answers, scored as the retention test). The ``origin`` (the base) also keeps
        which general questions it answers right; against ``base`` (the origin's point), a point records the share
        of those it still answers right (``general_known``, the policy's measure under ``eval.keep_measure:
        known``) and its score ratio reweighted to the test's mix (``general_stratified``)."""
        nba = evaluation.teacher_forced_exact_match(model, self.tokenizer, self.select_rows, self.rt)
        general = evaluation.answer_and_score(model, self.tokenizer, self.general_val, self.rt, self.cfg.eval,
                                              self.retention_pools, f"general validation, alpha {alpha:g}",
                                              evaluation.RETENTION_MAX_NEW_TOKENS)
        point = {"alpha": alpha, "nba_validation": nba, "general_validation": general["accuracy"]}
        if origin:
            point["general_correct"] = general["correct"]
        elif (base or {}).get("general_correct") is not None:
            point["general_known"] = decisions.general_known(base["general_correct"], general["correct"])
            point["general_stratified"] = decisions.general_stratified(base["general_correct"], general["correct"],
                                                                       self.general_like_test)
        return point

    def _operating_point(self, model, res: MethodResult, path) -> None:
        """Score the curve on validation, choose the point by the policy, and when it is not the trained model,
        evaluate the chosen point on test: the top-level figures are then the chosen point's (what ``ask``,
        ``export`` and ``load_from_run`` give), and ``trained`` keeps alpha = 1's."""
        e = self.cfg.eval
        t0 = time.perf_counter()
        base = (self.results.get("base") or {}).get("validation") or self._origin_point()
        if "general_validation" not in base:  # the base was not evaluated: alpha = 0 is the base exactly
            path.set(0.0)
            base = self._validation_point(model, 0.0, origin=True)

        def score(a):
            lanes.widen()
            path.set(a)
            return self._validation_point(model, a, base)

        trivial = (self.results.get("baselines") or {}).get("trivial", {}).get("validation_accuracy", 0.0)
        strongest = max(trivial, base.get("nba_validation", 0.0))
        res.curve, skipped = decisions.score_curve(e.curve_alphas, score, base["general_validation"], strongest,
                                                   e.keep_general, e.curve_every_point, e.curve_refine, e.keep_measure)
        res.operating_point = {**decisions.operating_point(res.curve, base["general_validation"], strongest,
                                                           e.keep_general, e.fallback_margin,
                                                           measure=e.keep_measure, share=e.fallback_share),
                               "base_general_validation": base["general_validation"],
                               "strongest_validation_baseline": strongest, "not_scored": skipped,
                               "seconds": time.perf_counter() - t0}  # the curve; a second evaluation is eval time
        path.set(res.operating_point["alpha"])  # the curve ends at its lowest scored point
        if res.operating_point["alpha"] != 1.0:
            res.trained = {k: v for k, v in res.to_dict().items() if k in TRAINED_KEYS}
            eval_s, retention_s = res.eval_seconds, res.retention_seconds
            res.record_evaluation(self._evaluate(model))
            res.eval_seconds += eval_s
            res.retention_seconds += retention_s

    def _base_extras(self, model, res: MethodResult) -> None:
        """The few-shot baseline, the NF4 error measured on the untouched base, and its validation scores
        (the origin of every technique's curve)."""
        lanes.widen()
        if self._origin_point():
            res.validation = self.base_validation
        elif self._curve_on():
            t0 = time.perf_counter()
            res.validation = {**self._validation_point(model, 0.0, origin=True), "seconds": time.perf_counter() - t0}
        k = self.cfg.eval.few_shot
        if k:
            t0 = time.perf_counter()
            shots = baselines.few_shot_records(self.test_records, self.records["train"], k, self.cfg.data.seed)
            few = evaluation.answer_and_score(model, self.tokenizer, shots, self.rt, self.cfg.eval, self.pools,
                                              f"{k}-shot answers")
            res.few_shot = {**few, "k": k, "seconds": time.perf_counter() - t0}
        if techniques.any_quantized(self.cfg.methods):
            self.results["provenance"]["nf4_error"] = provenance.nf4_weight_error(model, self.cfg.quant)
            res.quantized_base = self._quantized_base(res.validation)

    def _quantized_method(self) -> str | None:
        """The run's first quantized technique: the one whose 4-bit base ``_quantized_base`` loads."""
        return next((m for m in self.cfg.methods if techniques.get(m).quantized), None)

    def _quantized_base(self, base: dict | None) -> dict:
        """The 4-bit base every quantized technique starts from: its first such technique loaded as it trains, the
        adapter at its initialisation (adding nothing), scored as the base is, on validation (the point its curve
        leaves from: a QLoRA at alpha 0 is this model, not the base; against ``base``, the base's validation point)
        and on the retention test (so that what a quantized technique forgot splits into what the 4-bit rounding
        cost and what training did). A failure costs this measurement only."""
        method = self._quantized_method()
        t0, model = time.perf_counter(), None
        try:
            model = load_model(self.model_path, method, self.cfg.model, self.rt, self.cfg.lora, self.cfg.quant,
                               self.cfg.seed)
            out = {"method": method}
            if self._curve_on():
                out["validation"] = self._validation_point(model, 0.0, base)
            if self.retention_records:
                out["retention"] = evaluation.answer_and_score(
                    model, self.tokenizer, self.retention_records, self.rt, self.cfg.eval, self.retention_pools,
                    "4-bit base: retention", evaluation.RETENTION_MAX_NEW_TOKENS)
        except Exception as e:  # noqa: BLE001 -- the base's own results stand without it
            log.warning("the 4-bit base could not be measured: %s: %s", type(e).__name__, e)
            out = {"method": method, "error": f"{type(e).__name__}: {e}"}
        finally:
            del model
            free_memory()
        return {**out, "seconds": time.perf_counter() - t0}

    def _initial_adapter(self, method: str, seed: int) -> Path:
        """Where a converts_to_lora adapter's values before training wait for the conversion at save time."""
        return self.run_dir / method / f"initial-adapter-seed{seed}"

    def _save(self, model, method: str, seed: int, folder: str | None = None) -> Path:
        """A whole model: a standalone safetensors checkpoint. An adapter technique: the adapter only (one that
        rewrote the base at initialisation: converted to the LoRA it amounts to on the untouched base)."""
        tech = techniques.get(method)
        path = self.run_dir / method / (folder or tech.saved_folder)
        if tech.converts_to_lora:
            save_converted_adapter(model, path, self._initial_adapter(method, seed))
        else:
            model.save_pretrained(path)
        self.tokenizer.save_pretrained(path)
        return path

    def rebuild_report(self, run_dir: str | Path | None = None) -> dict:
        """Rebuild the comparison, report and plots from a saved run's results.json, without retraining.

        Args:
            run_dir: the run folder. Default: this object's last run.
        """
        target = run_dir or self.run_dir
        if target is None:
            raise ValueError("rebuild_report() needs a run_dir, or a finished execute() on this object")
        return report.rebuild(target)

    def cleanup(self) -> None:
        free_memory()


def lane_job(spec: dict, method: str) -> dict:
    """One model's job in a lane's process (``nbatune.lanes``): the run's ``Comparison`` set up again from its
    config (the data and rows come out the same: the same seeds, the replay answers cached), in the run's folder,
    with what the parent measured before the lanes started (the environment, the baselines, every curve's origin)."""
    cmp = Comparison(spec["config"])
    cmp._lane_dir = Path(spec["run_dir"])
    cmp.setup()
    cmp.results, cmp.base_validation, cmp._origin = spec["results"], spec["base_validation"], spec.get("origin", {})
    with reuse_freed_memory():  # what execute() does for the parent's process
        return cmp._job(method, spec["resume"])
