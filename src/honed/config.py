"""Typed run configuration: the one source of truth for keys, defaults and their checks.

A config file is the record of a run. It is YAML with the sections below; any key can be
overridden on the command line as `section.key=value` (values parsed as YAML).

>>> cfg = TrainConfig.model_validate({"model": {"name_or_path": "m"}, "data": {"train": ["a.jsonl"]}})
>>> cfg.method, cfg.lora.r, cfg.data.train[0].path
('lora', 16, 'a.jsonl')
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, PrivateAttr, ValidationError, field_validator, model_validator

from honed.errors import ConfigError
from honed.utils.strict import StrictModel as _Strict  # unknown keys are errors (one definition for every config)


def _number_or_auto(value, *, low: float, high: float | None = None, low_inclusive: bool = False):
    """Range check for keys that also take `auto` (picked from the data size by honed.train.defaults)."""
    if value == "auto":
        return value
    too_low = value < low if low_inclusive else value <= low
    if too_low or (high is not None and value >= high):
        bound = f"{'>=' if low_inclusive else '>'} {low:g}" + (f" and < {high:g}" if high is not None else "")
        raise ValueError(f"must be {bound}, or auto (picked from the data size)")
    return value


class ModelConfig(_Strict):
    name_or_path: str = Field(description="local model directory or hub id")
    revision: str | None = None
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    trust_remote_code: bool = False
    allow_pickle: bool = Field(False, description="allow loading .bin/.pt pickle weights (unsafe)")
    attn_implementation: str | None = Field(None, description="sdpa, eager, flash_attention_2; None = transformers' default")
    template: str = Field("auto", description="chat template: auto (tokenizer's own), or a built-in name")
    enable_thinking: bool | None = Field(None, description="Qwen3: render with thinking on/off")


class DataSource(_Strict):
    path: str
    format: Literal["auto", "alpaca", "sharegpt", "openai"] = "auto"
    weight: float = Field(1.0, gt=0, description="sampling weight when mixing several files")
    system_prompt: str | None = Field(None, description="overrides data.system_prompt for this file")


# ---- data.sampling: the training strategies run by honed.data.strategies ----------------------


class CurriculumConfig(_Strict):
    """Easy → hard: samples sorted by difficulty into `buckets` stages; order shuffled inside a stage."""

    measure: str = Field("length", description="length (trained tokens), loss (a scoring pass of the base model), or meta:KEY")
    buckets: int = Field(3, gt=0, description="difficulty stages; each epoch runs stage 1, then 2, …")
    epochs: int | None = Field(None, gt=0, description="epochs that follow the curriculum; later ones are shuffled (None: all)")
    scorer_model: str | None = Field(None, description="model that scores difficulty for measure=loss (default: the run's base)")

    @field_validator("measure")
    @classmethod
    def _known_measure(cls, v: str) -> str:
        if v not in ("length", "loss") and not (v.startswith("meta:") and len(v) > 5):
            raise ValueError(f"{v!r}: use length, loss or meta:KEY (e.g. meta:difficulty)")
        return v


class BalanceConfig(_Strict):
    """Over-/under-sample by a meta key so each value gets its share of every epoch."""

    by: str = Field("label", description="meta key to balance on (label, category, …)")
    weights: dict[str, float] | Literal["uniform"] = Field("uniform", description="value → share; 0 drops the value")
    size: int | None = Field(None, gt=0, description="samples per epoch (None: as many as the data has)")

    @field_validator("weights")
    @classmethod
    def _non_negative(cls, v):
        if isinstance(v, dict):
            if not v or any(w < 0 for w in v.values()) or not any(w > 0 for w in v.values()):
                raise ValueError("weights need at least one value > 0 and none < 0")
        return v


class HardMiningConfig(_Strict):
    """After each epoch, score every sample; the highest-loss ones come back more often next epoch."""

    top_fraction: float = Field(0.2, gt=0, le=1, description="share of samples (by origin) counted as hard")
    factor: int = Field(2, ge=2, description="times a hard sample appears in the next epoch")
    keep_size: bool = Field(True, description="the lowest-loss samples sit out to make room (the step plan stays as planned)")
    start_epoch: int = Field(1, ge=1, description="first epoch that uses the losses of the one before")


class SamplingConfig(_Strict):
    curriculum: CurriculumConfig | None = None
    balance: BalanceConfig | None = None
    hard_mining: HardMiningConfig | None = None


class DataConfig(_Strict):
    train: list[DataSource]
    validation: list[DataSource] = Field(default_factory=list)
    val_ratio: float | Literal["auto"] = Field(
        0.0, description="carve a validation split off train when none is given; auto: from the data size (honed.train.defaults)")
    system_prompt: str | None = Field(None, description="scope prompt injected into every sample")
    system_prompt_file: str | None = None
    train_on: Literal["assistant", "all", "last_assistant"] = "assistant"
    max_seq_length: int = Field(1024, gt=8)
    packing: bool = True
    on_bad_record: Literal["error", "skip"] = "error"
    augment: str | dict | list | None = Field(None, description="augmentation recipe: a YAML path or the recipe itself")
    augment_mode: Literal["on_the_fly", "materialize"] = Field("on_the_fly", description="redraw each epoch, or draw once")
    sampling: SamplingConfig | None = Field(None, description="curriculum, balance, hard_mining (honed.data.strategies)")
    # The files as `honed train` read them for its data-size defaults, handed on to the data pipeline
    # so nothing is read twice (honed.data.dataset.keep_read); never part of the config's values.
    _source_read: Any = PrivateAttr(default=None)

    @field_validator("train", "validation", mode="before")
    @classmethod
    def _paths_as_sources(cls, value: Any) -> Any:
        # `train: data.jsonl` and `train: [a.jsonl, {path: b.jsonl, weight: 2}]` are both accepted.
        if isinstance(value, (str, dict)):
            value = [value]
        return [{"path": v} if isinstance(v, str) else v for v in value]

    @field_validator("val_ratio")
    @classmethod
    def _val_ratio_range(cls, v):
        return _number_or_auto(v, low=0.0, high=1.0, low_inclusive=True)

    @model_validator(mode="after")
    def _one_system_prompt(self) -> "DataConfig":
        if self.system_prompt and self.system_prompt_file:
            raise ValueError("set data.system_prompt or data.system_prompt_file, not both")
        return self


class LoraSettings(_Strict):
    r: int | Literal["auto"] = Field(16, description="LoRA rank; auto: from the data size")
    alpha: float = Field(32, gt=0)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: str | list[str] = "all-linear"
    use_rslora: bool = False
    modules_to_save: list[str] | None = None
    init_from: str | None = Field(None, description="continue training this saved adapter (peft folder) instead of a fresh one")

    @field_validator("r")
    @classmethod
    def _positive_rank(cls, v):
        return _number_or_auto(v, low=0)


class QuantizationSettings(_Strict):
    quant_type: Literal["nf4", "fp4"] = "nf4"
    double_quant: bool = True
    compute_dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"


class TrainingConfig(_Strict):
    output_dir: str = "runs/honed"
    overwrite: bool = False
    seed: int = 42
    epochs: int | float | Literal["auto"] = Field(3, description="passes over the data; auto: from the data size")
    max_steps: int | None = Field(None, gt=0, description="optimizer steps; overrides epochs")
    batch_size: int = Field(4, gt=0, description="rows per micro-batch: samples, or with packing rows of up to max_seq_length tokens")
    gradient_accumulation_steps: int = Field(1, gt=0)
    learning_rate: float | Literal["auto"] = Field(2e-4, description="peak rate; auto: from the data size and method")
    lr_scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_ratio: float = Field(0.03, ge=0, lt=1)
    warmup_steps: int | None = Field(None, ge=0)
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float | None = Field(1.0, gt=0)
    optimizer: Literal["adamw", "adamw_8bit"] = "adamw"
    adam_betas: tuple[float, float] = (0.9, 0.999)
    precision: Literal["auto", "bf16", "fp16", "fp32", "fp8"] = Field(
        "auto",
        description="auto: bf16 on a GPU that has it, else fp32. fp8: bf16 compute, with the frozen base weights of the LoRA "
        "projections stored and multiplied in float8 (half their memory; method lora, fused engine, CUDA compute capability >= 8.9)",
    )
    gradient_checkpointing: bool = False
    engine: Literal["auto", "plain"] = Field("auto", description="auto: honed's fused CUDA path where it covers the model; plain: transformers as it is")
    memory: Literal["auto", "none", "checkpoint", "offload"] = Field(
        "auto", description="activation memory policy of the fused path: auto recomputes only what does not fit; offload also moves checkpointed layer inputs to CPU"
    )
    memory_budget_gib: float | None = Field(None, gt=0, description="GPU memory the fused path may plan activations into (default: what is free)")
    host_memory_gib: float | None = Field(
        None, gt=0, description="host memory available to the run, of which the fused path's offloading pins at most half (default: "
        "what the OS and the container's memory limit say is available; set it where that reading is wrong, e.g. a VM whose memory "
        "grows as it is used)",
    )
    host_mlp_layers: Annotated[int, Field(ge=0)] | Literal["auto"] = Field(
        0, description="fused path on CUDA: the first N layers that keep their activations (none recomputed) keep their MLP's "
        "gate/up activations in pinned host memory instead, copied there behind the forward and brought back ahead of their backward; "
        "the GPU memory that frees (2 × intermediate size values a token per layer) lets the memory plan keep more layers whole. "
        "It costs host-link bandwidth: on a link slower than the forward, the forward waits for the copies. auto: the count "
        "with the shortest step, estimated from this GPU's measured copy and forward times",
    )
    embeddings_on_host: bool | None = Field(
        None, description="fused path on CUDA: keep the frozen input embedding table in pinned host memory, the GPU reading the batch's "
        "rows from there (about 1 GiB less for a 7-8B model; not where the table trains or is tied to lm_head). "
        "None (default): only when the memory plan recomputes layers; true: always where it can; false: never",
    )
    cuda_graphs: bool = Field(
        False, description="fused path on CUDA: replay the decoder stack's forward and backward as CUDA graphs, which takes the host's "
        "kernel-launch time out of the step; a batch shape is captured the second time it is seen, other shapes run eagerly",
    )
    logging_steps: int = Field(1, gt=0)
    eval_steps: int | None = Field(None, gt=0, description="evaluate on validation every N steps (None: once per epoch)")
    save_steps: int | None = Field(None, gt=0, description="checkpoint every N steps (None: once per epoch)")
    save_total_limit: int | None = Field(2, gt=0)
    early_stopping_patience: int | None = Field(None, gt=0, description="stop after N evaluations without improvement")
    save_best: bool = Field(
        True, description="keep the weights of the lowest validation loss in OUTPUT/best (what a run folder then resolves to); "
        "false: validation is only measured and logged, and the run folder resolves to its final weights")
    resume: bool | str = Field(False, description="true: latest checkpoint in output_dir; or a checkpoint path")
    tensorboard: bool = True
    device: str = Field("auto", description="auto, cpu, cuda, cuda:1")

    @field_validator("learning_rate", "epochs")
    @classmethod
    def _positive_or_auto(cls, v):
        return _number_or_auto(v, low=0)


class PreferenceConfig(_Strict):
    """The `preference:` section (objectives dpo, orpo, simpo, kto)."""

    beta: float = Field(0.1, gt=0, description="DPO/KTO: strength of the pull towards the reference (β); ORPO: weight λ of the "
                                               "odds-ratio term; SimPO: reward scale β (the SimPO paper uses 2.0-2.5)")
    loss_type: Literal["sigmoid", "ipo", "robust"] = Field("sigmoid", description="DPO variant: sigmoid (DPO), ipo, robust")
    label_smoothing: float = Field(0.0, ge=0.0, lt=0.5, description="DPO sigmoid/robust and SimPO: assumed share of flipped labels (ε)")
    rpo_alpha: float | None = Field(None, ge=0, description="add α × the chosen answer's mean token NLL to each pair's loss (RPO)")
    reference: Literal["auto", "adapter_off", "cache"] = Field(
        "auto", description="DPO/KTO reference model: adapter_off = the base with the LoRA adapter switched off (no second copy); "
        "cache = log-probs of the starting model computed once before training and kept in OUTPUT/reference_logps.safetensors; "
        "auto = adapter_off for a fresh LoRA/QLoRA adapter, cache for method full or lora.init_from")
    simpo_gamma: float = Field(0.5, ge=0, description="SimPO target reward margin γ")
    kto_desirable_weight: float = Field(1.0, gt=0, description="KTO weight of desirable samples")
    kto_undesirable_weight: float = Field(1.0, gt=0, description="KTO weight of undesirable samples")

    @model_validator(mode="after")
    def _smoothing_fits_the_loss(self) -> "PreferenceConfig":
        if self.loss_type == "ipo" and self.label_smoothing:
            raise ValueError("preference.label_smoothing does not apply to loss_type ipo; set it to 0 or use sigmoid/robust")
        return self

    def resolved_reference(self, method: str, init_from: str | None) -> str:
        """adapter_off or cache, for a run's `method` and `lora.init_from` (refusing what cannot work)."""
        if self.reference == "auto":
            return "cache" if method == "full" or init_from else "adapter_off"
        if self.reference == "adapter_off" and method == "full":
            raise ConfigError("preference.reference: adapter_off needs a LoRA/QLoRA adapter to switch off; method full trains the "
                              "weights themselves. Use preference.reference: cache (or auto)")
        return self.reference


