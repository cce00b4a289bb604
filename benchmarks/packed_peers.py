"""Real-data throughput on one GPU: HF+PEFT and Unsloth against honed on the same packed micro-batches.

Every stack trains the same random-init model shape (honed bench's SHAPES, saved by its build_shape,
as ../shared/bench/peer_bench.py does) on the same micro-batches: sample lengths drawn from a shipped
distribution (`--lengths alpaca`), seeded random tokens, packed by honed's own packing into `--batch`
rows of up to `--seq` tokens (honed.bench.data). Each stack lays a micro-batch out the way
it trains best while keeping samples apart, and reports effective (non-padding) tokens/s:

  hf              transformers + peft, sdpa, gradient checkpointing: packed rows, position_ids restart
                  at each sample and no attention mask, so transformers builds a block-diagonal causal
                  mask (masking_utils.find_packed_sequence_indices)
  hf-flex         the same with attn_implementation="flex_attention" (block mask instead of a dense one)
  hf-padded       the same samples, length-grouped into right-padded batches with an attention mask
  unsloth         FastLanguageModel, gradient checkpointing "unsloth": each micro-batch as ONE padding-free
                  row with position_ids and packed_seq_lengths, which is what Unsloth's own sample packing
                  feeds it (unsloth/utils/packing.py, configure_sample_packing/enable_sample_packing). On
                  several packed rows its attention would cross samples: it reads sample boundaries from
                  position_ids only for a single row (unsloth/models/llama.py, LlamaModel_fast_forward)
  unsloth-padded  the same samples length-grouped and right-padded (Unsloth drops the mask in training;
                  right padding is harmless under causal attention)
  cmd:COMMAND     any command taking the same arguments and printing `RESULT {json}` with at least
                  effective_tokens_per_s, peak_alloc_gib and loss_mean (`cmd:python3 -m honed bench`)

The table compares effective tokens/s, padding, peak memory and the token-weighted mean loss of the
timed micro-batches, with ratios against `unsloth`; `data` shows that all stacks hashed the same
micro-batches. Usage, on the GPU machine from the checkout's root:

  PYTHONPATH=$PWD/.peer/site:$PWD/src python3 benchmarks/packed_peers.py --shape llama-1b --seq 2048 \\
      --batch 4 --steps 10 --warmup 3 --lengths alpaca --stacks hf,unsloth,"cmd:python3 -m honed bench"
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time

from honed.bench.results import packed_result_fields
from honed.bench.run import default_models_dir
from honed.bench.shapes import SHAPES, TARGETS
from honed.bench.timing import step_spread_fields, time_steps
from honed.bench.data import PAD_ID, BenchData, bench_data

# stack → how it lays out a micro-batch (run_hf or run_unsloth runs it; `cmd:` stacks lay out their own)
STACKS = {
    "hf": "packed",
    "hf-flex": "packed",
    "hf-padded": "grouped",
    "unsloth": "padding-free",
    "unsloth-padded": "grouped",
}
REFERENCE = "unsloth"  # the table's ratios are against this stack
REQUIRED_KEYS = ("effective_tokens_per_s", "peak_alloc_gib", "loss_mean")
# Unsloth reads the sample lengths on the host: a CPU tensor spares it a device→host copy each step.
HOST_KEYS = {"packed_seq_lengths"}


# ---- layouts (pure, CPU) ----------------------------------------------------------------------


def packed_rows_batch(micro_batch) -> dict:
    """honed's packed rows: position_ids restart per sample, rows padded to the longest, no attention mask."""
    from honed.data.packing import collate

    return collate(micro_batch, packing=True, pad_id=PAD_ID)


def padding_free_batch(micro_batch) -> dict:
    """All rows of a micro-batch as one row without padding, plus the per-sample lengths Unsloth reads
    (`packed_seq_lengths`, as its TRL sample-packing collator adds them)."""
    import torch

    from honed.data.packing import collate

    batch = collate(micro_batch, packing=True, pad_id=PAD_ID, padding_free=True)
    batch["packed_seq_lengths"] = torch.tensor([len(s.input_ids) for row in micro_batch for s in row], dtype=torch.int32)
    return batch


