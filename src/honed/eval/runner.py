"""`evaluate(cfg)`: run every model of an EvalConfig over the same samples and build the report.

For each model, top to bottom: load → batched greedy answers (timed) → label log-likelihoods
(classification) → reference loss → preference pairs → stability re-asks → general-ability set →
free it → score → judge → lm-eval. Then over-/under-fitting from the first model's run folder,
and the report. Under torchrun every pass is sharded across ranks by whole batches
(honed.eval.sharding), rank 0 alone scores and writes, and runs the judge and lm-eval after the
last model (so the other ranks never wait on them).

>>> # from honed.eval import evaluate, load_eval_config
>>> result = evaluate(load_eval_config("eval.yaml"))                 # doctest: +SKIP
>>> result.report["models"][0]["metrics"]["generation"]["rougeL"]      # doctest: +SKIP
"""

from __future__ import annotations

import gc
import logging
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from honed.data.conversation import Conversation, Message
from honed.errors import OutputExistsError
from honed.eval.config import EvalConfig
from honed.eval.extras import add_extra_metrics
from honed.eval.fitting import run_fitting
from honed.eval.metrics import aggregate_stability, answer_stability, latency_percentiles, tokens_per_second
from honed.eval.metrics.meteor import meteor_synonyms
from honed.eval.models import ModelSpec, checkpoint_specs, resolve_models, size_on_disk
from honed.eval.samples import EvalSample, load_samples
from honed.eval.scoring import Scorer, build_detector, score_model
from honed.eval.sharding import EvalShard, eval_shard
from honed.train.distributed import local_device

log = logging.getLogger(__name__)


@dataclass
class ModelRun:
    """Everything measured for one model: answers and per-sample scores, plus report metrics."""

    spec: ModelSpec
    role: str  # "evaluated", "baseline", "checkpoint" or "other"
    answers: list[str] = field(default_factory=list)
    per_sample: list[dict] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    metrics: dict = field(default_factory=dict)
    general_rows: list[dict] = field(default_factory=list)
    judge_rows: list[dict] = field(default_factory=list)


@dataclass
class EvalResult:
    report: dict
    runs: list[ModelRun]
    output_dir: Path | None = None


def _rss_bytes() -> int:
    # Current resident set size from /proc (Linux); elsewhere the process high-water mark.
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        import os

        return pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class _Memory:
    """Peak memory while one model runs: CUDA max allocated, else the largest RSS sampled."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(device)
        self.device, self.peak = device, _rss_bytes()

    def sample(self) -> None:
        if not self.cuda:
            self.peak = max(self.peak, _rss_bytes())

    def result(self) -> dict:
        if self.cuda:
            return {"peak_memory_bytes": int(torch.cuda.max_memory_allocated(self.device)), "peak_memory_kind": "cuda_max_allocated"}
        self.sample()
        return {"peak_memory_bytes": int(self.peak), "peak_memory_kind": "process_rss"}


def _settings(cfg: EvalConfig, **changes):
    from honed.infer.generate import GenerationSettings

    g = cfg.generation
    base = dict(max_new_tokens=g.max_new_tokens, temperature=g.temperature, top_p=g.top_p, top_k=g.top_k,
                repetition_penalty=g.repetition_penalty, seed=g.seed, enable_thinking=g.enable_thinking)
    return GenerationSettings(**{**base, **changes})


def generate_timed(bot, conversations: list[Conversation], settings, batch_size: int, progress=None,
                   task=None, memory: _Memory | None = None, shard: EvalShard | None = None) -> tuple[list, list[float], float]:
    """Replies, per-request latency (the wall time of the batch a request was in — what a client of
    a batched server waits), and this process's total generation seconds. Under torchrun (`shard`)
    each rank answers its share of the batches; every rank gets all replies and latencies, in order."""
    total = 0.0

    def answer(chunk: list, _k: int) -> list:
        nonlocal total
        began = time.perf_counter()
        replies = bot.generate(chunk, settings, batch_size=batch_size)
        took = time.perf_counter() - began
        total += took
        if memory:
            memory.sample()
        if progress is not None:
            progress.advance(task, len(chunk))
        return [(reply, took) for reply in replies]

    rows = (shard or EvalShard()).map_batches(conversations, batch_size, answer)
    return [r for r, _ in rows], [t for _, t in rows], total


def _generate_all(bot, shard: EvalShard, conversations: list[Conversation], batch_size: int, settings_of) -> list:
    """Replies to `conversations`, each rank answering its share; `settings_of(k)` gives batch k's settings."""
    return shard.map_batches(conversations, batch_size, lambda chunk, k: bot.generate(chunk, settings_of(k), batch_size=batch_size))


