"""Vocabularies as users write them: classes with synonyms, from Python, text and files.

A class is one name or several (its synonyms, e.g. "tv monitor", "television", "screen"); the first
name is the one shown. Every name is scored and each class takes the best of its names, as SCLIP,
ClearCLIP and ODISE do: the maximum over its names of the fused logits, of GPR's presence logits
and of each prompt's map (:func:`max_over_names`). Everything downstream (labels, scores, overlays)
then sees one entry per class.

Written forms:

- Python: ``["cat", ("tv monitor", "television"), ["dog"]]``: a string is a class of one name,
  a tuple or list is a class's names.
- Text (``--classes``, the web page): classes separated by ``,``, a class's names by ``|``:
  ``"tv monitor|television, cat"``.
- Files (``--classes-file``, and text of several lines on the web page): one class per line, its names separated by ``,`` (SCLIP's
  ``cls_*.txt`` files load as they are) or ``|``; ``#`` starts a comment, blank lines are skipped.
  A file holding a single class line reads like ``--classes`` text (``cat, dog`` is two classes,
  as before synonyms existed); give a one-class file's synonyms with ``|``.

This module imports no torch until :func:`max_over_names` runs.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

__all__ = ["ClassNames", "Vocabulary", "VocabularyWarning", "background_threshold_problem", "max_over_names",
           "parse_class_lines", "parse_classes", "read_classes_file"]

#: One class: a name, or its names (display name first).
ClassNames = str | Sequence[str]

#: Separates classes in text.
CLASS_SEPARATOR = ","
#: Separates a class's names in text and files.
NAME_SEPARATOR = "|"


def background_threshold_problem(threshold: float | None, background: ClassNames | None) -> str | None:
    """What is wrong with a background threshold (None: nothing, or no threshold): the one rule that Python,
    ``mvpseg segment`` and the page apply, each raising its own error with this sentence."""
    if threshold is None:
        return None
    if background is None or (isinstance(background, str) and not background.strip()):
        return "a background threshold needs a background class (the pixels below it become that class): name one"
    if not 0.0 <= threshold <= 1.0:
        return f"a background threshold is a score between 0 and 1, not {threshold}"
    return None


class VocabularyWarning(UserWarning):
    """A vocabulary that works but probably not as meant (a name shared by two classes)."""


@dataclass(frozen=True)
class Vocabulary:
    """Classes and their names, validated.

    Attributes:
        classes: each class's names, stripped and without repeats, the display name first.
    """

    classes: tuple[tuple[str, ...], ...]

    @classmethod
    def of(cls, class_names: Sequence[ClassNames] | Vocabulary, background: ClassNames | None = None,
           warn: bool = True) -> Vocabulary:
        """Validate a list of classes (each a name or a sequence of names), with an optional background first.

        Args:
            class_names: the classes, in label order; a :class:`Vocabulary` is returned as it is
                (with ``background`` prepended when given).
            background: a name (or names) for everything else; it becomes class 0.
            warn: warn (:class:`VocabularyWarning`) when a name belongs to several classes.

        Returns:
            The vocabulary.

        Raises:
            ValueError: an empty list, a class or name that is empty, or two classes shown under the same
                name (the message names them).
        """
        if isinstance(class_names, Vocabulary) and background is None:
            return class_names
        entries = list(class_names.classes if isinstance(class_names, Vocabulary) else class_names)
        if background is not None and (not isinstance(background, str) or background.strip()):
            entries.insert(0, background)
        if not entries:
            raise ValueError("the list of class names is empty: give at least one class name")
        classes = []
        for entry in entries:
            names = [entry] if isinstance(entry, str) else list(entry)
            stripped = [str(name).strip() for name in names]
            if not stripped or any(not name for name in stripped):
                raise ValueError("a class name is empty: remove empty entries from the class list")
            classes.append(tuple(dict.fromkeys(stripped)))  # repeats within a class dropped, order kept
        seen: set[str] = set()
        shown = [names[0] for names in classes]
        duplicates = sorted({name for name in shown if name in seen or seen.add(name)})  # type: ignore[func-returns-value]
        if duplicates:
            raise ValueError(f"duplicate class names: {', '.join(duplicates)}; give each class once")
        vocabulary = cls(tuple(classes))
        if warn:
            vocabulary.warn_shared_names()
        return vocabulary

    @property
    def display_names(self) -> list[str]:
        """Each class's first name: what labels, legends and summaries show."""
        return [names[0] for names in self.classes]

    @property
    def names(self) -> tuple[str, ...]:
        """Every distinct name, in order of first appearance: what the text tower encodes."""
        return tuple(dict.fromkeys(name for names in self.classes for name in names))

    @property
    def groups(self) -> tuple[tuple[int, ...], ...]:
        """For each class, the indices of its names in :attr:`names`."""
        index = {name: position for position, name in enumerate(self.names)}
        return tuple(tuple(index[name] for name in names) for names in self.classes)

    @property
    def has_synonyms(self) -> bool:
        """Whether some class has more than one name (else names and classes are the same list)."""
        return any(len(names) > 1 for names in self.classes)

    def warn_shared_names(self) -> None:
        """Warn (once per name set) when a name belongs to several classes: where it scores best, the
        first of them wins, and a class all of whose names an earlier class shares can never win."""
        owners: dict[str, list[str]] = {}
        for names in self.classes:
            for name in names:
                owners.setdefault(name, []).append(names[0])
        shared = {name: classes for name, classes in owners.items() if len(classes) > 1}
        if shared:
            text = "; ".join(f"{name!r} in {', '.join(classes)}" for name, classes in shared.items())
            warnings.warn(f"names in several classes ({text}): where such a name scores best, the first of its "
                          f"classes wins", VocabularyWarning, stacklevel=3)


