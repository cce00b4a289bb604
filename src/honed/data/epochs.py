"""What each epoch trains on, and in what order.

`EpochData` is the training loop's only view of its samples: `samples(epoch)` (the same list
every epoch unless a strategy changes it), `order(epoch)` (sample indices in training order,
repeats allowed) and `end_epoch(epoch, scorer)` (called when an epoch is done, with a function
that scores samples, for strategies that react to losses). Its `state_dict` is saved in every
checkpoint, so a resumed run sees exactly the order the uninterrupted run would have.

>>> data = EpochData(["a", "b", "c"], seed=0)
>>> sorted(data.order(0)) == [0, 1, 2] and data.order(0) == data.order(0)
True
"""

from __future__ import annotations

import random

from honed.errors import ConfigError


class EpochData:
    """The default strategy: every sample once per epoch, shuffled by (seed, epoch)."""

    def __init__(self, samples: list, *, seed: int):
        self._samples = samples
        self.seed = seed

    def samples(self, epoch: int) -> list:
        return self._samples

    def order(self, epoch: int) -> list[int]:
        order = list(range(len(self.samples(epoch))))
        random.Random(self.seed * 1_000_003 + epoch).shuffle(order)
        return order

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def end_epoch(self, epoch: int, scorer) -> None:
        """Called by the loop when `epoch` is complete; `scorer(samples)` → per-sample losses.

        The default strategy learns nothing from an epoch and never calls the (costly) scorer.
        """


class ShapedEpochData(EpochData):
    """EpochData with an augmentation recipe and/or the `data.sampling` strategies.

    - `recipe` + mode `on_the_fly`: each epoch's samples are the recipe's draws for (seed, epoch),
      re-tokenized — different per epoch, identical for the same seed; `materialize`: one draw
      (epoch 0) for every epoch.
    - `balance` picks which samples (with repeats) an epoch holds; `hard_mining` gives the highest-
      loss origins of the previous epoch more places; `curriculum` orders them easy → hard.

    Every plan is a function of (seed, epoch, learned losses); the losses are the state_dict.

    >>> from types import SimpleNamespace as S
    >>> toks = [S(input_ids=[1] * n, source=f"f:{n}") for n in (3, 1, 2)]
    >>> from honed.data.strategies import SamplingConfig
    >>> d = ShapedEpochData(toks, seed=0, metas=[{}] * 3,
    ...                     sampling=SamplingConfig.model_validate({"curriculum": {"buckets": 3}}))
    >>> d.order(0)
    [1, 2, 0]
    """

    def __init__(self, samples: list, *, seed: int, metas: list[dict] | None = None, conversations=None,
                 tokenize=None, recipe=None, recipe_seed: int | None = None, mode: str = "on_the_fly",
                 sampling=None, loss_scorer=None):
        super().__init__(samples, seed=seed)
        self.metas = metas if metas is not None else [{} for _ in samples]
        self.conversations, self.tokenize, self.recipe = conversations, tokenize, recipe
        # The recipe's own seed wins (as in `honed data augment`); else the training seed.
        if recipe_seed is None:
            recipe_seed = recipe.seed if recipe is not None and recipe.seed is not None else seed
        self.recipe_seed = recipe_seed
        self.mode, self.sampling, self.loss_scorer = mode, sampling, loss_scorer
        self._cache: tuple | None = None  # (draw epoch, samples, metas, origins): one epoch kept
        self.mined: dict = {}  # {"epoch": e, "loss": {origin: loss}} from the last scoring pass
        self.origin_loss: dict[int, float] | None = None  # curriculum measure=loss, per origin
        self.last_stats = None  # AugmentStats of the latest draw

    # --- what an epoch holds ---------------------------------------------------------------

    def _draw(self, epoch: int) -> tuple[list, list[dict], list[int]]:
        if self.recipe is None:
            return self._samples, self.metas, list(range(len(self._samples)))
        draw_epoch = 0 if self.mode == "materialize" else epoch
        if self._cache is None or self._cache[0] != draw_epoch:
            from honed.data.augment import AugmentStats
            from honed.data.conversation import Conversation

            # Tag each input with its index so every variant knows its origin (hard mining, loss curriculum).
            tagged = [Conversation(c.messages, c.source, {**c.meta, "_origin": i}) for i, c in enumerate(self.conversations)]
            stats = AugmentStats()
            convs = self.recipe.apply(tagged, seed=self.recipe_seed, epoch=draw_epoch, stats=stats)
            samples, metas, origins = [], [], []
            for conv in convs:
                for tok in self.tokenize([conv]):  # one at a time: a skipped sample keeps the others aligned
                    samples.append(tok)
                    metas.append(conv.meta)
                    origins.append(conv.meta["_origin"])
            self._cache, self.last_stats = (draw_epoch, samples, metas, origins), stats
        return self._cache[1:]

    def samples(self, epoch: int) -> list:
        return self._draw(epoch)[0]

    def order(self, epoch: int) -> list[int]:
        from honed.data.strategies.sampling import (balanced_indices, curriculum_order, difficulty_of,
                                                   hard_replays)

        samples, metas, origins = self._draw(epoch)
        s = self.sampling
        indices = list(range(len(samples)))
        if s is not None and s.balance is not None:
            b = s.balance
            indices = balanced_indices([m.get(b.by) for m in metas], b.weights, random.Random(f"{self.seed}/balance/{epoch}"),
                                       size=b.size, sources=[x.source for x in samples], key=b.by)
        hm = s.hard_mining if s is not None else None
        if hm is not None and epoch >= hm.start_epoch and self.mined and self.mined["epoch"] < epoch:
            indices = hard_replays(indices, origins, self.mined["loss"], top_fraction=hm.top_fraction,
                                   factor=hm.factor, keep_size=hm.keep_size)
        cur = s.curriculum if s is not None else None
        if cur is not None and (cur.epochs is None or epoch < cur.epochs):
            if cur.measure == "loss" and self.origin_loss is None:
                self._score_difficulty()
            difficulty = difficulty_of(cur.measure, samples, metas, self.origin_loss, origins)
            return curriculum_order(indices, difficulty, cur.buckets, random.Random(f"{self.seed}/curriculum/{epoch}"))
        random.Random(self.seed * 1_000_003 + epoch).shuffle(indices)  # as EpochData: same seed, same order
        return indices

    def _score_difficulty(self) -> None:
        # Difficulty by loss is a property of the record, so the un-augmented records are scored once.
        if self.recipe is None:  # origins are sample indices
            self.origin_loss = dict(enumerate(self.loss_scorer(self._samples)))
            return
        # With a recipe, origins index the conversations; a record that did not tokenize (skipped)
        # has no sample, so samples are matched to their record one by one.
        origins, toks = [], []
        for i, conv in enumerate(self.conversations):
            for tok in self.tokenize([conv]):
                origins.append(i)
                toks.append(tok)
        self.origin_loss = dict(zip(origins, self.loss_scorer(toks)))

    # --- what it learns --------------------------------------------------------------------

    def end_epoch(self, epoch: int, scorer) -> None:
        """Hard mining: score this epoch's samples and keep the mean loss of each origin."""
        if self.sampling is None or self.sampling.hard_mining is None:
            return
        samples, _, origins = self._draw(epoch)
        per_origin: dict[int, list[float]] = {}
        for o, loss in zip(origins, scorer(samples)):
            per_origin.setdefault(o, []).append(loss)
        self.mined = {"epoch": epoch, "loss": {o: sum(v) / len(v) for o, v in per_origin.items()}}

    def hardest(self, k: int = 10) -> list[tuple[int, float]]:
        """(origin index, loss) of the k highest-loss records of the last scoring pass."""
        return sorted(self.mined.get("loss", {}).items(), key=lambda x: -x[1])[:k]

    def state_dict(self) -> dict:
        # JSON keys are strings: origins are written as str and read back as int.
        return {"mined": {"epoch": self.mined["epoch"], "loss": {str(k): v for k, v in self.mined["loss"].items()}} if self.mined else {},
                "origin_loss": {str(k): v for k, v in self.origin_loss.items()} if self.origin_loss is not None else None}

    def load_state_dict(self, state: dict) -> None:
        mined = state.get("mined") or {}
        self.mined = {"epoch": mined["epoch"], "loss": {int(k): v for k, v in mined["loss"].items()}} if mined else {}
        ol = state.get("origin_loss")
        self.origin_loss = {int(k): v for k, v in ol.items()} if ol is not None else None