def length_grouped(micro_batches, token_budget: int) -> list[list]:
    """The samples of `micro_batches`, longest first, in padded batches of at most `token_budget` tokens
    counting padding (HF's group_by_length with a token budget instead of a fixed count).

    >>> from types import SimpleNamespace as S
    >>> mb = [[S(input_ids=[0] * n) for n in (5, 1, 3)], [S(input_ids=[0] * 4)]]
    >>> [[len(s.input_ids) for s in b] for b in length_grouped([mb], token_budget=8)]
    [[5], [4, 3], [1]]
    """
    samples = sorted((s for mb in micro_batches for row in mb for s in row), key=lambda s: -len(s.input_ids))
    batches, current = [], []
    for s in samples:  # longest first, so the first sample of a batch sets its width
        if current and (len(current) + 1) * len(current[0].input_ids) > token_budget:
            batches.append(current)
            current = []
        current.append(s)
    if current:
        batches.append(current)
    return batches


def layout_batches(data: BenchData, layout: str, token_budget: int) -> tuple[list[dict], list[dict]]:
    """(warm-up, timed) collated batches of `data` in a stack's layout; the same samples either way."""
    from honed.data.packing import collate_padded

    if layout == "grouped":
        return tuple([collate_padded(group, PAD_ID) for group in length_grouped(mbs, token_budget)] for mbs in (data.warmup, data.timed))
    one = {"packed": packed_rows_batch, "padding-free": padding_free_batch}.get(layout)
    if one is None:
        raise ValueError(f"unknown layout {layout!r}; one of packed, padding-free, grouped")
    return [one(mb) for mb in data.warmup], [one(mb) for mb in data.timed]


def model_inputs(batch: dict) -> dict:
    """What a stack's forward takes: everything collate made except honed's own bookkeeping."""
    return {k: v for k, v in batch.items() if k != "sample_index"}


# ---- running one stack (GPU) --------------------------------------------------------------------


def load_data(args) -> BenchData:
    return bench_data(args.lengths, vocab_size=SHAPES[args.shape]["vocab_size"], seq=args.seq, batch=args.batch,
                      warmup=args.warmup, steps=args.steps, samples=args.samples)


def train_and_report(model, args, tag: str, data: BenchData, extra: dict) -> None:
    """Run the stack's warm-up and timed micro-batches (AdamW lr 1e-4, no clipping, as peer_bench) and print RESULT."""
    import torch

    layout = STACKS[tag]
    warm, timed = layout_batches(data, layout, token_budget=args.batch * args.seq)
    warm = [{k: v.pin_memory() for k, v in b.items()} for b in warm]
    timed = [{k: v.pin_memory() for k, v in b.items()} for b in timed]
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4, fused=True)
    model.train()

    def step(batch: dict):
        inputs = {k: v if k in HOST_KEYS else v.cuda(non_blocking=True) for k, v in model_inputs(batch).items()}
        # use_cache=False: a KV cache (transformers makes one when checkpointing is off) turns off the
        # packed-sequence mask (masking_utils._preprocess_mask_arguments), and samples would see each other.
        out = model(**inputs, use_cache=False)
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return out.loss.detach()

    losses, warmup_s, dt, each = time_steps(step, warm, timed)
    res = dict(stack=tag, layout=layout, shape=args.shape, qlora=args.qlora, seq=args.seq, batch=args.batch, lengths=args.lengths,
               **extra, **packed_result_fields(data, timed, losses[len(warm):], dt, model.config, args.peak_tflops),
               loss=round(losses[-1], 3), losses=[round(x, 4) for x in losses], warmup_s=round(warmup_s, 1),
               **step_spread_fields(each), trainable=sum(p.numel() for p in params))
    print("RESULT " + json.dumps(res), flush=True)


def check_hf_packed_masks(data: BenchData) -> None:
    """Fail loudly when this transformers would let packed samples attend to each other."""
    try:
        from transformers.masking_utils import find_packed_sequence_indices
    except ImportError:
        raise SystemExit("hf: this transformers has no masking_utils.find_packed_sequence_indices, so packed rows "
                         "without an attention mask would attend across samples; use --stacks hf-padded") from None
    first = packed_rows_batch(data.timed[0])
    if find_packed_sequence_indices(first["position_ids"]) is None:
        raise SystemExit("hf: transformers did not detect the packed samples from position_ids; the mask would cross samples")


