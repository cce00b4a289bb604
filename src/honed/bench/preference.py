"""`honed bench --objective dpo|orpo|simpo|kto`: random preference micro-batches of the bench's shape.

Each pair is two sequences of `seq` tokens sharing their first `seq // 2` (the prompt); the rest
(the answer, every token scored) differs. A micro-batch holds `batch` pairs, so it carries
2 × batch × seq tokens, laid out as `honed train` lays them (`honed.data.preference_batch`: one row
per pair, or one padding-free row where the path takes varlen input). The seeds are fixed, so every
run (and every stack given the same recipe) sees the same tokens.

>>> batches = random_pair_batches(vocab_size=100, first_token_id=4, seq=8, batch=2, n_batches=1, pad_id=0, padding_free=False)
>>> batches[0]["input_ids"].shape, batches[0]["sample_index"].max().item()
(torch.Size([2, 16]), 3)
"""

from __future__ import annotations

import torch

from honed.data.preference_batch import TokenizedKTO, TokenizedPair, collate_pairs
from honed.data.tokenize import IGNORE_INDEX, TokenizedSample

PAIR_SEED = 1234


def random_pairs(*, vocab_size: int, first_token_id: int, seq: int, n: int, kto: bool = False, seed: int = PAIR_SEED) -> list:
    """`n` random pairs (or KTO items, alternately desirable) of two `seq`-token sequences sharing a `seq // 2` prompt."""
    g = torch.Generator().manual_seed(seed)
    prompt_len = seq // 2
    items = []
    for k in range(n):
        prompt = torch.randint(first_token_id, vocab_size, (prompt_len,), generator=g).tolist()
        answers = torch.randint(first_token_id, vocab_size, (2, seq - prompt_len), generator=g).tolist()
        a, b = (TokenizedSample(prompt + ans, [IGNORE_INDEX] * prompt_len + ans, f"bench:{k}", False, len(ans)) for ans in answers)
        items.append(TokenizedKTO(a, b, k % 2 == 0, f"bench:{k}") if kto else TokenizedPair(a, b, f"bench:{k}"))
    return items


def random_pair_batches(*, vocab_size: int, first_token_id: int, seq: int, batch: int, n_batches: int, pad_id: int,
                        padding_free: bool, kto: bool = False) -> list[dict[str, torch.Tensor]]:
    """`n_batches` collated micro-batches of `batch` pairs each."""
    items = random_pairs(vocab_size=vocab_size, first_token_id=first_token_id, seq=seq, n=batch * n_batches, kto=kto)
    return [collate_pairs([[x] for x in items[i * batch : (i + 1) * batch]], pad_id=pad_id, packing=True, padding_free=padding_free)
            for i in range(n_batches)]
