"""Training: splits, sampling, augmentation, loss and the trainer."""
