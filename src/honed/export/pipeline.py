"""`honed export`: a model, adapter or training run → merged HF weights, a GGUF, or an Ollama folder.

Every refusal (unknown format, quant type or family, a tokenizer llama.cpp cannot reproduce, an
output folder that holds files) comes before any work. The export is built in a temporary folder
beside the target and renamed into place only when complete; the scope prompt, a model card and,
unless switched off, the verification numbers (verification.json) travel with it.

>>> result = export_model("runs/lab", fmt="gguf", quant="q4_k_m", out="exports/lab-q4")  # doctest: +SKIP
>>> result.verification["passed"]                                                      # doctest: +SKIP
True
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from honed.errors import OutputExistsError
from honed.export.errors import ExportError
from honed.export.gguf_families import UNQUANTISED, check_quant, gguf_family
from honed.export.verify import QUESTIONS
from honed.model.reference import ModelRef, resolve_model_reference
from honed.utils.fs import atomic_dir, write_text_atomic

log = logging.getLogger(__name__)

FORMATS = ("hf", "gguf", "ollama")


@dataclass
class ExportResult:
    """Where the export went, the files in it, and the verification report (None when skipped)."""

    out_dir: Path
    files: list[str]
    verification: dict | None

    @property
    def passed(self) -> bool:
        return self.verification is None or bool(self.verification.get("passed"))


def _say(message: str) -> None:
    from rich.console import Console

    Console(stderr=True).print(f"[bold]export[/bold] {message}")


def check_output(out: Path, overwrite: bool) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise OutputExistsError(f"--out {out} already holds files; choose another folder or pass --overwrite")


def preflight(ref: ModelRef, fmt: str, quant: str, verify: bool, trust_remote_code: bool) -> str:
    """Refuse what cannot be exported before any weights are read; returns the model_type."""
    from transformers import AutoConfig

    if fmt not in FORMATS:
        raise ExportError(f"--format {fmt}: choose one of {', '.join(FORMATS)}")
    try:
        model_type = AutoConfig.from_pretrained(ref.base, trust_remote_code=trust_remote_code).model_type
    except (OSError, ValueError) as err:
        raise ExportError(f"cannot read the config of {ref.base}: {err}") from None
    if fmt in ("gguf", "ollama"):
        check_quant(quant)
        gguf_family(model_type)
        from honed.export.gguf import check_exportable, llama_cpp_module
        from honed.export.hf import tokenizer_folder

        if Path(ref.base).is_dir():
            check_exportable(Path(ref.base), quant)
        from honed.export.gguf_vocab import tokenizer_kind

        if Path(tokenizer_folder(ref)).is_dir():
            tokenizer_kind(Path(tokenizer_folder(ref)))
        if verify:
            llama_cpp_module()
    return model_type


def _is_plain_safetensors_model(ref: ModelRef) -> bool:
    return ref.adapter is None and Path(ref.base).is_dir() and any(Path(ref.base).glob("*.safetensors"))


def _verify_hf(ref: ModelRef, folder: Path, model_type: str, questions, qlora_base: str) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from honed.export import verify as V
    from honed.export.hf import load_trained

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    prompts = V.chat_prompts(tokenizer, model_type, ref.scope_prompt, questions)
    reference = V.TorchRuntime(load_trained(ref, merge=False, qlora_base=qlora_base), "torch (base + adapter)")
    exported = V.TorchRuntime(AutoModelForCausalLM.from_pretrained(str(folder), dtype="float32"), "transformers")
    return V.as_dict([V.compare(reference, exported, prompts)], exact=True, quant=None)


def _verify_gguf(source: Path, folder: Path, gguf_name: str, quant: str, model_type: str, scope, questions) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from honed.export import verify as V
    from honed.export.hf import stop_token_ids

    tokenizer = AutoTokenizer.from_pretrained(str(source))
    prompts = V.chat_prompts(tokenizer, model_type, scope, questions)
    reference = V.TorchRuntime(AutoModelForCausalLM.from_pretrained(str(source), dtype="float32"), "torch")
    runtime = V.LlamaCppRuntime(str(folder / gguf_name), n_ctx=max(map(len, prompts)) + V.GREEDY_TOKENS + 16)
    checks = [V.compare(reference, runtime, prompts)]
    rendered = [tokenizer.decode(p) for p in prompts]
    checks[0].tokenizer_mismatches = runtime.tokenizer_mismatches(tokenizer, [*V.TOKENIZER_PROBES, *rendered])
    checks[0].stops_not_end_of_generation = runtime.not_end_of_generation(stop_token_ids(tokenizer, model_type))
    runtime.close()
    try:
        loaded = AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=gguf_name, dtype="float32")
        checks.append(V.compare(reference, V.TorchRuntime(loaded, "transformers (GGUF loader)"), prompts))
    except Exception as err:  # noqa: BLE001 - transformers' loader covers only some architectures and types
        checks.append(V.unsupported("transformers' GGUF loader", err))
    return V.as_dict(checks, exact=quant in UNQUANTISED, quant=quant)


def print_verification(report: dict) -> None:
    """The verification numbers as a table on stderr."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"verification ({report['criterion']})")
    for col in ("runtime", "greedy 32 identical", "mean KL", "top-1 agree", "max |Δlogit|", "notes"):
        table.add_column(col)
    for r in report["runtimes"]:
        if not r["supported"]:
            table.add_row(r["runtime"], "-", "-", "-", "-", r["reason"][:70])
            continue
        notes = []
        if r.get("tokenizer_mismatches"):
            notes.append(f"tokenisation differs on {len(r['tokenizer_mismatches'])} texts")
        if r.get("stops_not_end_of_generation"):
            notes.append(f"ids {r['stops_not_end_of_generation']} do not stop generation")
        table.add_row(r["runtime"], f"{sum(r['greedy_identical'])}/{len(r['greedy_identical'])}", f"{r['mean_kl']:.2e}",
                      f"{r['top1_agreement']:.1%}", f"{r['max_abs_logit_diff']:.3g}", "; ".join(notes) or "ok")
    Console(stderr=True).print(table)


