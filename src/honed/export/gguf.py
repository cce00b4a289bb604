"""A Hugging Face model folder (safetensors) as a GGUF file for llama.cpp and Ollama.

Written with the `gguf` package (the writer, the architecture names and the HF → GGUF tensor name
table are its own); what is ours is the per-family knowledge of how transformers' tensors differ
from llama.cpp's (`honed.export.gguf_families`). 16-bit files are written directly; every other
type is made from a 16-bit file by llama.cpp's own quantiser through llama-cpp-python.

>>> write_gguf("exports/merged", "exports/model-f16.gguf", "f16")         # doctest: +SKIP
>>> quantize_gguf("exports/model-f16.gguf", "exports/model-q4_k_m.gguf", "q4_k_m")  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

from honed.export.errors import ExportError
from honed.export.gguf_families import QUANT_TYPES, UNQUANTISED, check_quant, gguf_family
from honed.export.gguf_vocab import tokenizer_kind, write_tokenizer
from honed.model.families import Family

log = logging.getLogger(__name__)


def read_config(folder: Path) -> dict:
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise ExportError(f"{folder}: no config.json; GGUF export needs a Hugging Face model folder")
    cfg = json.loads(path.read_text(encoding="utf-8"))
    return cfg.get("text_config", cfg) if cfg.get("model_type") == "gemma3" and "text_config" in cfg else cfg


def rope_settings(cfg: dict) -> tuple[float, dict | None, float | None]:
    """(rope theta, scaling parameters or None, sliding-window layers' theta) from transformers 5's
    `rope_parameters` (per layer type for Gemma 3) or older configs' rope_theta / rope_scaling."""
    params = cfg.get("rope_parameters") or {}
    local = {}
    if "full_attention" in params:
        params, local = params["full_attention"], params.get("sliding_attention") or {}
    theta = float(params.get("rope_theta", cfg.get("rope_theta", 10000.0)))
    scaling = params if params.get("rope_type", "default") != "default" else cfg.get("rope_scaling")
    local_theta = local.get("rope_theta", cfg.get("rope_local_base_freq"))
    return theta, scaling or None, float(local_theta) if local_theta else None


def check_exportable(folder: Path, quant: str) -> Family:
    """Every refusal that needs no weights: family, quant type, tokenizer, rope scaling."""
    check_quant(quant)
    cfg = read_config(folder)
    family = gguf_family(cfg.get("model_type", "?"))
    tokenizer_kind(Path(folder))
    scaling = rope_settings(cfg)[1] or {}
    kind = scaling.get("rope_type") or scaling.get("type")
    if kind not in (None, "default", "llama3", "linear"):
        raise ExportError(f"{folder}: rope_scaling type {kind!r} is not supported for GGUF export yet "
                          "(supported: none, llama3, linear)")
    if quant not in UNQUANTISED:
        llama_cpp_module()
    return family


def llama_cpp_module():
    """llama-cpp-python, imported lazily with an install hint."""
    try:
        import llama_cpp
    except ImportError:
        raise ExportError("quantised GGUF export and GGUF verification need llama-cpp-python: "
                          "pip install 'honed[export]' (it builds llama.cpp from source: several minutes)") from None
    return llama_cpp


@contextlib.contextmanager
def native_log(what: str):
    """Collect what llama.cpp's C code writes to stderr (a line per tensor); pass on its warnings,
    and the tail of it when the call fails. With -v everything is shown as it comes."""
    if logging.getLogger().isEnabledFor(logging.DEBUG):
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved, 2)
            sink.seek(0)
            tail = sink.read().decode("utf-8", "replace").splitlines()[-15:]
            log.error("%s: llama.cpp said:\n%s", what, "\n".join(tail))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        sink.seek(0)
        for line in sink.read().decode("utf-8", "replace").splitlines():
            if "WARNING" in line or "error" in line.lower():
                log.warning("llama.cpp: %s", line.strip())