class DistributedConfig(_Strict):
    """How a run launched by torchrun (or `honed train --nproc-per-node N`) splits its work across
    processes. Read only when torchrun's environment (WORLD_SIZE > 1) is present; one process
    ignores it."""

    strategy: Literal["auto", "ddp", "fsdp"] = Field(
        "auto", description="ddp: each rank holds the whole model, gradients all-reduced (LoRA, QLoRA, small full "
        "fine-tuning); fsdp: FSDP2 shards weights, gradients and optimizer state (full fine-tuning and LoRA of models "
        "that do not fit one card); auto: picks by model size and free memory")
    backend: Literal["auto", "nccl", "gloo"] = Field("auto", description="process-group backend; auto: nccl on CUDA, gloo on CPU")
    timeout_s: int = Field(600, gt=0, description="seconds a collective waits for the other ranks before the job stops with "
                           "the rank and cause named (instead of hanging)")
    fsdp_mixed_precision: bool = Field(True, description="fsdp: compute (and reduce gradients) in the training precision; "
                                       "master weights stay fp32 for full fine-tuning")
    fsdp_cpu_offload: bool = Field(False, description="fsdp: keep sharded parameters and optimizer state in host memory")
    fsdp_reshard_after_forward: bool = Field(True, description="fsdp: free gathered weights after forward (less memory, "
                                             "one more all-gather in backward)")
    fsdp_load: Literal["rank0", "every_rank"] = Field(
        "rank0", description="fsdp: rank0 reads the weights from disk and sends each rank its shards (one copy in host "
        "memory); every_rank: each rank loads the whole model before sharding (N copies; for models whose architecture "
        "cannot be built without weights)")
    ddp_bucket_mb: int = Field(25, gt=0, description="ddp: gradient all-reduce bucket size (MB); buckets overlap with backward")


