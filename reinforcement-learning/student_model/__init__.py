"""Compact student policies: `policy.py` (a small tanh MLP, categorical or Gaussian head)."""
