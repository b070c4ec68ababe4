"""The distillation data of this domain: states visited in the environment (no files, no
hub). `replay.py` holds the replay buffer, the β-mixing collector and the loop's batches."""