def run_hf(args, tag: str) -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    data = load_data(args)
    attention = "flex_attention" if tag == "hf-flex" else "sdpa"
    if STACKS[tag] == "packed":
        check_hf_packed_masks(data)
    kw = dict(dtype=torch.bfloat16, attn_implementation=attention, device_map={"": 0})
    if args.qlora:
        from transformers import BitsAndBytesConfig

        kw["quantization_config"] = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16,
                                                       bnb_4bit_use_double_quant=True)
    model = AutoModelForCausalLM.from_pretrained(os.path.join(args.models, args.shape), **kw)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.enable_input_require_grads()
    model = get_peft_model(model, LoraConfig(r=args.rank, lora_alpha=args.rank, target_modules=TARGETS, lora_dropout=0.0, task_type="CAUSAL_LM"))
    train_and_report(model, args, tag, data, {"attention": attention})


def run_unsloth(args, tag: str) -> None:
    from unsloth import FastLanguageModel  # first, before transformers/peft load, so its patches apply

    import torch

    model, _tokenizer = FastLanguageModel.from_pretrained(model_name=os.path.join(args.models, args.shape), max_seq_length=args.seq,
                                                          dtype=torch.bfloat16, load_in_4bit=args.qlora, local_files_only=True)
    model = FastLanguageModel.get_peft_model(model, r=args.rank, lora_alpha=args.rank, target_modules=TARGETS, lora_dropout=0, bias="none",
                                             use_gradient_checkpointing="unsloth")
    train_and_report(model, args, tag, load_data(args), {"attention": unsloth_attention_backend()})


def unsloth_attention_backend() -> str:
    """Which kernels Unsloth's dispatch can pick here (it prefers flash-attn, then xformers, then torch)."""
    try:
        from unsloth.utils import attention_dispatch as d
    except ImportError:
        return "unknown"
    found = [name for name, present in (("flash-attn", getattr(d, "HAS_FLASH_ATTENTION", False)), ("xformers", getattr(d, "HAS_XFORMERS", False)),
                                        ("torch-varlen", getattr(d, "_TORCH_VARLEN_ATTN", None) is not None)) if present]
    return "+".join(found) or "sdpa"


# ---- orchestration and the table (pure parts tested on CPU) ----------------------------------


def stack_command(stack: str, base: list[str]) -> list[str]:
    """The command line of one stack: `cmd:` stacks get the shared arguments appended, as in peer_bench.

    >>> stack_command("cmd:python3 -m honed bench", ["--seq", "8"])
    ['python3', '-m', 'honed', 'bench', '--seq', '8']
    """
    if stack.startswith("cmd:"):
        return shlex.split(stack[4:]) + base
    if stack not in STACKS:
        raise SystemExit(f"--stacks: unknown stack {stack!r}; one of {', '.join(STACKS)} or cmd:COMMAND")
    return [sys.executable, os.path.abspath(__file__), *base, "--one", stack]


def stack_label(stack: str, result: dict | None = None) -> str:
    """A short table label: a `cmd:` stack is its RESULT's name plus the options it adds.

    >>> stack_label("cmd:python3 -m honed bench --memory offload", {"stack": "honed"})
    'honed --memory offload'
    >>> stack_label("hf")
    'hf'
    """
    if not stack.startswith("cmd:"):
        return stack
    words = shlex.split(stack[4:])
    options = next((i for i, w in enumerate(words) if w.startswith("--")), len(words))
    name = (result or {}).get("stack") or words[-1]
    return " ".join([name, *words[options:]])


def parse_result(stdout: str) -> dict | None:
    """The last `RESULT {json}` line of a stack's output, or None.

    >>> parse_result('noise\\nRESULT {"a": 1}\\nRESULT {"a": 2}\\n')
    {'a': 2}
    """
    lines = [line for line in stdout.splitlines() if line.startswith("RESULT ")]
    return json.loads(lines[-1][len("RESULT "):]) if lines else None


def format_table(rows: list[dict], reference: str = REFERENCE) -> str:
    """The comparison table: effective tokens/s, padding, peak memory, mean loss, and ratios against `reference`."""
    ref = next((r for r in rows if r.get("label") == reference and not r.get("error")), None)
    lines = [f"{'stack':28} {'layout':12} {'eff tok/s':>10} {'pad%':>6} {'peakGiB':>8} {'loss':>7} "
             f"{'tok/s ×' + reference:>16} {'GiB ×' + reference:>14} {'wall':>6}"]
    for r in rows:
        if r.get("error"):
            lines.append(f"{r['label']:28} FAILED ({r['error']})")
            continue
        speed = f"{r['effective_tokens_per_s'] / ref['effective_tokens_per_s']:.2f}×" if ref else "–"
        memory = f"{r['peak_alloc_gib'] / ref['peak_alloc_gib']:.2f}×" if ref and ref["peak_alloc_gib"] else "–"
        lines.append(f"{r['label']:28} {r.get('layout', '-'):12} {r['effective_tokens_per_s']:10.0f} {r.get('padding_pct', 0.0):6.1f} "
                     f"{r['peak_alloc_gib']:8.2f} {r['loss_mean']:7.3f} {speed:>16} {memory:>14} {r.get('wall_s', 0):6.0f}")
    hashes = {r.get("data_sha") for r in rows if not r.get("error")}
    if len(hashes) == 1:
        lines.append(f"data: every stack trained on the same micro-batches ({hashes.pop()})")
    elif hashes:
        which = ", ".join(f"{r['label']}={r.get('data_sha')}" for r in rows if not r.get("error"))
        lines.append(f"data: WARNING the stacks hashed different micro-batches: {which}")
    return "\n".join(lines)