def _head_permute(w: np.ndarray, heads: int) -> np.ndarray:
    # transformers rotates half-heads, llama.cpp's `llama` rope rotates adjacent pairs: reorder each
    # head's rows from [x0..x(d/2-1), y0..] to [x0, y0, x1, y1, ...].
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def llama3_rope_factors(cfg: dict, head_dim: int) -> np.ndarray:
    """Per-frequency divisors of Llama 3.1's long-context rope (`rope_type: llama3`)."""
    base, s, _ = rope_settings(cfg)
    factor, low, high = s["factor"], s.get("low_freq_factor", 1.0), s.get("high_freq_factor", 4.0)
    old = s.get("original_max_position_embeddings", 8192)
    out = []
    for i in range(0, head_dim, 2):
        wavelen = 2 * math.pi * base ** (i / head_dim)
        if wavelen < old / high:
            out.append(1.0)
        elif wavelen > old / low:
            out.append(factor)
        else:
            smooth = (old / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.asarray(out, dtype=np.float32)


def _write_hparams(writer, family: Family, cfg: dict) -> None:
    heads = cfg["num_attention_heads"]
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // heads
    writer.add_context_length(cfg.get("max_position_embeddings", 4096))
    writer.add_embedding_length(cfg["hidden_size"])
    writer.add_block_count(cfg["num_hidden_layers"])
    writer.add_feed_forward_length(cfg["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(cfg.get("num_key_value_heads", heads))
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    rotary = cfg.get("partial_rotary_factor") or (cfg.get("rope_parameters") or {}).get("partial_rotary_factor") or 1.0
    writer.add_rope_dimension_count(int(head_dim * rotary))
    theta, scaling, local_theta = rope_settings(cfg)
    writer.add_rope_freq_base(theta)
    writer.add_layer_norm_rms_eps(float(cfg.get("rms_norm_eps", 1e-6)))
    writer.add_vocab_size(cfg["vocab_size"])
    scaling = scaling or {}
    if (scaling.get("rope_type") or scaling.get("type")) == "linear":
        import gguf

        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(scaling["factor"]))
    if family.gguf.arch in ("gemma2", "gemma3"):
        if cfg.get("sliding_window"):
            writer.add_sliding_window(cfg["sliding_window"])
        if cfg.get("final_logit_softcapping"):
            writer.add_final_logit_softcapping(float(cfg["final_logit_softcapping"]))
        if family.gguf.arch == "gemma2" and cfg.get("attn_logit_softcapping"):
            writer.add_attn_logit_softcapping(float(cfg["attn_logit_softcapping"]))
        if local_theta:
            writer.add_rope_freq_base_swa(local_theta)
        if cfg.get("layer_types"):  # which layers attend in a window, as transformers says
            writer.add_sliding_window_pattern([t == "sliding_attention" for t in cfg["layer_types"]])
    if family.gguf.arch == "phi3" and cfg.get("sliding_window"):
        writer.add_sliding_window(cfg["sliding_window"])


def _hf_tensors(folder: Path):
    """(name, float32 numpy array) for every tensor of the folder's safetensors files, lazily."""
    from safetensors import safe_open

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ExportError(f"{folder}: no *.safetensors weights")
    for path in files:
        with safe_open(str(path), framework="pt") as fh:
            for name in fh.keys():
                yield name, fh.get_tensor(name).float().numpy()


def _gguf_name(name_map, name: str) -> str | None:
    # Gemma 3's multimodal checkpoints keep the text model under model.language_model.
    for candidate in (name, name.replace("model.language_model.", "model.", 1)):
        found = name_map.get_name(candidate, try_suffixes=(".weight", ".bias"))
        if found:
            return found
    return None


def write_gguf(folder: str | Path, out_path: str | Path, outtype: str = "f16", *, name: str | None = None) -> Path:
    """Write `folder` (HF config + safetensors + tokenizer) as one GGUF of `outtype` (f32, f16 or bf16)."""
    import gguf
    from transformers import AutoTokenizer

    folder, out_path = Path(folder), Path(out_path)
    family = check_exportable(folder, outtype if outtype != "f32" else "f16")
    cfg = read_config(folder)
    arch = next(a for a, n in gguf.MODEL_ARCH_NAMES.items() if n == family.gguf.arch)
    name_map = gguf.get_tensor_name_map(arch, cfg["num_hidden_layers"])
    qtype = {"f32": gguf.GGMLQuantizationType.F32, "f16": gguf.GGMLQuantizationType.F16,
             "bf16": gguf.GGMLQuantizationType.BF16}[outtype]
    tmp = out_path.with_name(f".{out_path.name}.tmp")
    writer = gguf.GGUFWriter(str(tmp), family.gguf.arch)
    writer.add_name(name or folder.name)
    writer.add_file_type({"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                          "bf16": gguf.LlamaFileType.MOSTLY_BF16}[outtype])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    _write_hparams(writer, family, cfg)
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    write_tokenizer(writer, folder, tokenizer, vocab_size=cfg["vocab_size"], end_of_turn=family.end_of_turn[0])

    heads, kv_heads = cfg["num_attention_heads"], cfg.get("num_key_value_heads", cfg["num_attention_heads"])
    tied = cfg.get("tie_word_embeddings", False)
    skipped = []
    for hf_name, data in _hf_tensors(folder):
        if hf_name == "lm_head.weight" and tied:
            continue  # llama.cpp reuses the token embeddings, as transformers does
        target = _gguf_name(name_map, hf_name)
        if target is None:
            skipped.append(hf_name)
            continue
        if family.gguf.permute_qk and hf_name.endswith(("q_proj.weight", "q_proj.bias")):
            data = _head_permute(data, heads)
        elif family.gguf.permute_qk and hf_name.endswith(("k_proj.weight", "k_proj.bias")):
            data = _head_permute(data, kv_heads)
        if family.gguf.norm_plus_one and hf_name.endswith("norm.weight"):
            data = data + 1.0
        if data.ndim <= 1 or qtype == gguf.GGMLQuantizationType.F32:
            writer.add_tensor(target, data.astype(np.float32))  # norms and biases stay f32, as llama.cpp expects
        else:
            writer.add_tensor(target, gguf.quants.quantize(data, qtype), raw_dtype=qtype)
    if skipped:
        raise ExportError(f"{folder}: {len(skipped)} tensors have no GGUF name for {family.gguf.arch} "
                          f"(first: {skipped[0]}); this checkpoint's layout is not supported for GGUF export")
    scaling = rope_settings(cfg)[1] or {}
    if (scaling.get("rope_type") or scaling.get("type")) == "llama3":
        head_dim = cfg.get("head_dim") or cfg["hidden_size"] // heads
        writer.add_tensor(gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight", llama3_rope_factors(cfg, head_dim))
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file(progress=False)
    finally:
        writer.close()
    os.replace(tmp, out_path)
    return out_path


def quantize_gguf(src: str | Path, dst: str | Path, quant: str, *, threads: int | None = None) -> Path:
    """Quantise a 16-bit GGUF with llama.cpp's own quantiser (k-quants pick per-tensor types)."""
    import ctypes

    quant = check_quant(quant)
    llama_cpp = llama_cpp_module()
    dst = Path(dst)
    tmp = dst.with_name(f".{dst.name}.tmp")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, QUANT_TYPES[quant])
    params.nthread = threads or os.cpu_count() or 1
    with native_log(f"quantising {src} to {quant}"):
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(tmp).encode(), ctypes.byref(params))
    if rc != 0:
        tmp.unlink(missing_ok=True)
        raise ExportError(f"llama.cpp could not quantise {src} to {quant} (code {rc}); rerun with -v for its log")
    os.replace(tmp, dst)
    return dst
