"""MVP-SEG+'s training: the learned prompts teach a student network (pseudo-labels, then self-training).

The student itself is a model like the others (:mod:`mvpseg.student`, :mod:`mvpseg.backbones`): loading one
for inference imports nothing from here.

- :mod:`mvpseg.transfer.pseudo`: the pseudo-label rule, and pseudo-label maps written once for a training set.
- :mod:`mvpseg.transfer.loop`: :func:`transfer`, the training loop, and :class:`TransferStep`, what each step did.

Names are imported on first use: ``mvpseg.transfer.pseudo`` does not bring in the training loop.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .loop import TransferStep, transfer
    from .pseudo import UNSEEN, VOID, assign_unseen, pseudo_label_dataset, write_pseudo_labels

#: Public name -> the module that defines it.
_EXPORTS = {"UNSEEN": "pseudo", "VOID": "pseudo", "assign_unseen": "pseudo", "pseudo_label_dataset": "pseudo",
            "TransferStep": "loop", "transfer": "loop", "write_pseudo_labels": "pseudo"}

__all__ = ["UNSEEN", "VOID", "TransferStep", "assign_unseen", "pseudo_label_dataset", "transfer",
           "write_pseudo_labels"]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'mvpseg.transfer' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