def _text(output) -> str:
    # TimeoutExpired carries bytes even with text=True
    return output.decode(errors="replace") if isinstance(output, bytes) else (output or "")


def run_stack(stack: str, base: list[str], timeout: int) -> dict:
    t0 = time.time()
    try:
        p = subprocess.run(stack_command(stack, base), capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        print(f"== {stack} timed out after {timeout}s\n{_text(e.stderr)[-2000:]}", flush=True)
        return dict(label=stack_label(stack), error=f"timeout {timeout}s")
    result = parse_result(p.stdout)
    missing = [k for k in REQUIRED_KEYS if k not in (result or {})]
    if p.returncode or result is None or missing:
        why = f"rc={p.returncode}" if p.returncode or result is None else f"RESULT lacks {', '.join(missing)}"
        print(f"== {stack} failed ({why}, {time.time() - t0:.0f}s)\n{p.stderr[-3000:]}\n{p.stdout[-1500:]}", flush=True)
        return dict(label=stack_label(stack, result), error=why)
    result.update(label=stack_label(stack, result), wall_s=round(time.time() - t0, 1))
    print(json.dumps(result), flush=True)
    return result


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="llama-1b", choices=sorted(SHAPES))
    ap.add_argument("--seq", type=int, default=2048, help="max tokens a packed row holds (data.max_seq_length)")
    ap.add_argument("--batch", type=int, default=4, help="packed rows per micro-batch")
    ap.add_argument("--steps", type=int, default=10, help="timed micro-batches (one optimizer step each)")
    ap.add_argument("--warmup", type=int, default=3, help="micro-batches before timing (Unsloth compiles in its first)")
    ap.add_argument("--lengths", default="alpaca", help="length distribution: a shipped name or a JSON histogram file")
    ap.add_argument("--samples", type=int, default=None, help="samples to draw (default: as many as the micro-batches take)")
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--qlora", action="store_true", help="4-bit NF4 base for every stack")
    ap.add_argument("--peak-tflops", type=float, default=790.0, help="bf16 matmul ceiling for the MFU estimate")
    ap.add_argument("--stacks", default="hf,unsloth,cmd:python3 -m honed bench", help="comma-separated: " + ", ".join(STACKS) + ", cmd:COMMAND")
    ap.add_argument("--timeout", type=int, default=600, help="seconds allowed per stack")
    ap.add_argument("--models", default=default_models_dir(),
                    help="where the shapes are saved (default: $BENCH_MODELS, shared with peer_bench.py, else ./bench_models)")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.one:
        if args.one not in STACKS:
            raise SystemExit(f"--one: unknown stack {args.one!r}; one of {', '.join(STACKS)}")
        (run_unsloth if args.one.startswith("unsloth") else run_hf)(args, args.one)
        return 0

    for stack in args.stacks.split(","):
        stack_command(stack, [])  # an unknown stack fails before anything runs
    subprocess.run([sys.executable, "-c", "import sys; from honed.bench.shapes import build_shape; build_shape(sys.argv[1], sys.argv[2])",
                    args.shape, args.models], check=True)
    base = ["--shape", args.shape, "--seq", str(args.seq), "--batch", str(args.batch), "--steps", str(args.steps), "--warmup", str(args.warmup),
            "--rank", str(args.rank), "--peak-tflops", str(args.peak_tflops), "--lengths", args.lengths, "--models", args.models]
    if args.samples:
        base += ["--samples", str(args.samples)]
    if args.qlora:
        base.append("--qlora")
    rows = [run_stack(stack, base, args.timeout) for stack in args.stacks.split(",")]
    print("\n" + format_table(rows), flush=True)
    return 0 if all(not r.get("error") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
