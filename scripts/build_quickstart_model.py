"""Build the tiny base model that ships inside the package for `honed quickstart`.

    python scripts/build_quickstart_model.py [--out src/honed/resources/tiny_base] [--steps 600]

A random model cannot be taught a domain in the minutes the quickstart has, so this script gives
it a base worth adapting: a Qwen2-architecture model (ChatML template) with a byte-level BPE
tokenizer trained on the sample data, pre-trained as a plain language model on the *raw text*
of the sample data (questions and answers as prose, no chat template, no system prompt). It
knows the words; it does not know the chat format, the scope, or when to refuse — that is what
the quickstart's LoRA step teaches. Deterministic for a given seed; takes a few minutes on CPU.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch

from honed.data.packing import collate_packed
from honed.data.tokenize import TokenizedSample
from honed.testing.tiny import build_tiny_model, train_tokenizer

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "src/honed/resources/sample_data"


def corpus() -> list[str]:
    texts = []
    for name in ("clinical_lab_train.jsonl", "clinical_lab_eval.jsonl"):
        for line in (DATA / name).read_text(encoding="utf-8").splitlines():
            msgs = json.loads(line)["messages"]
            texts.append("\n".join(m["content"] for m in msgs))
    return texts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "src/honed/resources/tiny_base"))
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=3000)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    random.seed(args.seed)
    torch.manual_seed(args.seed)
    texts = corpus()
    system_prompt = (DATA / "system_prompt.txt").read_text(encoding="utf-8")
    tokenizer = train_tokenizer(texts + [system_prompt], family="qwen2", vocab_size=args.vocab)
    out = build_tiny_model("qwen2", args.out, hidden_size=args.hidden, layers=args.layers, seed=args.seed, tokenizer=tokenizer)

    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(out)
    eos = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    docs = [TokenizedSample(ids := tokenizer.encode(t, add_special_tokens=False) + [eos], ids, "corpus", False, len(ids)) for t in texts]
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.steps, pct_start=0.05)
    model.train()
    start = time.time()
    for step in range(args.steps):
        batch = collate_packed([random.sample(docs, 16)], padding_free=True)
        logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
        loss = torch.nn.functional.cross_entropy(logits[0, :-1], batch["labels"][0, 1:], ignore_index=-100)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if step % 50 == 0 or step == args.steps - 1:
            print(f"step {step:4d}  loss {loss.item():.3f}  {time.time() - start:.0f}s", flush=True)
    model.to(torch.bfloat16).save_pretrained(out)  # bf16 halves the package size; loads as fp32 on CPU
    size = sum(f.stat().st_size for f in Path(out).iterdir()) / 2**20
    print(f"wrote {out} ({size:.1f} MiB)")


if __name__ == "__main__":
    main()
