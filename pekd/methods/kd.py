"""Hinton KD (T = 4 by default): the logit baseline the paper compares against."""

from pekd.errors import PekdError
from pekd.methods.base import Method
from pekd.methods.registry import register


@register("kd")
class HintonKD(Method):
    """ce_weight * CE + kd_weight * T^2 KL(teacher_T || student_T)."""

    def __init__(self, ce_weight: float, kd_weight: float, temperature: float, label_smoothing: float = 0.0) -> None:
        if kd_weight <= 0:
            raise PekdError(f"method.name=kd with method.kd_weight={kd_weight}: set a positive KD weight "
                            "(configs/method/kd.yaml uses RepDistiller's 0.9 with ce_weight 0.1)")
        super().__init__(ce_weight, kd_weight, temperature, label_smoothing)
