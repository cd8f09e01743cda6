"""Training: state and step, the run engine, checkpoints cadence, placement on the device mesh."""
