"""Benchmarks anyone can rerun: ``scripts/benchmark.py`` (see :mod:`sam2_triton.bench.cli`).

* :mod:`~sam2_triton.bench.stats`: closed-loop timing with N concurrent workers, p50/p90/p99.
* :mod:`~sam2_triton.bench.inputs`: seeded inputs of the contract's shapes, rotated.
* :mod:`~sam2_triton.bench.ort`: in-process ONNX Runtime (CPU, CUDA EP with or without
  I/O binding), Memcpy counts of the optimized graph, device memory.
* :mod:`~sam2_triton.bench.torch_eager`: PyTorch eager (FP32, FP16 autocast) and Meta's
  ``SAM2ImagePredictor``.
* :mod:`~sam2_triton.bench.triton`: a running Triton over HTTP/gRPC, optionally with
  system shared memory.
* :mod:`~sam2_triton.bench.suite` runs the cases; :mod:`~sam2_triton.bench.report` writes
  ``results.json``, ``results.md`` and ``latency_vs_concurrency.png``.
"""

from sam2_triton.bench.stats import LatencyStats, closed_loop, summarize

__all__ = ["LatencyStats", "closed_loop", "summarize"]