def export_model(model: str, *, out: str | Path, fmt: str = "hf", adapter: str | None = None, quant: str | None = None,
                 verify: bool = True, overwrite: bool = False, dtype: str | None = None,
                 qlora_base: str = "dequantized", trust_remote_code: bool = False,
                 questions=QUESTIONS) -> ExportResult:
    """Export `model` (a model folder, adapter, run folder or hub id) as `fmt` into `out`."""
    out = Path(out)
    if fmt == "hf" and quant:
        raise ExportError(f"--quant {quant} applies to --format gguf or ollama; --format hf saves 16-bit weights "
                          "(choose them with --dtype bf16|f16)")
    quant = (quant or "f16").lower()
    ref = resolve_model_reference(model, adapter)
    model_type = preflight(ref, fmt, quant, verify, trust_remote_code)
    check_output(out, overwrite)
    scratch = Path(tempfile.mkdtemp(dir=out.parent if out.parent.exists() else None, prefix=f".{out.name}.merge-"))
    try:
        with atomic_dir(out) as staging:
            report = _build(ref, staging, scratch, fmt, quant, verify, dtype, qlora_base, trust_remote_code,
                            model_type, questions, out.name)
            files = sorted(p.name for p in staging.iterdir())
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if report is not None:
        print_verification(report)
    _say(f"wrote {out} ({', '.join(files)})")
    return ExportResult(out, files, report)


def _build(ref, staging: Path, scratch: Path, fmt, quant, verify, dtype, qlora_base, trust_remote_code, model_type,
           questions, name: str) -> dict | None:
    from honed.model.card import write_card
    from honed.export.hf import merge_to_folder
    from honed.model.scope import save_scope_prompt

    report, gguf_name = None, None
    if fmt == "hf":
        _say(f"merging {ref.describe()} into 16-bit safetensors")
        merge_to_folder(ref, staging, dtype=dtype, qlora_base=qlora_base, trust_remote_code=trust_remote_code)
        if verify:
            _say("verifying: reloading with transformers")
            report = _verify_hf(ref, staging, model_type, questions, qlora_base)
    else:
        from honed.export.gguf import quantize_gguf, write_gguf
        from honed.export.hf import base_dtype

        source = Path(ref.base)
        if not _is_plain_safetensors_model(ref):
            _say(f"merging {ref.describe()}")
            source = merge_to_folder(ref, scratch / "merged", dtype=dtype, qlora_base=qlora_base,
                                     trust_remote_code=trust_remote_code)
        gguf_name = f"model-{quant}.gguf"
        if quant in UNQUANTISED:
            _say(f"writing {gguf_name}")
            write_gguf(source, staging / gguf_name, quant, name=name)
        else:
            import torch

            sixteen = "bf16" if base_dtype(str(source)) == torch.bfloat16 else "f16"
            _say(f"writing a {sixteen} GGUF, then quantising it to {quant} with llama.cpp")
            write_gguf(source, scratch / f"model-{sixteen}.gguf", sixteen, name=name)
            quantize_gguf(scratch / f"model-{sixteen}.gguf", staging / gguf_name, quant)
        from transformers import AutoTokenizer

        if fmt == "ollama":
            from honed.export.ollama import write_modelfile

            write_modelfile(staging, gguf_name, AutoTokenizer.from_pretrained(str(source)), model_type,
                            system=ref.scope_prompt)
        if verify:
            _say("verifying: llama.cpp and transformers' GGUF loader against torch")
            report = _verify_gguf(source, staging, gguf_name, quant, model_type, ref.scope_prompt, questions)
    save_scope_prompt(staging, ref.scope_prompt)
    if report is not None:
        write_text_atomic(staging / "verification.json", json.dumps(report, indent=2))
    write_text_atomic(staging / "export_info.json", json.dumps(
        {"source": ref.describe(), "kind": ref.kind, "base": ref.base, "adapter": ref.adapter, "run_dir": ref.run_dir,
         "format": fmt, "quant": quant if fmt != "hf" else None, "model_type": model_type}, indent=2))
    write_card(staging, ref.run_dir, title=name, kind="export", format=fmt, quant=quant if fmt != "hf" else None,
               base_model=None if ref.run_dir else ref.base, verification=_verdict(report),
               usage=_usage(fmt, name, gguf_name))
    return report


def _verdict(report: dict | None) -> str | None:
    if report is None:
        return None
    lines = [f"Checked against the torch model ({report['criterion']}): "
             f"{'passed' if report['passed'] else 'FAILED'}."]
    for r in report["runtimes"]:
        if r["supported"]:
            lines.append(f"- {r['runtime']}: greedy {sum(r['greedy_identical'])}/{len(r['greedy_identical'])} "
                         f"identical, mean KL {r['mean_kl']:.2e}, top-1 agreement {r['top1_agreement']:.1%}")
        else:
            lines.append(f"- {r['reason']}")
    return "\n".join(lines)


def _usage(fmt: str, name: str, gguf_name: str | None) -> str:
    if fmt == "hf":
        return f"honed chat --model {name}\n# or: transformers AutoModelForCausalLM.from_pretrained('{name}'); vllm serve {name}"
    if fmt == "ollama":
        return f"cd {name} && ollama create {name} -f Modelfile && ollama run {name}"
    return f"llama-cli -m {name}/{gguf_name} -cnv"
