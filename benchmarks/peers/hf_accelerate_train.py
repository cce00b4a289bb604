"""The peer of benchmarks/scaling.py: HF Trainer (accelerate underneath) on the same shapes, under torchrun.

    torchrun --standalone --nproc-per-node N benchmarks/peers/hf_accelerate_train.py --model DIR \\
        --workload lora|qlora|full --strategy ddp|fsdp [--offload] --seq 2048 --batch 2 --steps 8 --warmup 2

The model is the random-init folder honed's side trains (honed.bench.shapes.build_shape); the data is
random tokens, `--batch` rows of `--seq` a rank a step, every row a full row as on honed's side. The
Trainer runs `--warmup + --steps` optimizer steps with AdamW (lr 1e-4, weight decay 0.01, constant
schedule, clipping at 1.0), bf16; Trainer hands the process group, DDP and FSDP to accelerate:
  lora/qlora  peft LoRA r=16, alpha 16 on the seven projections; qlora: bitsandbytes NF4 base
              (bf16 compute, double quantization), one whole model per rank, DDP
  full        every weight trains; FSDP2 (accelerate's plugin, fsdp_version 2) wrapping each decoder
              layer, activation checkpointing, `--offload`: parameters, gradients and optimizer
              state in host memory (accelerate's cpu_offload)
A callback times each optimizer step (CUDA synchronised at its ends) and restarts the peak-memory
counter after the warm-up steps, as honed's side does. Rank 0 prints one line
`RESULT {json}`: tokens/s over the timed steps (all ranks), per GPU, every rank's peak allocated GiB
(gathered), the losses; benchmarks/scaling_report.parse_result_line reads it.
"""

from __future__ import annotations

import argparse
import json
import os
import time

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--workload", choices=("lora", "qlora", "full"), required=True)
    p.add_argument("--strategy", choices=("ddp", "fsdp"), default="ddp")
    p.add_argument("--offload", action="store_true", help="fsdp: parameters and optimizer state in host memory")
    p.add_argument("--seq", type=int, default=2048)
    p.add_argument("--batch", type=int, default=2, help="rows per rank per step")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--activation-checkpointing", choices=("auto", "on", "off"), default="auto",
                   help="auto: on for full fine-tuning only (LoRA of these shapes fits an H200 without it)")
    return p.parse_args(argv)


class RandomRows:
    """`n` rows of `seq` random token ids, seeded: the same rows in every run, each rank its share."""

    def __init__(self, n: int, seq: int, vocab: int, seed: int = 0):
        import torch

        g = torch.Generator().manual_seed(seed)
        self.rows = torch.randint(4, vocab, (n, seq), generator=g)

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return {"input_ids": self.rows[i], "labels": self.rows[i]}


def fsdp_argument_forms(args, layer_class: str) -> list[dict]:
    """TrainingArguments' FSDP settings, in the forms transformers has taken: `fsdp=True` with
    fsdp_config keys (version, cpu_offload, activation_checkpointing; transformers ≥ 5.x's form), then
    the older option string "full_shard auto_wrap [offload]". The first that TrainingArguments
    accepts is used (main), so the script runs on the GPU machine's transformers and on newer ones."""
    checkpointing = args.activation_checkpointing != "off"
    new = {"fsdp": True, "fsdp_config": {"version": 2, "cpu_offload": args.offload, "activation_checkpointing": checkpointing,
                                         "reshard_after_forward": True, "transformer_layer_cls_to_wrap": [layer_class]}}
    old = {"fsdp": "full_shard auto_wrap" + (" offload" if args.offload else ""),
           "fsdp_config": {"fsdp_version": 2, "transformer_layer_cls_to_wrap": [layer_class], "activation_checkpointing": checkpointing,
                           "reshard_after_forward": True}}
    return [new, old]


def training_arguments(common: dict, forms: list[dict]):
    """TrainingArguments of `common` plus the first of `forms` it accepts (all of them tried, the last error raised)."""
    from transformers import TrainingArguments

    error = None
    for extra in forms or [{}]:
        try:
            return TrainingArguments(**common, **extra)
        except (TypeError, ValueError) as err:
            error = err
    raise error


