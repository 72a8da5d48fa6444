"""Loss objects with the same forward/backward protocol as layers."""
from __future__ import annotations

from .. import functional as F

__all__ = ["SoftmaxCrossEntropy"]


class SoftmaxCrossEntropy:
    """Mean softmax cross-entropy: ``forward(logits (N, classes), labels (N,))`` -> 0-d loss
    array; ``backward()`` -> dloss/dlogits (N, classes) of the last forward."""

    def __init__(self) -> None:
        self._dlogits = None

    def forward(self, logits, labels):
        loss, self._dlogits = F.softmax_cross_entropy(logits, labels)
        return loss

    __call__ = forward

    def backward(self):
        if self._dlogits is None:
            raise RuntimeError("SoftmaxCrossEntropy.backward called before forward")
        return self._dlogits

    def __repr__(self) -> str:
        return "SoftmaxCrossEntropy()"