def _stability(bot, cfg: EvalConfig, samples: list[EvalSample], greedy: list[str], detector, shard: EvalShard) -> dict | None:
    st = cfg.stability
    if st.samples < 2:
        return None
    chosen = samples[: st.prompts]
    bs = cfg.generation.batch_size
    convs = [s.conversation for s in chosen for _ in range(st.samples)]
    # Each batch draws from its own seed: its answers do not depend on which batches ran before it
    # in the same process, so any number of ranks samples the same answers.
    sampled = _generate_all(bot, shard, convs, bs,
                            lambda k: _settings(cfg, temperature=st.temperature, top_p=1.0, seed=cfg.generation.seed + 1 + k))
    again = None
    if cfg.generation.temperature == 0:
        # Greedy decoding must be deterministic: ask again and compare with the first pass.
        # Re-ask whole first-pass batches: the same neighbours and left padding, so a difference is
        # non-determinism, not padding numerics.
        same_batches = samples[: -(-len(chosen) // bs) * bs]
        again = _generate_all(bot, shard, [s.conversation for s in same_batches], bs, lambda _k: _settings(cfg))
    if not shard.is_main:
        return None
    results = [answer_stability([r.text for r in sampled[k * st.samples : (k + 1) * st.samples]], detector)
               for k in range(len(chosen))]
    agg = aggregate_stability(results)
    out = {"samples": st.samples, "temperature": st.temperature, "n_prompts": len(chosen), **agg.scores,
           "n_skipped": agg.n_skipped}
    out.pop("identical_rate", None)  # sampled answers are not expected to be identical
    if again is not None:
        out["greedy_identical_rate"] = sum(a.text == greedy[s.index] for a, s in zip(again, chosen)) / len(chosen)
    return out


def _general(bot, cfg: EvalConfig, run: ModelRun, detector, shard: EvalShard) -> dict | None:
    if not cfg.general.enabled:
        return None
    from honed.eval.general import GENERAL_QUESTIONS, score_general

    convs = [Conversation([Message("user", q.question)], source=q.id) for q in GENERAL_QUESTIONS]
    settings = _settings(cfg, max_new_tokens=cfg.general.max_new_tokens)
    replies = _generate_all(bot, shard, convs, cfg.generation.batch_size, lambda _k: settings)
    if not shard.is_main:
        return None
    run.general_rows, summary = score_general([r.text for r in replies], detector)
    return summary


def _judge(cfg: EvalConfig, samples: list[EvalSample], run: ModelRun) -> dict | None:
    if not cfg.judge.enabled:
        return None
    from honed.eval.judge import judge_answers

    items = [(s.prompt_text, a, s.reference) for s, a in zip(samples, run.answers)]
    run.judge_rows, summary = judge_answers(cfg.judge, items)
    return summary


@dataclass
class _Measured:
    """What one model's passes produced, before scoring (stability and general: on rank 0 only)."""

    replies: list
    label_scores: list | None
    loss: tuple | None  # reference_losses' result
    preference: dict | None
    stability: dict | None
    general: dict | None
    per_rank: list[dict]  # generation/load seconds and peak memory of each rank


def evaluate_model(spec: ModelSpec, role: str, cfg: EvalConfig, samples: list[EvalSample], scorer: Scorer | None,
                   progress=None, pairs: list | None = None, shard: EvalShard | None = None, refusal_calibration=None) -> ModelRun:
    """Load one model, measure everything the config asks for, and free it again. Under torchrun
    (`shard`) every rank runs its share of each pass and rank 0 alone scores: the run of another
    rank holds the answers only; the judge and lm-eval then run after the last model (`finish_on_main`).
    `refusal_calibration` (a `RefusalCalibration`) decides this model's refusals as `chat` would."""
    from honed.infer.generate import ChatModel

    shard = shard or EvalShard()
    run = ModelRun(spec, role)
    device = eval_device(cfg)
    memory = _Memory(device)
    load_started = time.perf_counter()
    bot = ChatModel.load(spec.model_path, adapter=spec.adapter, template=cfg.template, device=str(device), dtype=cfg.dtype,
                         refusal_calibration=refusal_calibration)
    load_s = time.perf_counter() - load_started
    g = cfg.generation
    task = progress.add_task(f"{spec.name}: answering", total=shard.share_size(len(samples), g.batch_size)) if progress is not None else None
    replies, run.latencies, gen_s = generate_timed(bot, [s.conversation for s in samples], _settings(cfg), g.batch_size,
                                                  progress, task, memory, shard)
    run.answers = [r.text for r in replies]
    scoring = dict(batch_size=g.batch_size, enable_thinking=g.enable_thinking, shard=shard)
    label_scores = loss = preference = None
    if cfg.labels:
        from honed.eval.likelihood import label_log_likelihoods

        label_scores = label_log_likelihoods(bot, samples, cfg.labels, **scoring)
    if cfg.loss:
        from honed.eval.likelihood import reference_losses

        loss = reference_losses(bot, samples, **scoring)
    if cfg.preference is not None:
        from honed.eval.preference import preference_metrics

        preference = preference_metrics(bot, pairs, **scoring)
    memory.sample()
    detector = scorer.detector if scorer is not None else None
    measured = _Measured(replies, label_scores, loss, preference, _stability(bot, cfg, samples, run.answers, detector, shard),
                         _general(bot, cfg, run, detector, shard),
                         shard.all_ranks({"generation_seconds": gen_s, "load_seconds": load_s, **memory.result()}))
    del bot
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    if progress is not None:
        progress.remove_task(task)
    if shard.is_main:
        _score(run, cfg, samples, scorer, measured, str(device))
        if shard.world_size == 1:
            finish_on_main(cfg, samples, run)  # at once; with several ranks, after the last model (see evaluate)
    return run


def _score(run: ModelRun, cfg: EvalConfig, samples: list[EvalSample], scorer: Scorer, measured: _Measured, device: str) -> None:
    """The metrics of one model from its answers and losses (rank 0 only under torchrun)."""
    refusal_scores = [getattr(r, "refusal_probability", None) for r in measured.replies]  # P(refuse), with a refusal calibration
    scores = score_model(samples, run.answers, scorer, measured.label_scores,
                         refusal_scores if any(p is not None for p in refusal_scores) else None)
    run.per_sample = scores.per_sample
    for i, (row, reply) in enumerate(zip(run.per_sample, measured.replies)):
        row.update(new_tokens=reply.new_tokens, finished=reply.finished)
        if refusal_scores[i] is not None:
            row["refusal_probability"] = round(refusal_scores[i], 6)
        if measured.label_scores:
            row["label_log_likelihoods"] = measured.label_scores[i]
    m = run.metrics
    m["generation"], m["generation_counts"] = scores.generation, scores.generation_counts
    m["domain"], m["classification"] = scores.domain, scores.classification
    add_extra_metrics(cfg, samples, run)  # regression, diversity, language match
    m["loss"] = None
    if measured.loss is not None:
        loss, per_sample_loss, _ = measured.loss
        if loss is not None:
            m["loss"] = {"mean_loss": loss.mean_loss, "perplexity": loss.perplexity, "n_tokens": loss.n_tokens}
        for index, value in per_sample_loss.items():
            run.per_sample[index]["loss"] = value
    m["preference"], m["stability"], m["general"] = measured.preference, measured.stability, measured.general
    m["efficiency"] = _efficiency(cfg, run, measured, device)


def _efficiency(cfg: EvalConfig, run: ModelRun, measured: _Measured, device: str) -> dict:
    """Speed, memory and size. With several ranks: the generation time of the slowest rank (the
    job's wall time), the throughput of all ranks together, the largest peak memory of one rank."""
    ranks = measured.per_rank
    gen_s = max(r["generation_seconds"] for r in ranks)
    n_tokens = sum(r.new_tokens for r in measured.replies)
    return {"latency_s": latency_percentiles(run.latencies), "generated_tokens": n_tokens, "generation_seconds": gen_s,
            "tokens_per_s": tokens_per_second(n_tokens, gen_s) if gen_s > 0 else None,
            "load_seconds": max(r["load_seconds"] for r in ranks), "batch_size": cfg.generation.batch_size, "device": device,
            "processes": len(ranks), "size_on_disk_bytes": size_on_disk(run.spec.weights_dir),
            "size_of": "adapter" if run.spec.adapter else "model",
            "peak_memory_bytes": max(r["peak_memory_bytes"] for r in ranks), "peak_memory_kind": ranks[0]["peak_memory_kind"]}


def finish_on_main(cfg: EvalConfig, samples: list[EvalSample], run: ModelRun) -> None:
    """lm-eval (it loads the model its own way, so only once ours is freed) and the remote judge, on
    rank 0 only; with several ranks after the last model, when the other ranks are done."""
    if cfg.lm_eval.tasks:
        from honed.eval.harness import run_lm_eval

        run.metrics["lm_eval"] = run_lm_eval(run.spec, cfg.lm_eval, device=str(eval_device(cfg)), batch_size=cfg.generation.batch_size)
    run.metrics["judge"] = _judge(cfg, samples, run)


def eval_device(cfg: EvalConfig) -> torch.device:
    """`cfg.device`; under torchrun on a GPU host, this rank's own GPU."""
    from honed.model.load import pick_device

    return local_device(pick_device(cfg.device))


def check_output_dir(cfg: EvalConfig) -> Path:
    """Refuse a non-empty output folder before any model is loaded (unless overwrite)."""
    out = Path(cfg.output_dir)
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"output_dir={out} is a file; choose a folder")
    if out.is_dir() and any(out.iterdir()) and not cfg.overwrite:
        raise OutputExistsError(f"output_dir={out} is not empty; choose another folder or pass --overwrite "
                                "(overwrite: true) to replace it")
    # --overwrite replaces the whole folder: never when it holds what is being evaluated.
    inputs = [cfg.data.path] + [p for m in cfg.models for p in (m.path, m.adapter) if p and p != "base"]
    for item in inputs:
        target = Path(item).expanduser().resolve()
        if target.exists() and (target == out.resolve() or out.resolve() in target.parents):
            raise OutputExistsError(f"output_dir={out} holds {item}, an input of this evaluation; choose another output folder")
    return out


def _roles(specs: list[ModelSpec], cfg: EvalConfig) -> list[str]:
    baseline = cfg.baseline_name()
    roles = []
    for i, spec in enumerate(specs):
        roles.append("evaluated" if i == 0 else "checkpoint" if spec.step is not None and i >= len(cfg.models)
                     else "baseline" if spec.name == baseline else "other")
    return roles


def data_with_model_scope(cfg: EvalConfig):
    """`cfg.data`, with the scope prompt saved beside the evaluated model when the config sets none
    (a tuned model is asked the way it was taught; data.system_prompt="" asks without one)."""
    from honed.model.scope import find_scope_prompt

    if cfg.data.system_prompt is not None or cfg.data.system_prompt_file or not cfg.models:
        return cfg.data
    found = find_scope_prompt(cfg.models[0].adapter, cfg.models[0].path)
    if not found:
        return cfg.data
    log.info("using the scope prompt saved with the model: %s", found[1])
    return cfg.data.model_copy(update={"system_prompt": found[0]})


def apply_gate(gate, samples: list[EvalSample]) -> int:
    """Put a gate (`honed.guard.gate.Gate`, or anything with its `check_many`) in front: each
    question it refuses gets the decision "refuse", counted as refused whatever the model answers
    (as `chat --guard` never asks the model); the others keep theirs, so they are judged from the
    model's answer. Returns how many were refused."""
    decisions = gate.check_many([s.prompt_text for s in samples])
    refused = 0
    for sample, decision in zip(samples, decisions):
        if not decision.in_domain:
            sample.gate_decision = "refuse"
            refused += 1
    log.info("the gate refuses %d of %d questions", refused, len(samples))
    return refused


def evaluate(cfg: EvalConfig, *, show_progress: bool = True, write: bool = True, gate=None, refusal_calibration=None) -> EvalResult:
    """Evaluate every model of `cfg`; with `write`, put report.json/.html and predictions.jsonl
    into `cfg.output_dir` in one atomic step. `gate` (a loaded gate, or a loader such as
    `functools.partial(honed.guard.gate.load_gate, DIR)`, which rank 0 alone calls) stands in front of
    every model: see `apply_gate`. `refusal_calibration` (a file from `honed guard fit-refusal`, or a
    `RefusalCalibration`) decides the evaluated model's refusals (the first model only: baselines
    decode plainly); each sample records its `refusal_probability` and the domain AUROC is P(refuse)'s.

    Started by torchrun (`torchrun --nproc-per-node N -m honed eval ...`), each process answers and
    scores its share of the batches (honed.eval.sharding); rank 0 alone computes the metrics and
    writes the report, which equals a single process's. The other ranks return an empty report."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from honed.eval.report import build_report, write_outputs

    if write:
        check_output_dir(cfg)  # on every rank: all of them stop at once
    if refusal_calibration is not None:
        from honed.infer.refusal_calibration import as_calibration

        refusal_calibration = as_calibration(refusal_calibration)  # before any model loads
    samples = load_samples(data_with_model_scope(cfg), cfg.refusal.decision_field)
    specs = resolve_models(cfg.models)
    if cfg.fitting.checkpoints == "all":
        specs += checkpoint_specs(specs[0])
    pairs = None
    if cfg.preference is not None:  # read before any model loads: a bad record stops the run at once
        from honed.data.dataset import scope_prompt
        from honed.eval.preference import load_eval_pairs

        pairs = load_eval_pairs(cfg.preference.path, system_prompt=scope_prompt(cfg.data), max_pairs=cfg.preference.max_pairs)
    shard = eval_shard(eval_device(cfg))
    # The gate's decisions are read by the scorer alone, which runs on rank 0: given as a loader, only
    # rank 0 calls it, so the other ranks neither load the gate (nor its embedder) nor embed the questions.
    if callable(gate):
        gate = gate() if shard.is_main else None
    gated = apply_gate(gate, samples) if gate is not None and shard.is_main else None
    scorer = None
    if shard.is_main:  # only rank 0 scores (a refusal classifier may be a model of its own)
        synonyms = meteor_synonyms(cfg.meteor_synonyms)
        scorer = Scorer(build_detector(cfg.refusal), cfg.labels, synonyms, cfg.refusal.threshold)
    runs = []
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, transient=True, disable=not (show_progress and shard.is_main)) as progress:
        for spec, role in zip(specs, _roles(specs, cfg)):
            log.info("evaluating %s (%s)%s", spec.name, spec.describe(),
                     f" on {shard.world_size} processes" if shard.world_size > 1 else "")
            runs.append(evaluate_model(spec, role, cfg, samples, scorer, progress, pairs, shard,
                                       refusal_calibration if role == "evaluated" else None))
    if not shard.is_main:
        return EvalResult({}, runs)
    if shard.world_size > 1:  # the other ranks are done: nobody waits in a collective meanwhile
        for run in runs:
            finish_on_main(cfg, samples, run)
    fitting = run_fitting(specs[0].run_dir, cfg.fitting.patience) if specs[0].run_dir else None
    report = build_report(cfg, samples, runs, fitting)
    if gated is not None:
        report["gate"] = {"folder": str(getattr(gate, "folder", "")), "refused": gated, "n": len(samples)}
    if refusal_calibration is not None:
        report["refusal_calibration"] = {"file": refusal_calibration.fitted.get("path"), "threshold": refusal_calibration.threshold,
                                         "openings": len(refusal_calibration.openings), "applied_to": runs[0].spec.name}
    result = EvalResult(report, runs)
    if write:
        result.output_dir = write_outputs(cfg, report, samples, runs)
    return result
