"""Reinforcement learning: PPO teacher -> compact policy by policy distillation (importable as
`reinforcement_learning`).

Modules: `envs` (checked environments, seeded evaluation), `normalization` (VecNormalize
statistics in numpy/torch), `pipeline` (the shared loop's adapter, distillation runs, the PPO
baseline), `model_io` (students as safetensors + config.json, `StudentPolicy.predict` without
SB3, `SB3Predictor` for `evaluate_policy`).
"""
