"""Typed evaluation config: which models, which data, which metrics, where the report goes.

The first model is the one evaluated; the others are baselines it is compared with. A model is a
model folder or hub id, a LoRA adapter folder, a `honed train` run folder, or `base` (the base
model of the first model's adapter).

>>> cfg = EvalConfig.model_validate({"models": [{"path": "runs/lora"}, {"path": "base"}],
...                                  "data": {"path": "eval.jsonl"}})
>>> cfg.baseline_name(), cfg.generation.max_new_tokens
('base', 256)
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, model_validator

from honed.config import describe_validation_error, read_yaml_config
from honed.errors import ConfigError
from honed.utils.strict import StrictModel


class ModelEntry(StrictModel):
    path: str = Field(description="model folder/hub id, adapter folder, run folder, or 'base'")
    adapter: str | None = Field(None, description="LoRA adapter folder on top of `path`")
    name: str | None = Field(None, description="name shown in the report (default: from the path)")


class EvalData(StrictModel):
    path: str
    system_prompt: str | None = Field(None, description="scope prompt put first in every conversation")
    system_prompt_file: str | None = None
    split_field: str = Field("kind", description="record field holding in_domain/out_of_domain/near_domain")
    label_field: str = Field("label", description="record field holding the gold label (classification)")
    id_field: str = "id"
    max_samples: int | None = Field(None, gt=0, description="evaluate only the first N records")

    @model_validator(mode="after")
    def _one_prompt(self) -> "EvalData":
        if self.system_prompt and self.system_prompt_file:
            raise ValueError("set data.system_prompt or data.system_prompt_file, not both")
        return self


class GenerationConfig(StrictModel):
    max_new_tokens: int = Field(256, gt=0)
    batch_size: int = Field(8, gt=0)
    temperature: float = Field(0.0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=0)
    repetition_penalty: float = Field(1.0, gt=0)
    seed: int = 0
    enable_thinking: bool | None = None


class RefusalConfig(StrictModel):
    phrases: list[str] | None = Field(None, description="refusal substrings (default: honed's English+Chinese list)")
    patterns: list[str] = Field(default_factory=list, description="regular expressions that mark a refusal")
    classifier: str | None = Field(None, description="'module:function' taking an answer, returning bool or a score")
    threshold: float = 0.5
    decision_field: str | None = Field(None, description="record field with a gate's decision (bool, 'refuse'/'answer' or a score)")

    @model_validator(mode="after")
    def _one_detector(self) -> "RefusalConfig":
        if self.classifier and (self.phrases is not None or self.patterns):
            raise ValueError("refusal: give either classifier or phrases/patterns, not both")
        return self


class StabilityConfig(StrictModel):
    samples: int = Field(0, ge=0, description="answers sampled per prompt; 0 turns the check off")
    temperature: float = Field(0.8, gt=0)
    prompts: int = Field(10, gt=0, description="how many prompts (the first N) are re-asked")


class FittingConfig(StrictModel):
    patience: int = Field(3, gt=0, description="flag over-fitting after validation loss rises this many evaluations in a row")
    checkpoints: Literal["none", "all"] = Field("none", description="all: evaluate every checkpoint of the run too")


class JudgeConfig(StrictModel):
    enabled: bool = False
    base_url: str = Field("http://127.0.0.1:8000/v1", description="OpenAI-compatible endpoint")
    model: str = "judge"
    api_key_env: str | None = Field("OPENAI_API_KEY", description="environment variable holding the key (if any)")
    max_samples: int = Field(50, gt=0)
    timeout_s: float = Field(60.0, gt=0)


class GeneralConfig(StrictModel):
    enabled: bool = False
    max_new_tokens: int = Field(48, gt=0)


class LmEvalConfig(StrictModel):
    tasks: list[str] = Field(default_factory=list, description="lm-evaluation-harness task names (data must be local)")
    limit: int | None = Field(None, gt=0)
    num_fewshot: int | None = Field(None, ge=0)


class PreferenceEvalData(StrictModel):
    path: str = Field(description="preference pairs (prompt/chosen/rejected, any layout `honed train` reads)")
    max_pairs: int | None = Field(None, gt=0, description="score only the first N pairs")


class RegressionConfig(StrictModel):
    enabled: bool | None = Field(None, description="numeric answers: MSE/MAE/R²; null = on when most references are numbers")
    auto_share: float = Field(0.8, gt=0, le=1, description="share of numeric references that turns regression on (auto)")


class ComparisonConfig(StrictModel):
    enabled: bool = Field(True, description="paired A/B comparison of each model with the baseline")
    n_resamples: int = Field(2000, ge=100, description="paired bootstrap resamples")
    confidence: float = Field(0.95, gt=0, lt=1)
    alpha: float = Field(0.05, gt=0, lt=1, description="p-value below which a difference is called significant")
    seed: int = 0


class EvalConfig(StrictModel):
    models: list[ModelEntry] = Field(min_length=1)
    baseline: str | None = Field(None, description="name of the model deltas are taken against (default: the second)")
    data: EvalData
    labels: list[str] | None = Field(None, min_length=2, description="label set: turns on classification metrics")
    output_dir: str = "eval-report"
    overwrite: bool = False
    device: str = "auto"
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    template: str = "auto"
    loss: bool = Field(True, description="validation loss/perplexity on the references")
    meteor_synonyms: list[list[str]] = Field(default_factory=list, description="extra METEOR synonym groups")
    generation: GenerationConfig = Field(default_factory=GenerationConfig)
    refusal: RefusalConfig = Field(default_factory=RefusalConfig)
    stability: StabilityConfig = Field(default_factory=StabilityConfig)
    fitting: FittingConfig = Field(default_factory=FittingConfig)
    judge: JudgeConfig = Field(default_factory=JudgeConfig)
    general: GeneralConfig = Field(default_factory=GeneralConfig)
    lm_eval: LmEvalConfig = Field(default_factory=LmEvalConfig)
    preference: PreferenceEvalData | None = Field(None, description="preference accuracy and margin on these pairs (honed.eval.preference)")
    regression: RegressionConfig = Field(default_factory=RegressionConfig)
    comparison: ComparisonConfig = Field(default_factory=ComparisonConfig)
    diversity: bool = Field(True, description="distinct-1/2 and self-BLEU of the in-domain answers")
    language_match: bool = Field(False, description="share of answers in their reference's language (lingua)")

    def baseline_name(self) -> str | None:
        """The baseline's display name: `baseline`, else the second model's name."""
        if self.baseline:
            return self.baseline
        return model_names(self.models)[1] if len(self.models) > 1 else None

    @model_validator(mode="after")
    def _baseline_exists(self) -> "EvalConfig":
        names = model_names(self.models)
        if len(set(names)) != len(names):
            raise ValueError(f"models: two models share a name ({names}); give each a distinct `name`")
        if self.baseline and self.baseline not in names:
            raise ValueError(f"baseline {self.baseline!r} is not one of the models' names {names}")
        return self


def model_names(models: list[ModelEntry]) -> list[str]:
    """Display names: `name`, else the folder name (adapter first), `base` for the base; folders
    that share a name get their parent folder too.

    >>> model_names([ModelEntry(path="runs/lora"), ModelEntry(path="base")])
    ['lora', 'base']
    >>> model_names([ModelEntry(path="a/final"), ModelEntry(path="b/final")])
    ['a/final', 'b/final']
    """
    def short(entry: ModelEntry, parts: int) -> str:
        source = (entry.adapter or entry.path).rstrip("/")
        return entry.name or "/".join(Path(source).parts[-parts:]) or source

    names = [short(e, 1) for e in models]
    return [short(e, 2) if names.count(n) > 1 else n for e, n in zip(models, names)]


def eval_config_from_dict(raw: dict, where: str = "<eval config>") -> EvalConfig:
    """Validate a raw dict; errors name each bad key (`data.path: Field required`)."""
    try:
        return EvalConfig.model_validate(raw)
    except ValidationError as err:
        text = describe_validation_error(err, where).replace("invalid config", "invalid eval config")
        raise ConfigError(text.replace("\n  : Value error, ", "\n  ")) from None


def load_eval_config(path: str | Path, overrides: list[str] | None = None) -> EvalConfig:
    """Read an eval YAML, apply `key=value` overrides, validate; relative paths are resolved
    against the file's folder so a config can live beside its data.

    >>> cfg = load_eval_config("configs/eval.yaml", ["generation.batch_size=16"])  # doctest: +SKIP
    """
    path = Path(path)
    raw = read_yaml_config(path, overrides, kind="eval config")
    cfg = eval_config_from_dict(raw, str(path))
    return _resolve(cfg, path.parent)


def _resolve(cfg: EvalConfig, base: Path) -> EvalConfig:
    def fix(p: str | None) -> str | None:
        if p is None or p == "base":
            return p
        q = Path(p).expanduser()
        return str(base / q) if not q.is_absolute() and (base / q).exists() else p

    cfg.data.path = fix(cfg.data.path)
    cfg.data.system_prompt_file = fix(cfg.data.system_prompt_file)
    if cfg.preference is not None:
        cfg.preference.path = fix(cfg.preference.path)
    for entry in cfg.models:
        entry.path, entry.adapter = fix(entry.path), fix(entry.adapter)
    return cfg
