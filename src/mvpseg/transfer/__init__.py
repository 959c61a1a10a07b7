"""MVP-SEG+: knowledge transfer from the learned prompts to a DeepLab student (pseudo-labels, then self-training).

- :mod:`mvpseg.transfer.backbones`: the student's dilated ResNet (torchvision's, or the CLIP's own trunk).
- :mod:`mvpseg.transfer.student`: :class:`Student`, DeepLabv2 / DeepLabv3+ decoders, the open-vocabulary classifier.
- :mod:`mvpseg.transfer.pseudo`: the pseudo-label rule, and pseudo-label maps written once for a training set.
- :mod:`mvpseg.transfer.loop`: :func:`transfer`, the training loop.
"""

from .loop import transfer
from .pseudo import UNSEEN, VOID, assign_unseen, pseudo_label_dataset, write_pseudo_labels
from .student import Student

__all__ = ["Student", "UNSEEN", "VOID", "assign_unseen", "pseudo_label_dataset", "transfer", "write_pseudo_labels"]
