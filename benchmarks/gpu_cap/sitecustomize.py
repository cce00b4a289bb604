# Bench harness only: with BENCH_GPU_CAP_GIB set, every Python process started by the benchmark caps
# its CUDA caching allocator at that many GiB (standing in for a smaller card), the same for every stack.
import os

_cap = os.environ.get("BENCH_GPU_CAP_GIB")
if _cap:
    import torch

    _total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, float(_cap) * 2**30 / _total))
