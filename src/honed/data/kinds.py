"""What a record's `kind` field says about its domain: one table for every reader of it.

`in_domain` questions must be answered; `out_of_domain` and `near_domain` ones (near-domain: they
sound like the domain but are not) must be refused. `hard_negative` questions are the other side of
that edge: they sound out of scope (coffee, a marathon, a sauna) but belong to the domain, so they
must be answered; they are a split of their own so that `honed eval` reports their false-refusal
rate apart from the plain in-domain one. The other spellings are the ones people use and the kinds
`honed data add-refusals` writes: a `refusal` record answers an out-of-domain question, and a
`clarify` record answers an ambiguous in-domain question with a question.

>>> domain_split("OOD"), domain_split("hard-negative"), domain_split("refusal"), domain_split("other")
('out_of_domain', 'hard_negative', 'out_of_domain', None)
>>> sorted(SHOULD_ANSWER)
['hard_negative', 'in_domain']
"""

from __future__ import annotations

SPLITS = ("in_domain", "out_of_domain", "near_domain", "hard_negative")
SHOULD_REFUSE = frozenset({"out_of_domain", "near_domain"})
SHOULD_ANSWER = frozenset({"in_domain", "hard_negative"})
_ALIASES = {"in": "in_domain", "id": "in_domain", "ood": "out_of_domain", "out": "out_of_domain",
            "near": "near_domain", "near_ood": "near_domain", "refusal": "out_of_domain",
            "clarify": "in_domain"}


def domain_split(kind) -> str | None:
    """The split a `kind` value names (one of SPLITS), or None when it names none."""
    if kind is None:
        return None
    name = str(kind).strip().lower().replace("-", "_")
    name = _ALIASES.get(name, name)
    return name if name in SPLITS else None
