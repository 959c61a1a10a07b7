"""Vocabularies as users write them: synonyms in Python, text and files; a class scores as the best of its names."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mvpseg.vocabulary import Vocabulary, VocabularyWarning, max_over_names, parse_classes, read_classes_file


def test_text_separates_classes_by_commas_and_synonyms_by_bars() -> None:
    assert parse_classes("tv monitor|television, cat") == [("tv monitor", "television"), ("cat",)]
    assert parse_classes(" cat ,dog") == [("cat",), ("dog",)]
    with pytest.raises(ValueError, match="empty"):
        Vocabulary.of(parse_classes("cat,,dog"))
    with pytest.raises(ValueError, match="empty"):
        Vocabulary.of(parse_classes("cat|,dog"))


@pytest.mark.parametrize("text, expected", [
    ("cat\ndog\n", [("cat",), ("dog",)]),
    ("# classes\ncat  # a pet\n\ndog\n", [("cat",), ("dog",)]),
    ("cat, dog\n", [("cat",), ("dog",)]),  # one line: as --classes
    ("tv|television\n", [("tv", "television")]),
    ("sky, wall, tree\ntelevision monitor, tv monitor|screen\n",
     [("sky", "wall", "tree"), ("television monitor", "tv monitor", "screen")]),
])
def test_files_hold_one_class_per_line(tmp_path: Path, text: str, expected: list[tuple[str, ...]]) -> None:
    path = tmp_path / "classes.txt"
    path.write_text(text, encoding="utf-8")
    assert read_classes_file(path) == expected


def test_vocabulary_names_groups_and_validation() -> None:
    vocabulary = Vocabulary.of([("cat", "kitten", "cat"), "dog", ["bird"]], background=("background", "sky"))
    assert vocabulary.classes == (("background", "sky"), ("cat", "kitten"), ("dog",), ("bird",))
    assert vocabulary.display_names == ["background", "cat", "dog", "bird"]
    assert vocabulary.names == ("background", "sky", "cat", "kitten", "dog", "bird")
    assert vocabulary.groups == ((0, 1), (2, 3), (4,), (5,))
    assert vocabulary.has_synonyms and not Vocabulary.of(["a", "b"]).has_synonyms
    assert Vocabulary.of(vocabulary) is vocabulary
    with pytest.raises(ValueError, match="duplicate class names: cat"):
        Vocabulary.of(["cat", ("cat", "kitten")])
    with pytest.raises(ValueError, match="empty"):
        Vocabulary.of([])
    with pytest.raises(ValueError, match="empty"):
        Vocabulary.of([()])


def test_a_name_in_two_classes_is_scored_once_and_warned_about() -> None:
    # SCLIP's cls_coco_object.txt lists "bed" in its background line and as a class of its own.
    with pytest.warns(VocabularyWarning, match="'bed' in sky, bed"):
        vocabulary = Vocabulary.of([("sky", "bed"), "bed"])
    assert vocabulary.names == ("sky", "bed") and vocabulary.groups == ((0, 1), (1,))


def test_max_over_names_takes_each_classes_best_name() -> None:
    vocabulary = Vocabulary.of([("a", "a2"), "b", ("c", "c2", "c3")])
    values = torch.randn(2, 6, 3, 4)  # (B, names, h, w)
    reduced = max_over_names(values, vocabulary, dim=1)
    assert reduced.shape == (2, 3, 3, 4)
    torch.testing.assert_close(reduced[:, 0], torch.maximum(values[:, 0], values[:, 1]))
    torch.testing.assert_close(reduced[:, 1], values[:, 2])
    torch.testing.assert_close(reduced[:, 2], values[:, 3:].amax(dim=1))
    plain = torch.randn(4, 3)
    assert max_over_names(plain, Vocabulary.of(["x", "y", "z"]), dim=1) is plain
