"""What a finished (or best-so-far) run leaves behind, written atomically.

- LoRA: adapter_config.json + adapter_model.safetensors (peft's format) and the tokenizer;
- full: the whole model as HF safetensors and the tokenizer;
- always: config.yaml (resolved), run_info.json (versions, data fingerprint, path taken);
- the scope prompt the model was trained with (scope_prompt.txt), so chat/generate/eval ask it the
  same way by default.
"""

from __future__ import annotations

import json
import platform
import time
from importlib import metadata
from pathlib import Path

from honed.model.scope import save_scope_prompt
from honed.utils.fs import atomic_dir, move_contents_atomic, save_figure_atomic, write_text_atomic


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in ("honed", "torch", "transformers", "peft", "accelerate", "tokenizers", "bitsandbytes"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def save_model_files(model, tokenizer, folder: Path, scope_prompt: str | None = None, state_dict: dict | None = None) -> None:
    """Weights (+ tokenizer, + the scope prompt) in the ecosystem's formats; safetensors only.
    `state_dict`: the weights to write instead of the model's own (gathered from FSDP shards)."""
    model.save_pretrained(str(folder), safe_serialization=True, **({"state_dict": state_dict} if state_dict is not None else {}))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(folder))
    save_scope_prompt(folder, scope_prompt)


def save_weights_atomic(model, tokenizer, target: Path, scope_prompt: str | None = None, state_dict: dict | None = None) -> None:
    """Save into a sibling temp folder, then move each file into `target` (other files there stay)."""
    with atomic_dir(target.with_name(f".{target.name}-staging")) as tmp:
        save_model_files(model, tokenizer, tmp, scope_prompt, state_dict)
    staging = target.with_name(f".{target.name}-staging")
    move_contents_atomic(staging, target)
    staging.rmdir()


def write_run_record(out_dir: Path, cfg, *, fingerprint: str, info: dict, report: dict, started: float) -> None:
    """config.yaml (the resolved config) and run_info.json (versions, data fingerprint, path taken)."""
    write_text_atomic(out_dir / "config.yaml", cfg.to_yaml())
    record = {
        "versions": package_versions(),
        "data_fingerprint": fingerprint,
        "model": info,
        "data": report,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    write_text_atomic(out_dir / "run_info.json", json.dumps(record, indent=2, ensure_ascii=False))
    from honed.model.card import write_run_cards

    write_run_cards(out_dir)  # README.md model cards in the run, best/ and each checkpoint


def plot_losses(metrics: list[dict], path: Path) -> Path | None:
    """Train (and validation) loss against step, as a PNG."""
    train = [(m["step"], m["loss"]) for m in metrics if m.get("kind") == "train"]
    val = [(m["step"], m["loss"]) for m in metrics if m.get("kind") == "eval"]
    if not train:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(*zip(*train), label="train loss", linewidth=1.5)
    if val:
        ax.plot(*zip(*val), "o-", label="validation loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure_atomic(fig, path, dpi=110)
