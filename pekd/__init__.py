"""pekd: distributed training jobs for projector-ensemble feature distillation (PEFD, NeurIPS 2022)."""

__version__ = "0.1.0"
