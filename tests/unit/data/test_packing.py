from honed.data.epochs import EpochData
from honed.data.packing import collate_packed, collate_padded, plan_batches
from honed.data.tokenize import TokenizedSample


def sample(n, start=1):
    ids = list(range(start, start + n))
    return TokenizedSample(ids, ids[:], f"s{start}", False, n)


def test_plan_is_seeded_and_covers_every_sample_once():
    lengths = [5, 9, 3, 7, 2, 8, 6]
    data = EpochData(lengths, seed=1)
    a = plan_batches(lengths, batch_size=2, max_seq_length=12, packing=True, order=data.order(0))
    assert a == plan_batches(lengths, batch_size=2, max_seq_length=12, packing=True, order=data.order(0))
    assert a != plan_batches(lengths, batch_size=2, max_seq_length=12, packing=True, order=data.order(1))
    rows = [row for batch in a for row in batch]
    assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in row) <= 12 for row in rows)
    assert all(len(batch) <= 2 for batch in a)
    assert len(rows) < len(lengths)  # packing put several samples in some row


def test_unpacked_plan_has_batch_size_samples():
    plan = plan_batches([1] * 10, batch_size=4, max_seq_length=8, packing=False)
    assert [len(b) for b in plan] == [4, 4, 2] and all(len(row) == 1 for b in plan for row in b)


def test_packed_row_restarts_positions_and_masks_first_labels():
    batch = collate_packed([[sample(3, 1), sample(2, 10)]])
    assert batch["input_ids"].tolist() == [[1, 2, 3, 10, 11]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1]]
    assert batch["labels"].tolist() == [[-100, 2, 3, -100, 11]]
    assert batch["sample_index"].tolist() == [[0, 0, 0, 1, 1]]


def test_packed_rows_pad_as_their_own_segment_and_padding_free_joins_them():
    rows = [[sample(3, 1), sample(2, 10)], [sample(2, 20)]]
    batch = collate_packed(rows, pad_id=0)
    assert batch["input_ids"].tolist() == [[1, 2, 3, 10, 11], [20, 21, 0, 0, 0]]
    assert batch["position_ids"].tolist()[1] == [0, 1, 0, 1, 2]  # padding restarts: attends only to itself
    assert batch["labels"].tolist()[1] == [-100, 21, -100, -100, -100]
    assert batch["sample_index"].tolist()[1] == [2, 2, -1, -1, -1]
    flat = collate_packed(rows, padding_free=True)
    assert flat["input_ids"].tolist() == [[1, 2, 3, 10, 11, 20, 21]]
    assert flat["position_ids"].tolist() == [[0, 1, 2, 0, 1, 0, 1]]


def test_padded_batch():
    batch = collate_padded([sample(3), sample(1, 7)], pad_id=0)
    assert batch["input_ids"].tolist() == [[1, 2, 3], [7, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[1, 2, 3], [7, -100, -100]]