def load_recipe(spec, where: str = "data.augment"):
    """A Recipe from `data.augment`: a path to a YAML file, or the recipe itself as a dict/list."""
    from pathlib import Path

    from honed.data.augment import Recipe

    if isinstance(spec, (dict, list)):
        return Recipe.from_config(spec, where)
    if not Path(str(spec)).expanduser().is_file():
        raise ConfigError(f"{where}: recipe file not found: {spec}")
    return Recipe.from_yaml(Path(str(spec)).expanduser())


def make_epoch_data(cfg, conversations, samples: list, tokenizer, template, *, score_with_model=None) -> EpochData:
    """The EpochData a training config asks for: plain, or shaped by `data.augment` / `data.sampling`.

    `conversations` are the training Conversations behind `samples` (as `build_datasets` returns
    them). Plain configs get plain EpochData. `score_with_model(model_cfg, samples)` → per-sample
    losses is what `data.sampling.curriculum.measure: loss` scores difficulty with
    (`honed.train.scoring.score_with_model`; passed in, since running a model is above the data layer).

    >>> train_set, _, _, convs = build_datasets(cfg.data, tokenizer, template, seed)        # doctest: +SKIP
    >>> epoch_data = make_epoch_data(cfg, convs, train_set, tokenizer, template,
    ...                              score_with_model=scoring.score_with_model)              # doctest: +SKIP
    """
    data, seed = cfg.data, cfg.training.seed
    if data.augment is None and data.sampling is None:
        return EpochData(samples, seed=seed)
    from honed.data.dataset import DataReport, tokenize_all

    # Tokenized samples carry their source (file:line); a repeated file maps to the same record.
    meta_of = {c.source: c.meta for c in conversations}
    metas = [meta_of.get(s.source, {}) for s in samples]
    recipe = load_recipe(data.augment) if data.augment is not None else None
    report = DataReport()

    def tokenize(convs):
        return tokenize_all(convs, tokenizer, template, data, report, cfg.model.enable_thinking)

    loss_scorer = None
    cur = data.sampling.curriculum if data.sampling is not None else None
    if cur is not None and cur.measure == "loss":
        if score_with_model is None:
            raise ConfigError("data.sampling.curriculum.measure=loss scores each sample with a model, and none was given: "
                              "pass score_with_model=honed.train.scoring.score_with_model (as `honed train` does)")
        model_cfg = cfg.model if cur.scorer_model is None else cfg.model.model_copy(update={"name_or_path": cur.scorer_model})
        loss_scorer = lambda s: score_with_model(model_cfg, s, device=cfg.training.device)  # noqa: E731
    return ShapedEpochData(samples, seed=seed, metas=metas, conversations=conversations, tokenize=tokenize,
                           recipe=recipe,
                           mode=data.augment_mode, sampling=data.sampling, loss_scorer=loss_scorer)
