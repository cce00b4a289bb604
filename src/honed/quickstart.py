"""`honed quickstart`: the whole path on built-in data and a tiny local model, on a CPU.

Trains a LoRA adapter on the shipped clinical-laboratory consulting data (English and Chinese,
with a scope system prompt; refusals, near-domain hard negatives and clarifying replies mixed in
by `honed data add-refusals` so the model refuses without over-refusing), validated on a file of
its own (`clinical_lab_val.jsonl`), shows the loss curves,
then asks the tuned model one question from its training data and one out-of-domain question.

>>> result = run_quickstart(output_dir="honed-quickstart")  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import json
import logging
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from honed.config import TrainConfig, config_from_dict

# The probes: a question the data teaches, and one outside the domain that the data teaches to refuse.
# (The tiny model reproduces 155 of its 224 training answers word for word; lab-en-001, the CBC
# question, is not among them since the quickstart trains on the refusal mix.)
IN_DOMAIN_ID = "lab-en-003"
OUT_OF_DOMAIN_QUESTION = "Can you recommend a good recipe for chocolate cake?"


def resource_path(*parts: str) -> Path:
    return Path(str(resources.files("honed").joinpath("resources", *parts)))


def sample_data_path() -> Path:
    """The quickstart's training set: the sample Q&A with refusals, hard negatives and clarifying
    replies mixed in by `honed data add-refusals` (see the sample data's README for the command)."""
    return resource_path("sample_data", "clinical_lab_train_mix.jsonl")


def validation_data_path() -> Path:
    """The quickstart's validation set: training questions reworded (with their answers), reworded
    near-domain hard negatives, and out-of-domain questions found in no other file."""
    return resource_path("sample_data", "clinical_lab_val.jsonl")


def tiny_model_path() -> Path:
    return resource_path("tiny_base")


def quickstart_config(model: str | None, output_dir: str, *, overwrite: bool = False, epochs: float | None = None, device: str = "auto") -> TrainConfig:
    """The quickstart recipe: aggressive settings for the tiny model, a standard LoRA recipe for real ones."""
    tiny = model is None
    raw = {
        "model": {"name_or_path": str(tiny_model_path()) if tiny else model},
        "data": {
            "train": [str(sample_data_path())],
            "system_prompt_file": str(resource_path("sample_data", "system_prompt.txt")),
            # Validation on a file of its own (reworded training questions, new out-of-domain ones) rather
            # than a split: holding out a seeded 10% of this small mix (measured) took the tiny model from
            # 4/30 to 11/30 false refusals. It is measured for the fitting diagnosis and the loss plot only;
            # the final weights are kept (save_best: false), since the tiny recipe memorises on purpose.
            "validation": [str(validation_data_path())],
            "max_seq_length": 512,
        },
        "method": "lora",
        # A tiny model needs a high rank and learning rate to memorise answers in minutes;
        # a real model gets the usual small-data recipe.
        "lora": {"r": 64, "alpha": 64} if tiny else {"r": 16, "alpha": 32},
        "training": {
            "output_dir": output_dir,
            "overwrite": overwrite,
            "epochs": epochs or (12 if tiny else 3),
            "batch_size": 8 if tiny else 4,
            "learning_rate": 5e-3 if tiny else 2e-4,
            "warmup_ratio": 0.05,
            "lr_scheduler": "cosine",
            "save_total_limit": 1,
            "save_best": False,
            "device": device,
            "seed": 42,
        },
    }
    return config_from_dict(raw, "quickstart")


@dataclass
class Probe:
    question: str
    expected: str
    answer: str
    passed: bool


@dataclass
class QuickstartResult:
    output_dir: Path
    losses: list[float]
    plot: Path | None
    probes: list[Probe] = field(default_factory=list)
    val_losses: list[tuple[int, float]] = field(default_factory=list)  # (step, validation loss)


def in_domain_probe() -> tuple[str, str]:
    for line in sample_data_path().read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        if record.get("id") == IN_DOMAIN_ID:
            return record["messages"][0]["content"], record["messages"][1]["content"]
    raise LookupError(f"{IN_DOMAIN_ID} is missing from the sample data")


def ask_probes(output_dir: Path, system_prompt: str, device: str = "auto") -> list[Probe]:
    from honed.data.conversation import Message
    from honed.eval.metrics.refusal import default_detector
    from honed.infer.generate import ChatModel, GenerationSettings

    bot = ChatModel.load(adapter=str(output_dir), device=device)
    settings = GenerationSettings(max_new_tokens=120)
    question, expected = in_domain_probe()
    probes = []
    for q, exp in ((question, expected), (OUT_OF_DOMAIN_QUESTION, "a refusal")):
        answer = bot.reply([Message("system", system_prompt), Message("user", q)], settings).text
        if exp == "a refusal":
            passed = default_detector().is_refusal(answer)  # the detector `honed eval` counts refusals with
        else:
            passed = answer.strip() == exp.strip()
        probes.append(Probe(q, exp, answer, passed))
    return probes


@contextlib.contextmanager
def _silenced(logger_name: str, level: int):
    """Drop `logger_name`'s records up to and including `level` for the duration."""
    logger = logging.getLogger(logger_name)
    before = logger.level
    logger.setLevel(level + 1)
    try:
        yield
    finally:
        logger.setLevel(before)


def run_quickstart(model: str | None = None, output_dir: str = "honed-quickstart", *, overwrite: bool = False, epochs: float | None = None, device: str = "auto", show_progress: bool = True) -> QuickstartResult:
    """Train, plot, and probe; returns what happened and where everything is."""
    from honed.train.sft import train

    cfg = quickstart_config(model, output_dir, overwrite=overwrite, epochs=epochs, device=device)
    # The tiny model's recipe (lr 5e-3, 12 epochs) strays far from the data-size suggestion on purpose:
    # a 4 M-parameter model must learn the answers in minutes. Warning a first-time user about it would
    # only mislead; a real model gets the usual recipe, and the warnings if they apply.
    with _silenced("honed.train.defaults", logging.WARNING) if model is None else contextlib.nullcontext():
        result = train(cfg, show_progress=show_progress)
    prompt = resource_path("sample_data", "system_prompt.txt").read_text(encoding="utf-8").strip()
    plot = result.output_dir / "loss_curve.png"
    return QuickstartResult(result.output_dir, result.losses, plot if plot.exists() else None, ask_probes(result.output_dir, prompt, device),
                            result.val_losses)