class StageConfig(_Strict):
    """One stage of a staged run: its own data/training keys over the top-level ones (honed.train.stages)."""

    name: str
    objective: Literal["sft", "dpo", "orpo", "kto", "simpo"] | None = Field(
        None, description="this stage's objective (default: the top-level `objective`), e.g. sft then dpo on pairs")
    data: dict = Field(default_factory=dict, description="data keys of this stage (merged over the top-level data)")
    training: dict = Field(default_factory=dict, description="training keys of this stage (output_dir default: OUTPUT/stage-N-NAME)")
    preference: dict = Field(default_factory=dict, description="preference keys of this stage (merged over the top-level preference)")


class TrainConfig(_Strict):
    model: ModelConfig
    data: DataConfig
    method: Literal["lora", "qlora", "full"] = "lora"
    objective: Literal["sft", "dpo", "orpo", "kto", "simpo"] = Field(
        "sft", description="what training optimises: sft (next-token loss on the answers) or a preference objective "
        "(dpo, orpo, kto, simpo; available once installed: honed.train.objectives). `method` says which weights train")
    preference: PreferenceConfig = Field(default_factory=PreferenceConfig, description="settings of objectives dpo, orpo, kto, simpo")
    lora: LoraSettings = Field(default_factory=LoraSettings)
    quantization: QuantizationSettings = Field(default_factory=QuantizationSettings)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    distributed: DistributedConfig = Field(default_factory=DistributedConfig, description="multi-GPU / multi-host runs (torchrun)")
    stages: list[StageConfig] | None = Field(None, description="task decomposition: stages run in order, each from the last one's weights")

    @field_validator("training")
    @classmethod
    def _fp8_needs_fused_lora(cls, training: TrainingConfig, info) -> TrainingConfig:
        # Checked here, before any model loads: a run that cannot do fp8 must not quietly train in bf16.
        method = info.data.get("method")  # absent when `method` itself was invalid (reported on its own)
        if training.precision != "fp8" or method is None:
            return training
        if method == "qlora":
            raise ValueError("training.precision=fp8 stores bf16 LoRA base weights in fp8; method qlora's base is already 4-bit (NF4). "
                             "Use method: lora with fp8, or training.precision: bf16 with qlora")
        if method == "full":
            raise ValueError("training.precision=fp8 stores the frozen base weights under LoRA in fp8; method full trains every weight. "
                             "Use method: lora with fp8, or training.precision: bf16 with full")
        if training.engine == "plain":
            raise ValueError("training.precision=fp8 runs only on honed's fused engine; training.engine: plain cannot do it. "
                             "Set training.engine: auto, or training.precision: bf16")
        return training

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


