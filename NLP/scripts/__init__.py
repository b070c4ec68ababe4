"""Command-line entry points: train_teacher.py, distill.py, predict.py (run with `python -m <package>.scripts.<name>`)."""
