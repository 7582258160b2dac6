"""Cross-framework benchmarks of se-flax: SE block and SE-ResNets, JAX vs PyTorch.

Run ``python -m benchmarks --help``. Results: ``benchmarks/results/``.
"""
