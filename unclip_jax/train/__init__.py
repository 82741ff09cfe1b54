"""Training: per-stage losses and per-device steps, parallel wrappers, train state and checkpoints."""
