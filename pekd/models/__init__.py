"""Backbones for teachers and students: the CRD/RepDistiller CIFAR zoo and ImageNet ResNets / MobileNet-V1.

Every model's `forward(x)` returns `(pooled_feature [B, feature_dim], logits [B, num_classes])`: feature
distillation needs the penultimate feature, and returning it with the logits avoids hooks.
"""

from pekd.models.loading import load_student, load_weights, read_weights
from pekd.models.registry import MODEL_NAMES, build_model, feature_dim, list_models

__all__ = ["MODEL_NAMES", "build_model", "feature_dim", "list_models", "load_student", "load_weights", "read_weights"]
