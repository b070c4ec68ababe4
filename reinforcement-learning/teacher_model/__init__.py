"""PPO teachers (stable-baselines3 MlpPolicy): `hyperparams.py` is the per-environment table,
`ppo.py` trains, saves, loads and wraps them for distillation."""