def build_model(args, local_rank: int):
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    kwargs = {"dtype": torch.bfloat16, "attn_implementation": "sdpa"}
    if args.workload == "qlora":
        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                                           bnb_4bit_compute_dtype=torch.bfloat16)
    if args.strategy == "ddp" and torch.cuda.is_available():
        kwargs["device_map"] = {"": local_rank}
    model = AutoModelForCausalLM.from_pretrained(args.model, **kwargs)
    if args.workload == "full":
        return model
    from peft import LoraConfig, get_peft_model

    if args.workload == "qlora":
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=args.activation_checkpointing == "on")
    return get_peft_model(model, LoraConfig(r=16, lora_alpha=16, lora_dropout=0.0, target_modules=TARGETS, task_type="CAUSAL_LM"))


def step_timer(warmup: int):
    """A TrainerCallback that records each optimizer step's seconds and the logged losses; the
    peak-memory counter starts again after `warmup` steps (model loading is not training memory)."""
    import torch
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.seconds, self.losses, self._t = [], [], None

        def on_step_begin(self, args, state, control, **kw):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self._t = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.seconds.append(time.perf_counter() - self._t)
            if len(self.seconds) == warmup and torch.cuda.is_available():
                torch.cuda.reset_peak_memory_stats()

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                self.losses.append(round(float(logs["loss"]), 5))

    return StepTimer()


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch
    import torch.distributed as dist
    from transformers import Trainer

    local_rank, world = int(os.environ.get("LOCAL_RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(local_rank)
    model = build_model(args, local_rank)
    layer_class = type(model.get_decoder().layers[0]).__name__ if args.workload == "full" else None
    checkpointing = args.activation_checkpointing == "on" or (args.activation_checkpointing == "auto" and args.workload == "full")
    args.activation_checkpointing = "on" if checkpointing else "off"
    total = args.warmup + args.steps
    forms = fsdp_argument_forms(args, layer_class) if args.strategy == "fsdp" else []
    training = training_arguments(dict(
        output_dir=os.environ.get("TMPDIR", "/tmp") + f"/hf_accelerate_peer_{os.getpid()}", per_device_train_batch_size=args.batch,
        gradient_accumulation_steps=1, max_steps=total, learning_rate=1e-4, weight_decay=0.01, lr_scheduler_type="constant",
        warmup_steps=0, max_grad_norm=1.0, bf16=cuda, optim="adamw_torch", logging_steps=1, save_strategy="no", report_to=[],
        dataloader_num_workers=0, seed=0, use_cpu=not cuda, ddp_find_unused_parameters=False, disable_tqdm=True,
        gradient_checkpointing=checkpointing and args.strategy != "fsdp",  # FSDP checkpoints through fsdp_config
    ), forms)
    data = RandomRows(total * args.batch * world, args.seq, model.config.vocab_size)
    timer = step_timer(args.warmup)
    trainer = Trainer(model=model, args=training, train_dataset=data, callbacks=[timer])
    trainer.train()
    peak = round(torch.cuda.max_memory_allocated() / 2**30, 3) if cuda else None
    peaks = [peak]
    if dist.is_available() and dist.is_initialized():
        peaks = [None] * dist.get_world_size()
        dist.all_gather_object(peaks, peak)
    if int(os.environ.get("RANK", 0)) == 0:
        timed = timer.seconds[args.warmup:]
        tokens = len(timed) * args.batch * args.seq * world
        tps = tokens / sum(timed)
        print("RESULT " + json.dumps({
            "stack": "hf-accelerate", "world": world, "tokens_per_s": round(tps, 1), "tokens_per_s_per_gpu": round(tps / world, 1),
            "timed_steps": len(timed), "step_s": round(sum(timed) / len(timed), 4), "step_s_each": [round(s, 6) for s in timed],
            "peak_alloc_gib_per_rank": peaks, "losses": timer.losses, "activation_checkpointing": checkpointing,
            "fsdp": bool(getattr(trainer, "is_fsdp_enabled", False)), "fsdp_cpu_offload": args.offload if args.strategy == "fsdp" else None,
            "transformers": __import__("transformers").__version__, "accelerate": __import__("accelerate").__version__,
        }), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
