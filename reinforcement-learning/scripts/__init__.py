"""Command-line entry points: train_teacher.py, distill.py, play.py (run with `python -m reinforcement_learning.scripts.<name>`)."""