def parse_overrides(pairs: list[str]) -> dict:
    """Turn `["training.learning_rate=1e-4", "method=full"]` into a nested dict.

    >>> parse_overrides(["training.epochs=2", "data.packing=false"])
    {'training': {'epochs': 2}, 'data': {'packing': False}}
    """
    out: dict = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {pair!r} is not key=value (e.g. training.learning_rate=1e-4)")
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        value = yaml.safe_load(raw) if raw else ""
        # YAML reads 1e-4 as a string (no dot); numbers are what a user means here.
        if isinstance(value, str):
            try:
                value = float(value) if any(c in value for c in ".eE") else value
            except ValueError:
                pass
        node[parts[-1]] = value
    return out


def deep_merge(base: dict, extra: dict) -> dict:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def describe_validation_error(err: ValidationError, where: str) -> str:
    """pydantic's errors as one message naming each bad key (shared by every config type)."""
    lines = [f"{where}: invalid config"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"])
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; see configs/ for examples)"
        lines.append(f"  {key}: {msg}")
    return "\n".join(lines)


def config_from_dict(raw: dict, where: str = "<config>") -> TrainConfig:
    """Validate a raw dict, turning pydantic's errors into one message that names each bad key."""
    try:
        return TrainConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(describe_validation_error(err, where)) from None


