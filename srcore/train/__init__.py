"""Training: one loop for teacher training and distillation, wired to Ray Train."""
