from honed.data.packing import collate_packed, collate_padded, plan_batches
from honed.data.tokenize import TokenizedSample


def sample(n, start=1):
    ids = list(range(start, start + n))
    return TokenizedSample(ids, ids[:], f"s{start}", False, n)


def test_plan_is_seeded_and_covers_every_sample_once():
    lengths = [5, 9, 3, 7, 2, 8, 6]
    a = plan_batches(lengths, batch_size=1, max_seq_length=12, packing=True, seed=1, epoch=0)
    assert a == plan_batches(lengths, batch_size=1, max_seq_length=12, packing=True, seed=1, epoch=0)
    assert a != plan_batches(lengths, batch_size=1, max_seq_length=12, packing=True, seed=1, epoch=1)
    assert sorted(i for b in a for i in b) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in b) <= 12 for b in a)


def test_unpacked_plan_has_batch_size_samples():
    plan = plan_batches([1] * 10, batch_size=4, max_seq_length=8, packing=False, seed=0, epoch=0)
    assert [len(b) for b in plan] == [4, 4, 2]


def test_packed_row_restarts_positions_and_masks_first_labels():
    batch = collate_packed([sample(3, 1), sample(2, 10)])
    assert batch["input_ids"].tolist() == [[1, 2, 3, 10, 11]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1]]
    assert batch["labels"].tolist() == [[-100, 2, 3, -100, 11]]
    assert batch["sample_index"].tolist() == [[0, 0, 0, 1, 1]]


def test_padded_batch():
    batch = collate_padded([sample(3), sample(1, 7)], pad_id=0)
    assert batch["input_ids"].tolist() == [[1, 2, 3], [7, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[1, 2, 3], [7, -100, -100]]