def read_yaml_config(path: str | Path, overrides: list[str] | None = None, *, kind: str = "config") -> dict:
    """A YAML mapping from `path` with `key=value` overrides merged in; errors name file:line."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{kind} file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError(f"{where}: not valid YAML ({getattr(err, 'problem', err)})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return deep_merge(raw, parse_overrides(overrides or []))


def load_config(path: str | Path, overrides: list[str] | None = None) -> TrainConfig:
    """Read a YAML config, apply `key=value` overrides, validate, and resolve relative paths.

    Data paths in the file are relative to the file's folder, so a config can live beside its data.
    """
    cfg = config_from_dict(read_yaml_config(path, overrides), str(path))
    return resolve_paths(cfg, Path(path).parent)


def resolve_paths(cfg: TrainConfig, base: Path) -> TrainConfig:
    def fix(p: str) -> str:
        q = Path(p).expanduser()
        return str(q if q.is_absolute() or not (base / q).exists() else base / q)

    for src in [*cfg.data.train, *cfg.data.validation]:
        src.path = fix(src.path)
    if cfg.data.system_prompt_file:
        cfg.data.system_prompt_file = fix(cfg.data.system_prompt_file)
    if isinstance(cfg.data.augment, str):
        cfg.data.augment = fix(cfg.data.augment)
    for stage in cfg.stages or []:
        # Stage data stays raw until a stage config is built, so fix its file paths here.
        for key in ("train", "validation"):
            files = stage.data.get(key)
            if isinstance(files, (str, dict)):
                files = [files]
            if files:
                stage.data[key] = [fix(f) if isinstance(f, str) else {**f, "path": fix(f["path"])} if "path" in f else f for f in files]
    if Path(cfg.model.name_or_path).expanduser().exists() or (base / cfg.model.name_or_path).exists():
        cfg.model.name_or_path = fix(cfg.model.name_or_path)
    return cfg
