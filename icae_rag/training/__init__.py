"""Training: configs, samples per objective, losses and a resumable accelerate trainer."""
