"""CE only: the student trained on labels (also how the demo trains its teacher)."""

from pekd.methods.base import Method
from pekd.methods.registry import register


@register("ce")
class CrossEntropy(Method):
    """Cross-entropy, plus Hinton KD only if kd_weight > 0 is set explicitly."""