def max_over_names(values: torch.Tensor, vocabulary: Vocabulary, dim: int) -> torch.Tensor:
    """Per-name values to per-class values: each class's maximum over its names.

    Args:
        values: any tensor with ``len(vocabulary.names)`` entries along ``dim``.
        vocabulary: the classes and their names.
        dim: the names' dimension.

    Returns:
        The same tensor with ``len(vocabulary.classes)`` entries along ``dim`` (``values`` itself when
        every class has one name of its own).
    """
    groups = vocabulary.groups
    if all(group == (position,) for position, group in enumerate(groups)) and values.shape[dim] == len(groups):
        return values
    import torch

    index = [torch.tensor(group, device=values.device) for group in groups]
    return torch.stack([values.index_select(dim, rows).amax(dim=dim) for rows in index], dim=dim)


def parse_classes(text: str) -> list[tuple[str, ...]]:
    """Classes from text: ``"tv monitor|television, cat"`` -> ``[("tv monitor", "television"), ("cat",)]``.

    Empty entries are kept (as empty names) so that :meth:`Vocabulary.of` reports them.

    Args:
        text: classes separated by ``,``, a class's names by ``|``.

    Returns:
        Each class's names.
    """
    return [tuple(name.strip() for name in part.split(NAME_SEPARATOR)) for part in text.split(CLASS_SEPARATOR)]


def parse_class_lines(text: str) -> list[tuple[str, ...]]:
    """Classes from the text of a class file: one class per line, its names separated by ``,`` or ``|``.

    ``#`` starts a comment and blank lines are skipped. Text of a single class line reads like
    :func:`parse_classes`: commas separate classes there.

    Args:
        text: the lines (a class file's content, or what the web page's class box holds).

    Returns:
        Each class's names.
    """
    lines = [line.split("#", 1)[0].strip() for line in text.splitlines()]
    lines = [line for line in lines if line]
    if len(lines) == 1:
        return parse_classes(lines[0])
    return [tuple(name.strip() for name in line.replace(NAME_SEPARATOR, CLASS_SEPARATOR).split(CLASS_SEPARATOR))
            for line in lines]


def read_classes_file(path: str | os.PathLike[str]) -> list[tuple[str, ...]]:
    """Classes from a UTF-8 file, as :func:`parse_class_lines` reads them (SCLIP's ``cls_*.txt`` files as they are).

    Args:
        path: the file.

    Returns:
        Each class's names.

    Raises:
        FileNotFoundError: no such file.
    """
    return parse_class_lines(Path(path).read_text(encoding="utf-8"))
