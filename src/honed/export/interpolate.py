"""Interpolate a tuned model with its base: W = W_base + alpha * (W_tuned - W_base).

alpha = 1 is the tuned model (a LoRA adapter merged into the base), alpha = 0 the base; values
in between trade the fine-tune's domain skills against the base's general ability, and values
above 1 extrapolate. Every floating-point tensor is interpolated (in fp32, then stored in the
checkpoint's own dtype); integer buffers are taken from the tuned model.

>>> interpolate("models/base", "runs/lora", 0.5, "merged-0.5")   # doctest: +SKIP
PosixPath('merged-0.5')
>>> pair = Interpolation("models/base", "runs/lora")              # doctest: +SKIP
>>> [pair.save(a, f"sweep/alpha-{a:g}") for a in (0.0, 0.5, 1.0)] # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from honed.errors import ModelError, OutputExistsError
from honed.model.reference import adapter_base_path, is_adapter_dir

log = logging.getLogger(__name__)


def _hf_config(path: str, trust_remote_code: bool):
    from transformers import AutoConfig

    from honed.model.load import check_model_source

    check_model_source(path)
    try:
        return AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise ModelError(f"cannot read the model config of {path!r}: {err}") from None


def _stored_dtype(hf_config) -> torch.dtype:
    # The dtype the checkpoint was saved in: the interpolated model is written back in it.
    value = getattr(hf_config, "dtype", None) or getattr(hf_config, "torch_dtype", None)
    if isinstance(value, torch.dtype):
        return value
    return getattr(torch, str(value), torch.float32) if value else torch.float32


def _load(path: str, trust_remote_code: bool):
    from honed.config import ModelConfig
    from honed.model.load import load_model

    # fp32 on the CPU: exact arithmetic for the interpolation, and no GPU memory needed.
    cfg = ModelConfig(name_or_path=path, dtype="float32", trust_remote_code=trust_remote_code)
    model, _ = load_model(cfg, device=torch.device("cpu"), for_training=False)
    return model


def _snapshot(model) -> dict[str, torch.Tensor]:
    return {name: t.detach().clone() for name, t in model.state_dict().items()}


def check_same_architecture(base_cfg, tuned_cfg, base: str, tuned: str) -> None:
    """Refuse two checkpoints of different families or layer layouts (the message names both)."""
    for key in ("model_type", "architectures", "num_hidden_layers", "hidden_size", "vocab_size"):
        a, b = getattr(base_cfg, key, None), getattr(tuned_cfg, key, None)
        if a != b:
            raise ModelError(f"cannot interpolate {tuned} with {base}: {key} is {b!r} in the tuned model and {a!r} in "
                             "the base; give the base model the tuned one was trained from")


def check_same_tensors(base: dict[str, torch.Tensor], tuned: dict[str, torch.Tensor], base_name: str, tuned_name: str) -> None:
    """Same tensor names and shapes in both, or a ModelError naming the first difference."""
    missing = sorted(set(base) ^ set(tuned))
    if missing:
        side = "base" if missing[0] in tuned else "tuned model"
        raise ModelError(f"cannot interpolate {tuned_name} with {base_name}: tensor {missing[0]} is missing from the {side} "
                         f"({len(missing)} names differ); the two must be the same architecture")
    for name, t in tuned.items():
        if t.shape != base[name].shape:
            raise ModelError(f"cannot interpolate {tuned_name} with {base_name}: tensor {name} has shape "
                             f"{tuple(t.shape)} in the tuned model and {tuple(base[name].shape)} in the base "
                             "(a resized vocabulary or another model size); give the matching base")


class Interpolation:
    """A base and a tuned model held once, so any number of alphas can be written.

    `tuned` is a full model folder or a LoRA adapter folder; an adapter is merged into `base`
    first (peft's merge_and_unload), so alpha = 1 is exactly the plain merge.
    """

    def __init__(self, base: str | Path, tuned: str | Path, *, trust_remote_code: bool = False):
        self.base, self.tuned = str(base), str(tuned)
        self.kind = "lora" if is_adapter_dir(tuned) else "full"
        base_cfg = _hf_config(self.base, trust_remote_code)
        self.dtype = _stored_dtype(base_cfg)
        model = _load(self.base, trust_remote_code)
        self.base_weights = _snapshot(model)
        if self.kind == "lora":
            model = self._merge_adapter(model)
        else:
            tuned_cfg = _hf_config(self.tuned, trust_remote_code)
            check_same_architecture(base_cfg, tuned_cfg, self.base, self.tuned)
            self.dtype = _stored_dtype(tuned_cfg)
            del model
            model = _load(self.tuned, trust_remote_code)
        self.model = model  # its parameters are overwritten with each alpha's weights
        self.tuned_weights = _snapshot(model)
        check_same_tensors(self.base_weights, self.tuned_weights, self.base, self.tuned)

    def _merge_adapter(self, model):
        from honed.model.adapters import load_adapter

        recorded = adapter_base_path(self.tuned)
        if recorded and Path(recorded).name != Path(self.base).name:
            log.warning("%s was trained on %s; merging it into %s as asked", self.tuned, recorded, self.base)
        try:
            return load_adapter(model, self.tuned).merge_and_unload()
        except RuntimeError as err:  # peft: "size mismatch for <tensor>: ..."
            raise ModelError(f"cannot merge adapter {self.tuned} into {self.base}: {str(err).strip().splitlines()[-1]}; "
                             "give the base model the adapter was trained on") from None

    def weights(self, alpha: float) -> dict[str, torch.Tensor]:
        """The interpolated state dict (fp32 for floating tensors; endpoints exact via torch.lerp)."""
        return {name: self.weights_for(name, alpha) for name in self.tuned_weights}

    def save(self, alpha: float, out_dir: str | Path, *, overwrite: bool = False) -> Path:
        """Write the model at `alpha` (safetensors, tokenizer, scope prompt, merge_info.json) atomically."""
        from honed.model.scope import load_scope_prompt, save_scope_prompt
        from honed.utils.fs import atomic_dir

        out = check_output(out_dir, overwrite, inputs=(self.base, self.tuned))
        with torch.no_grad():
            for name, tensor in self.model.state_dict().items():
                tensor.copy_(self.weights_for(name, alpha))
        with atomic_dir(out) as tmp:
            self.model.to(self.dtype).save_pretrained(str(tmp), safe_serialization=True)
            self.model.to(torch.float32)
            tokenizer = self._tokenizer()
            if tokenizer is not None:
                tokenizer.save_pretrained(str(tmp))
            save_scope_prompt(tmp, load_scope_prompt(self.tuned) or load_scope_prompt(self.base))
            info = {"base": self.base, "tuned": self.tuned, "tuned_kind": self.kind, "alpha": float(alpha),
                    "rule": "W = W_base + alpha * (W_tuned - W_base)"}
            (tmp / "merge_info.json").write_text(json.dumps(info, indent=2), encoding="utf-8")
        return out

    def weights_for(self, name: str, alpha: float) -> torch.Tensor:
        """One tensor at `alpha`; torch.lerp gives the endpoints exactly (base at 0, tuned at 1)."""
        tuned, base = self.tuned_weights[name], self.base_weights[name]
        return torch.lerp(base, tuned, float(alpha)) if tuned.is_floating_point() else tuned

    def _tokenizer(self):
        # The tuned folder's tokenizer (a run saves it beside the adapter), else the base's.
        from honed.config import ModelConfig
        from honed.model.load import load_tokenizer

        for source in (self.tuned, self.base):
            if (Path(source) / "tokenizer_config.json").is_file():
                return load_tokenizer(ModelConfig(name_or_path=source))
        return None


def check_output(out_dir: str | Path, overwrite: bool, inputs=()) -> Path:
    """Refuse a non-empty output folder (unless overwrite) and one that holds an input."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"--out {out} is a file; choose a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise OutputExistsError(f"--out {out} is not empty; choose another folder or pass --overwrite")
    for item in inputs:
        target = Path(item).expanduser().resolve()
        if target.exists() and (target == out.resolve() or out.resolve() in target.parents):
            raise OutputExistsError(f"--out {out} holds {item}, an input; choose another folder")
    return out


def interpolate(base_dir: str | Path, tuned: str | Path, alpha: float, out_dir: str | Path, *,
                overwrite: bool = False, trust_remote_code: bool = False) -> Path:
    """Write W_base + alpha * (W_tuned - W_base) to `out_dir`; `tuned` is a model or LoRA adapter folder."""
    return Interpolation(base_dir, tuned, trust_remote_code=trust_remote_code).save(alpha, out_dir, overwrite=overwrite)
