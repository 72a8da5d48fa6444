"""Loss objects with the same forward/backward protocol as layers."""
from __future__ import annotations

from .. import functional as F
from ..geometry import check_real

__all__ = ["SoftmaxCrossEntropy"]


class SoftmaxCrossEntropy:
    """Mean softmax cross-entropy: ``forward(logits (N, classes), labels (N,))`` -> 0-d loss
    array; ``backward()`` -> dloss/dlogits (N, classes) of the last forward. ``label_smoothing``
    as in PyTorch's CrossEntropyLoss."""

    def __init__(self, label_smoothing: float = 0.0) -> None:
        self.label_smoothing = check_real("label_smoothing", label_smoothing, 0.0, 1.0)
        self._dlogits = None

    def forward(self, logits, labels, labels_checked: bool = False):
        """The mean loss; ``labels_checked``: see ``functional.softmax_cross_entropy``."""
        loss, self._dlogits = F.softmax_cross_entropy(logits, labels, self.label_smoothing,
                                                      labels_checked=labels_checked)
        return loss

    __call__ = forward

    def backward(self):
        if self._dlogits is None:
            raise RuntimeError("SoftmaxCrossEntropy.backward called before forward")
        return self._dlogits

    def __repr__(self) -> str:
        return (f"SoftmaxCrossEntropy(label_smoothing={self.label_smoothing})" if self.label_smoothing
                else "SoftmaxCrossEntropy()")
