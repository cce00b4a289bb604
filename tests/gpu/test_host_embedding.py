"""training.embeddings_on_host on the GPU (engine.host_embedding): the kernel that reads rows of a
pinned host table against F.embedding on the GPU, bit for bit, and the fused path training with its
table in host memory against the same path with the table on the GPU. Run on the GPU machine with
`pytest -m gpu tests/gpu/test_host_embedding.py`."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def host_table(rows, columns, dtype):
    g = torch.Generator().manual_seed(rows + columns)
    table = torch.randn(rows, columns, generator=g).to(dtype)
    return table.pin_memory(), table.cuda()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize(("columns", "ids_shape"), [(4096, (2, 2048)), (896, (1, 1)), (4097, (3, 77)), (1000, (1, 5000))])
def test_rows_read_from_host_memory_are_the_rows_on_the_gpu(dtype, columns, ids_shape):
    from honed.engine.host_embedding import gather_rows

    rows = 3001
    host, gpu = host_table(rows, columns, dtype)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, rows, ids_shape, generator=g).cuda()
    ids.view(-1)[-1] = rows - 1  # the last row: no read past it
    for kind in (torch.int64, torch.int32):
        got = gather_rows(host, ids.to(kind))
        assert got.is_cuda and got.dtype == dtype and got.shape == (*ids_shape, columns)
        assert torch.equal(got, F.embedding(ids, gpu))


def test_the_read_replays_in_a_cuda_graph_with_new_ids():
    from honed.engine.host_embedding import gather_rows

    host, gpu = host_table(5000, 512, torch.bfloat16)
    ids = torch.randint(0, 5000, (2, 300), device="cuda")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        gather_rows(host, ids)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = gather_rows(host, ids)
    ids.copy_(torch.randint(0, 5000, (2, 300), device="cuda"))
    graph.replay()
    assert torch.equal(out, F.embedding(ids, gpu))


def test_an_id_past_the_table_reads_zeros_not_host_memory():
    from honed.engine.host_embedding import gather_rows

    host, gpu = host_table(10, 64, torch.bfloat16)
    got = gather_rows(host, torch.tensor([[3, 10, 1 << 40, -1]], device="cuda"))
    assert torch.equal(got[0, 0], gpu[3]) and not got[0, 1:].any()


def train(folder, steps, *, on_host: bool, memory: str, quantized: bool = False, cuda_graphs: bool = False):
    from honed.engine.fused import FusedPath, causal_lm_of
    from honed.engine.settings import resolve_engine_settings
    from honed.testing.lora import lora_model, path_config, train_path_steps

    torch.manual_seed(0)
    if quantized:  # QLoRA as honed train loads it: NF4 bases, peft's k-bit preparation (fp32 embeddings, restored to bf16)
        from honed.config import LoraSettings, ModelConfig, QuantizationSettings
        from honed.model.adapters import apply_lora
        from honed.model.load import load_model

        model, _ = load_model(ModelConfig(name_or_path=str(folder)), device=torch.device("cuda"), quantization=QuantizationSettings())
        model = apply_lora(model, LoraSettings(r=8, alpha=16), quantized=True)
    else:
        model = lora_model(folder, dtype=torch.bfloat16, r=8, alpha=16, b_std=0.02, device="cuda", attn_implementation="sdpa")
    torch.manual_seed(0)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.02)
    path = FusedPath(resolve_engine_settings(path_config(folder, memory=memory, embeddings_on_host=on_host, cuda_graphs=cuda_graphs), torch.device("cuda")))
    torch.cuda.empty_cache()
    before = torch.cuda.memory_allocated()
    model = path.prepare(model)
    freed = before - torch.cuda.memory_allocated()
    table = causal_lm_of(model).get_input_embeddings().weight
    assert path.embeddings_on_host is on_host and (table.device.type == "cpu") is on_host
    losses, weights = train_path_steps(path, model, steps, lr=1e-3, autocast_dtype=torch.bfloat16)
    return losses, weights, freed, table.numel() * table.element_size()


@pytest.mark.parametrize(("family", "memory", "quantized", "cuda_graphs"), [
    ("llama3", "offload", False, False),
    ("mistral", "checkpoint", False, False),
    ("llama3", "offload", True, False),
    ("llama3", "offload", False, True),
])
def test_the_fused_path_trains_the_same_with_its_table_in_host_memory(tmp_path_factory, family, memory, quantized, cuda_graphs):
    from honed.testing import build_tiny_model

    folder = build_tiny_model(family, tmp_path_factory.mktemp(family), hidden_size=256, layers=3, dtype="bfloat16")
    g = torch.Generator().manual_seed(11)
    steps = []
    for _ in range(4):
        ids = torch.randint(5, 1000, (2, 256), generator=g).cuda()
        labels = ids.clone()
        labels[:, :40] = -100
        steps.append([{"input_ids": ids, "labels": labels, "position_ids": torch.cat([torch.arange(100), torch.arange(156)]).expand(2, -1).cuda()}])
    kept_losses, kept, kept_freed, _ = train(folder, steps, on_host=False, memory=memory, quantized=quantized, cuda_graphs=cuda_graphs)
    losses, weights, freed, table_bytes = train(folder, steps, on_host=True, memory=memory, quantized=quantized, cuda_graphs=cuda_graphs)
    assert freed - kept_freed == table_bytes  # the table left the GPU, nothing else moved
    assert losses == pytest.approx(kept_losses, rel=1e-3)
    for k in kept:
        assert torch.allclose(weights[k], kept[k], rtol=1e-2, atol=1e-5), k
