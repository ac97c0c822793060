"""The training engine: process groups, checkpoints, run directories, the trainer loop."""
