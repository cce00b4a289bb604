"""`honed bench` as a library: model shapes, real-data lengths, timing, RESULT fields, and the run
(`run_bench`), which trains with `honed train`'s own set-up parts and `train_step`.

>>> from honed.bench.shapes import SHAPES
>>> SHAPES["llama-1b"]["hidden_size"]
2048
"""
