"""DPO throughput on one GPU: TRL's DPOTrainer (HF+PEFT), Unsloth's patched DPOTrainer, and honed.

Every stack trains LoRA (r=16, all seven projections, bf16, gradient checkpointing) on the same
random-init model shape (../shared/bench/peer_bench.py's SHAPES and `build`, so the models are the
peers' own) with the sigmoid DPO loss, β=0.1, the reference being the base with the adapter off.
The pairs are seeded random tokens: a prompt of `--seq` / 2 tokens and chosen and rejected
completions that make each sequence `--seq` tokens long (the end-of-sequence token included), as
`honed bench --objective dpo` lays its pairs, so no stack pads. Tokens/s counts both sequences of every pair, prompt included, as every stack runs
them: `batch × 2 × seq` per step. Peak memory is `torch.cuda.max_memory_allocated` after warm-up.

  trl       transformers + peft + TRL DPOTrainer (sdpa, gradient checkpointing)
  unsloth   Unsloth's FastLanguageModel + PatchDPOTrainer + the same TRL DPOTrainer
  cmd:CMD   a command given the same arguments that prints `RESULT {json}` with tokens_per_s,
            peak_alloc_gib and loss (`cmd:python3 -m honed bench --objective dpo`)

On the GPU machine, from the checkout's root, with ../shared/bench/peer_bench.py copied into .bench/
and the peers' packages in .peer/site (carry both):

  PYTHONPATH=$PWD/.peer/site:$PWD/src:$PWD/.bench python3 benchmarks/dpo_peers.py --shape llama-8b \\
      --seq 1024 --batch 2 --steps 8 --warmup 3 \\
      --stacks trl,unsloth,"cmd:python3 -m honed bench --objective dpo"
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time

REFERENCE = "unsloth"  # the table's ratios are against this stack


def pair_texts(n_pairs: int, prompt_len: int, seq: int, vocab_size: int, seed: int = 1) -> list[dict]:
    """Seeded random pairs as whitespace-separated tokens of the stand-in tokenizer (`t<id>` is id)."""
    import random

    rng = random.Random(seed)
    completion_len = seq - prompt_len - 1  # TRL appends the end-of-sequence token to each completion
    # The stand-in tokenizer's special tokens are t0..t3, and its tokenizer splits them out of any word
    # that starts with them ("t17" -> "t1" "7"): draw only ids whose first digit is 4-9.
    ids = [i for i in range(10, vocab_size) if str(i)[0] in "456789"]

    def words(n):
        return " ".join(f"t{rng.choice(ids)}" for _ in range(n))

    return [{"prompt": words(prompt_len), "chosen": " " + words(completion_len), "rejected": " " + words(completion_len)} for _ in range(n_pairs)]


def timing_callback(args):
    """A TrainerCallback that times each optimizer step between CUDA synchronisations."""
    import torch
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.step_seconds: list[float] = []
            self._start = 0.0

        def on_step_begin(self, *_a, **_k):
            torch.cuda.synchronize()
            if len(self.step_seconds) == args.warmup:
                torch.cuda.reset_peak_memory_stats()
            self._start = time.perf_counter()

        def on_step_end(self, *_a, **_k):
            torch.cuda.synchronize()
            self.step_seconds.append(time.perf_counter() - self._start)

    return StepTimer()


def run_trl(args, unsloth: bool) -> None:
    import peer_bench
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer

    path = peer_bench.model_dir(args.shape)
    if unsloth:
        from unsloth import FastLanguageModel, PatchDPOTrainer

        PatchDPOTrainer()
        model, tokenizer = FastLanguageModel.from_pretrained(model_name=path, max_seq_length=args.seq, dtype=torch.bfloat16, load_in_4bit=False, local_files_only=True)
        model = FastLanguageModel.get_peft_model(model, r=args.rank, lora_alpha=args.rank, target_modules=peer_bench.TARGETS, lora_dropout=0, bias="none",
                                                 use_gradient_checkpointing="unsloth")
    else:
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16, attn_implementation="sdpa", device_map={"": 0})
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
        model = get_peft_model(model, LoraConfig(r=args.rank, lora_alpha=args.rank, target_modules=peer_bench.TARGETS, lora_dropout=0.0, task_type="CAUSAL_LM"))
        tokenizer = AutoTokenizer.from_pretrained(path)
    from trl import DPOConfig, DPOTrainer

    steps = args.warmup + args.steps
    data = Dataset.from_list(pair_texts(steps * args.batch, args.seq // 2, args.seq, model.config.vocab_size))
    config = DPOConfig(
        output_dir=os.path.join(args.work_dir, "trl-out"), per_device_train_batch_size=args.batch, max_steps=steps, learning_rate=1e-5,
        lr_scheduler_type="constant", warmup_steps=0, beta=0.1, loss_type=["sigmoid"], bf16=True, gradient_checkpointing=not unsloth,
        gradient_checkpointing_kwargs={"use_reentrant": False}, logging_steps=1, report_to=[], save_strategy="no", max_length=args.seq + 8,
        dataloader_num_workers=0, seed=0,
    )
    timer = timing_callback(args)
    trainer = DPOTrainer(model=model, ref_model=None, args=config, train_dataset=data, processing_class=tokenizer, callbacks=[timer])
    trainer.train()
    timed = timer.step_seconds[args.warmup :]
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    tokens = args.batch * 2 * args.seq * len(timed)
    print("RESULT " + json.dumps(dict(
        stack="unsloth" if unsloth else "trl", tokens_per_s=round(tokens / sum(timed), 1), step_s=round(sum(timed) / len(timed), 4),
        peak_alloc_gib=round(torch.cuda.max_memory_allocated() / 2**30, 2), loss=round(float(losses[-1]), 4) if losses else None,
        losses=[round(float(x), 4) for x in losses], step_s_each=[round(x, 4) for x in timed],
    )), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="llama-1b")
    ap.add_argument("--seq", type=int, default=1024, help="tokens of each sequence (prompt + completion)")
    ap.add_argument("--batch", type=int, default=2, help="pairs per step")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--stacks", default="trl,unsloth")
    ap.add_argument("--timeout", type=int, default=600, help="seconds allowed per stack")
    ap.add_argument("--work-dir", default="bench-dpo", help="where the stacks write (inside the checkout)")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        run_trl(args, unsloth=args.one == "unsloth")
        return

    import peer_bench

    peer_bench.build(args.shape)
    common = ["--shape", args.shape, "--seq", str(args.seq), "--batch", str(args.batch),
              "--steps", str(args.steps), "--warmup", str(args.warmup), "--rank", str(args.rank)]
    rows = []
    for stack in args.stacks.split(","):
        if stack.startswith("cmd:"):
            cmd = [*shlex.split(stack[4:]), *common]
        else:
            cmd = [sys.executable, os.path.abspath(__file__), *common, "--work-dir", args.work_dir, "--one", stack]
        started = time.time()
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
        except subprocess.TimeoutExpired:
            print(f"== {stack} timed out after {args.timeout}s", flush=True)
            rows.append(dict(stack=stack, error="timeout"))
            continue
        results = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        if proc.returncode or not results:
            print(f"== {stack} failed (rc={proc.returncode})\n{proc.stderr[-3000:]}\n{proc.stdout[-1500:]}", flush=True)
            rows.append(dict(stack=stack, error=f"rc={proc.returncode}"))
            continue
        row = json.loads(results[-1][len("RESULT "):])
        row["stack"], row["wall_s"] = ("honed" if stack.startswith("cmd:") else stack), round(time.time() - started, 1)
        print(json.dumps(row), flush=True)
        rows.append(row)
    reference = next((r for r in rows if r.get("stack") == REFERENCE and "error" not in r), None)
    print(f"\n{'stack':14} {'tok/s':>9} {'vs ' + REFERENCE:>11} {'peakGiB':>8} {'loss':>8}")
    for r in rows:
        if "error" in r:
            print(f"{r['stack']:14} FAILED ({r['error']})")
            continue
        ratio = f"{r['tokens_per_s'] / reference['tokens_per_s']:.2f}x" if reference else "-"
        print(f"{r['stack']:14} {r['tokens_per_s']:9.0f} {ratio:>11} {r['peak_alloc_gib']:8.2f} {r['loss'] if r.get('loss') is not None else float('nan'):8.4f}")


if __name__ == "__main__":
    main()
