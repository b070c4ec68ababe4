"""Reinforcement learning: PPO teacher -> compact policy by policy distillation (importable as `reinforcement_learning`)."""
