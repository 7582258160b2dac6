"""Cross-framework benchmarks of se-flax: SE and SK blocks, SE-/SK-ResNets, JAX vs PyTorch.

Run ``python -m benchmarks --help``. Results: ``benchmarks/results/``.
"""
