"""Training-time transforms: datasets (data.py), distillation loop (distill.py), accuracy recovery after
activation swaps (recover.py). See docs/finetune.md."""
