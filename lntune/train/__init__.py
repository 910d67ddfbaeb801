"""Training: one loop for every method (lntune.train.trainer.train)."""
