"""Shared pieces of every domain: losses, metrics, the training loop and its callbacks,
checkpoints, the results format and the data-fetch step.

Submodules: :mod:`common.losses`, :mod:`common.metrics`, :mod:`common.training`,
:mod:`common.callbacks`, :mod:`common.checkpoint`, :mod:`common.results`,
:mod:`common.fetch`, :mod:`common.errors`.
"""
