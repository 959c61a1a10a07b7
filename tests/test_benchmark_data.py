"""The benchmarks outside MVP-SEG's protocol (issue 28): their class lists, readers, label rules and prepare
commands, on trees generated in each official layout. Every expected value here is written by hand from the
reference (mmseg's dataset classes, SCLIP's converter and class files, cityscapesscripts' labels.py, CAT-Seg's
prepare scripts), never computed with the code under test."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from fakedata import (
    CITYSCAPES_STORED_IDS,
    write_ade20k,
    write_ade20k_full,
    write_ade847,
    write_cityscapes,
    write_coco_object,
    write_context,
    write_pascal_context_full,
    write_pc459,
    write_stuffthingmaps,
    write_voc,
)
from PIL import Image

from mvpseg.cli import main
from mvpseg.data import (
    DataLayoutError,
    build_dataset,
    dataset_info,
    peer_class_file,
    prepare_ade847,
    prepare_cityscapes,
    prepare_coco_object,
    prepare_pc459,
    read_peer_classes,
)
from mvpseg.data.classes import COCO_STUFF_CLASSES, VOC_CLASSES
from mvpseg.vocabulary import Vocabulary, read_classes_file


def stored(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img).astype(np.int64)


def one_line_error(error: pytest.ExceptionInfo[BaseException], *parts: str) -> str:
    message = str(error.value)
    assert "\n" not in message
    for part in parts:
        assert part in message, (part, message)
    return message


# --- class lists and the peers' class files --------------------------------------------------------------


def test_benchmark_label_spaces() -> None:
    voc21 = dataset_info("voc21")
    assert voc21.num_classes == 21 and voc21.class_names == ("background", *VOC_CLASSES) and voc21.unseen == ()
    coco = dataset_info("coco-object")
    assert coco.num_classes == 81 and coco.class_names[:3] == ("background", "person", "bicycle")
    assert coco.class_names[1:] == COCO_STUFF_CLASSES[:80] and coco.class_names[-1] == "toothbrush"
    city = dataset_info("cityscapes")
    assert city.class_names == (
        "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
        "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
    )  # fmt: skip
    ade = dataset_info("ade20k")
    assert ade.num_classes == 150 and ade.class_names[:8] == (
        "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed",
    ) and ade.class_names[-1] == "flag" and ade.ignore_index == 255  # fmt: skip
    ade847 = dataset_info("ade847")
    assert ade847.num_classes == 847 and ade847.ignore_index == 65535
    assert ade847.class_names[:3] == ("wall", "building", "sky") and ade847.class_names[846] == "adding machine"
    # The classes that share their first name with another show a name of their own.
    assert (ade847.class_names[114], ade847.class_names[191], ade847.class_names[252]) == (
        "bag", "traveling bag", "handbag")
    assert (ade847.class_names[188], ade847.class_names[130]) == ("pot", "flowerpot")
    assert len(set(ade847.class_names)) == 847
    pc459 = dataset_info("pc459")
    assert pc459.num_classes == 459 and pc459.ignore_index == 65535
    assert pc459.class_names[:3] == ("accordion", "aeroplane", "airconditioner") and pc459.class_names[-1] == "wool"
    # The zero-shot protocol's names stay, the benchmark names are aliases of them.
    assert dataset_info("voc20") is dataset_info("voc") and dataset_info("context59") is dataset_info("context")
    for alias, name in [("ade150", "ade20k"), ("ADE20K-Full", "ade847"), ("pc-459", "pc459"), ("COCO_Object", "coco-object"),
                        ("pc59", "context"), ("voc-21", "voc21")]:
        assert dataset_info(alias).name == name


EXPECTED_FIRST_AND_LAST = {
    "voc21": (("sky", "wall", "tree"), ("television monitor", "tv monitor", "monitor", "television", "screen")),
    "voc": (("aeroplane",), ("television monitor", "tv monitor", "monitor", "television", "screen")),
    "context60": (("background",), ("wood",)),
    "context": (("aeroplane",), ("wood",)),
    "coco-object": (("sky", "wall", "tree"), ("toothbrush",)),
    "coco-stuff": (("person",), ("wood",)),
    "cityscapes": (("road",), ("bicycle",)),
    "ade20k": (("wall",), ("flag",)),
    "ade847": (("wall",), ("adding machine", "totalizer", "totaliser")),
    "pc459": (("accordion",), ("wool",)),
}


@pytest.mark.parametrize("name", sorted(EXPECTED_FIRST_AND_LAST))
def test_peer_class_files_load_as_class_files(name: str) -> None:
    classes = read_classes_file(peer_class_file(name))  # what --classes-file reads
    assert classes == read_peer_classes(name)
    assert len(classes) == dataset_info(name).num_classes
    first, last = EXPECTED_FIRST_AND_LAST[name]
    assert classes[0][: len(first)] == first and classes[-1] == last
    vocabulary = Vocabulary.of(classes, warn=False)  # every class shown under a name of its own
    assert len(vocabulary.display_names) == len(set(vocabulary.display_names))


def test_peer_class_files_keep_the_peers_synonyms() -> None:
    voc21 = read_peer_classes("voc21")
    assert len(voc21[0]) == 26 and voc21[0][-1] == "fence"  # SCLIP's background: 26 stuff words
    assert voc21[15][:2] == ("person", "person in shirt") and voc21[4] == ("ship",)
    # CAT-Seg's "bag, traveling bag, travelling bag, grip, suitcase" keeps its names, the own one first.
    ade847 = read_peer_classes("ade847")
    assert ade847[191] == ("traveling bag", "bag", "travelling bag", "grip", "suitcase")
    assert ade847[1] == ("building", "edifice") and ade847[114] == ("bag",)
    assert ade847[768] == ("control board", "control panel", "instrument panel", "board", "panel")
    assert sum(len(names) for names in ade847) == 1281  # every name of CAT-Seg's 847 entries
    with pytest.raises(ValueError, match="no shipped class file"):
        peer_class_file("custom")


# --- readers, one per layout -------------------------------------------------------------------------------


def test_voc21_keeps_background_as_class_0_and_voc20_ignores_it(tmp_path: Path) -> None:
    base = write_voc(tmp_path, num_train=1, num_val=2)
    voc21 = build_dataset("voc21", tmp_path, "val")
    item = voc21[0]
    assert item["label"][0, :4].tolist() == [0, 255, 20, 1]  # as stored: background 0, tv monitor 20, 255 void
    np.testing.assert_array_equal(item["label"], stored(base / "SegmentationClass" / f"{item['name']}.png"))
    assert (item["label"] == 0).any()
    voc20 = build_dataset("voc20", tmp_path, "val")
    assert voc20.info.name == "voc" and voc20[0]["label"][0, :4].tolist() == [255, 255, 19, 0]
    assert voc21.describe() == (
        "voc21 val: 2 images (2 SegmentationClass); the official val has 1449 (a partial or another copy)"
    )
    assert build_dataset("context59", write_context(tmp_path / "ctx").parent.parent, "val").info.name == "context"


def test_coco_object_reads_instance_train_ids(tmp_path: Path) -> None:
    base = write_coco_object(tmp_path, num_val=2)
    val = build_dataset("coco-object", tmp_path, "val")
    assert val.ids == ["000000500000", "000000500001"] and val.info.num_classes == 81
    item = val[1]
    assert item["label"][0, :4].tolist() == [0, 255, 80, 1]  # background 0 and the things 1..80 as stored
    np.testing.assert_array_equal(item["label"], stored(base / "annotations" / "val2017" / "000000500001_instanceTrainIds.png"))
    assert "the official val has 5000" in val.describe()


def test_cityscapes_reads_train_ids_of_every_city(tmp_path: Path) -> None:
    base = write_cityscapes(tmp_path, cities=("lindau", "frankfurt"), per_city=2)
    val = build_dataset("cityscapes", tmp_path, "val")
    assert val.ids == ["frankfurt/frankfurt_000000_000019", "frankfurt/frankfurt_000001_000020",
                       "lindau/lindau_000000_000019", "lindau/lindau_000001_000020"]
    item = val[2]
    assert item["label"][0, :4].tolist() == [0, 255, 18, 1]
    label_path = base / "gtFine" / "val" / "lindau" / "lindau_000000_000019_gtFine_labelTrainIds.png"
    np.testing.assert_array_equal(item["label"], stored(label_path))
    assert val.image_paths[2].name == "lindau_000000_000019_leftImg8bit.png"
    assert val.describe().startswith("cityscapes val: 4 images (2 frankfurt, 2 lindau); the official val has 500")


def test_ade20k_reduces_zero_label(tmp_path: Path) -> None:
    base = write_ade20k(tmp_path, num_val=2)
    val = build_dataset("ade20k", tmp_path, "val")
    assert val.ids == ["ADE_val_00000001", "ADE_val_00000002"]
    item = val[0]
    # Stored 0 ("other") and 255 are ignored; class k is stored as k + 1 (mmseg's reduce_zero_label).
    assert item["label"][0, :4].tolist() == [255, 255, 149, 0]
    raw = stored(base / "annotations" / "validation" / "ADE_val_00000001.png")
    np.testing.assert_array_equal(item["label"], np.where((raw == 0) | (raw == 255), 255, raw - 1))
    assert "the official val has 2000" in val.describe()


def test_ade847_reads_16_bit_train_ids(tmp_path: Path) -> None:
    base = write_ade847(tmp_path, num_val=2)
    val = build_dataset("ade847", tmp_path, "val")
    item = val[0]
    assert item["label"][0, :4].tolist() == [0, 65535, 846, 1]  # 65535 is CAT-Seg's ignore label
    assert val.info.ignore_index == 65535 and val.info.num_classes == 847
    np.testing.assert_array_equal(item["label"], stored(base / "annotations_detectron2" / "validation" / "ADE_val_00000001.tif"))
    bad = np.zeros((48, 64), dtype=np.uint16)
    bad[5, 5] = 847
    Image.fromarray(bad).save(val.label_paths[1], format="TIFF")
    with pytest.raises(DataLayoutError, match=r"values \[847\] outside the ade847 label space"):
        val[1]


def test_pc459_reads_the_split_of_pascalcontext_val(tmp_path: Path) -> None:
    base = write_pc459(tmp_path, num_val=2)
    val = build_dataset("pc459", tmp_path, "val")
    assert val.ids == ["2008_000000", "2008_000001"]
    item = val[1]
    # 459 (CAT-Seg's ignore label) and 65535 (a wrapped unlabelled 0) are ignored.
    assert item["label"][0, :5].tolist() == [0, 65535, 458, 65535, 1]
    raw = stored(base / "annotations_detectron2" / "pc459_val" / "2008_000001.tif")
    np.testing.assert_array_equal(item["label"], np.where(raw == 459, 65535, raw))
    assert val.describe().endswith("the official val has 5104 (a partial or another copy)")


def test_describe_says_when_the_split_is_the_official_one(tmp_path: Path) -> None:
    write_ade20k(tmp_path, num_val=2)
    val = build_dataset("ade20k", tmp_path, "val")
    val.official_size = 2  # as if this were the official split
    assert val.describe() == "ade20k val: 2 images (2 validation); the official size"


# --- bad input: one line each ---------------------------------------------------------------------------------


def test_bad_inputs_are_one_line(tmp_path: Path) -> None:
    # A missing split file.
    write_pc459(tmp_path / "pc", num_val=1)
    (tmp_path / "pc" / "VOCdevkit" / "VOC2010" / "pascalcontext_val.txt").unlink()
    with pytest.raises(DataLayoutError) as error:
        build_dataset("pc459", tmp_path / "pc", "val")
    one_line_error(error, "split file not found", "pascalcontext_val.txt")
    base = write_voc(tmp_path / "voc", num_train=1, num_val=1)
    (base / "ImageSets" / "Segmentation" / "val.txt").unlink()
    with pytest.raises(DataLayoutError) as error:
        build_dataset("voc21", tmp_path / "voc", "val")
    one_line_error(error, "split file not found", "val.txt")

    # A label map of the wrong size.
    city = write_cityscapes(tmp_path / "city", cities=("bonn",))
    label = city / "gtFine" / "val" / "bonn" / "bonn_000000_000019_gtFine_labelTrainIds.png"
    Image.fromarray(np.zeros((10, 20), dtype=np.uint8)).save(label)
    with pytest.raises(DataLayoutError) as error:
        build_dataset("cityscapes", tmp_path / "city", "val")[0]
    one_line_error(error, str(label), "20x10", "64x32")

    # An image without a label: the prepared datasets name the command that writes it.
    (city / "gtFine" / "val" / "bonn" / "bonn_000000_000019_gtFine_labelTrainIds.png").unlink()
    with pytest.raises(DataLayoutError) as error:
        build_dataset("cityscapes", tmp_path / "city", "val")
    one_line_error(error, "label not found", "bonn_000000_000019_gtFine_labelTrainIds.png",
                   f"make it with: mvpseg prepare cityscapes {tmp_path / 'city'}")
    ade = write_ade20k(tmp_path / "ade", num_val=2)
    (ade / "annotations" / "validation" / "ADE_val_00000002.png").unlink()
    with pytest.raises(DataLayoutError) as error:
        build_dataset("ade20k", tmp_path / "ade", "val")
    message = one_line_error(error, "label not found", "ADE_val_00000002.png")
    assert "mvpseg prepare" not in message  # ADE20K's labels come as they are

    # A missing prepared folder names its prepare command.
    with pytest.raises(DataLayoutError) as error:
        build_dataset("ade847", write_ade20k_full(tmp_path / "full", val_sizes=((8, 8),)), "val")
    one_line_error(error, "images_detectron2", f"mvpseg prepare ade847 {tmp_path / 'full' / 'ADE20K_2021_17_01'}")


# --- prepare: COCO-Object ------------------------------------------------------------------------------------

# The 10 stuffthingmaps thing ids without a category, and the first and last ids of things and stuff, by hand.
UNUSED_THING_IDS = (11, 25, 28, 29, 44, 65, 67, 68, 70, 82)


def test_prepare_coco_object_follows_groupvit_sclip_rule(tmp_path: Path) -> None:
    base = write_stuffthingmaps(tmp_path, splits=("val2017",), num_images=2)
    every_value = np.array([*range(182), 255], dtype=np.uint8)  # every official id, and unlabeled
    source = base / "annotations" / "val2017" / "000000000001.png"
    raw = stored(source).astype(np.uint8)
    raw[1:3, :] = 0
    raw[1, :64] = every_value[:64]
    raw[2, :64] = every_value[64:128]
    raw[3, :55] = every_value[128:]
    Image.fromarray(raw).save(source)
    assert prepare_coco_object(tmp_path, splits=("val2017",), progress=False) == 2
    converted = stored(source.with_name("000000000001_instanceTrainIds.png"))
    value = {int(r): int(c) for r, c in zip(raw.ravel(), converted.ravel())}
    # Things (0..89 without the 10 gaps) -> 1..80 in order; stuff 91..181 and unlabeled 255 -> background 0.
    things = [i for i in range(90) if i not in UNUSED_THING_IDS]
    assert [value[i] for i in things] == list(range(1, 81))
    assert all(value[i] == 0 for i in range(91, 182)) and value[255] == 0
    # The ids no official map holds (the gaps, 90, 182) are ignored.
    assert all(value[i] == 255 for i in (*UNUSED_THING_IDS, 90, 182))
    assert (value[0], value[10], value[12], value[89], value[91], value[181]) == (1, 11, 12, 80, 0, 0)
    assert not [p for p in source.parent.iterdir() if p.name.startswith(".")]  # no temporary file left
    # The COCO-Stuff labels are not what it reads, and it does not read its own output.
    assert prepare_coco_object(tmp_path, splits=("val2017",), progress=False) == 0
    val = build_dataset("coco-object", tmp_path, "val")
    np.testing.assert_array_equal(val[0]["label"], converted)


def test_prepare_coco_object_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = write_stuffthingmaps(tmp_path, splits=("val2017",), num_images=2)
    with pytest.raises(DataLayoutError) as error:
        build_dataset("coco-object", tmp_path, "val")
    one_line_error(error, "000000000001_instanceTrainIds.png and 1 more", f"mvpseg prepare coco-object {tmp_path}")
    assert main(["prepare", "coco-object", str(tmp_path), "--quiet"]) == 0
    assert "wrote 2 label files (*_instanceTrainIds.png) for val2017" in capsys.readouterr().out
    assert len(build_dataset("coco-object", base, "val")) == 2
    mode = os.stat(base / "annotations" / "val2017" / "000000000001_instanceTrainIds.png").st_mode & 0o777
    assert mode == 0o666 & ~_umask()  # the user's normal permissions


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# --- prepare: Cityscapes --------------------------------------------------------------------------------------

# cityscapesscripts' labels.py, id -> trainId for ids 0..33 (void and unevaluated ids -> 255), by hand.
CITYSCAPES_TRAIN_ID_OF = [255, 255, 255, 255, 255, 255, 255, 0, 1, 255, 255, 2, 3, 4, 255, 255, 255, 5, 255, 6, 7,
                          8, 9, 10, 11, 12, 13, 14, 15, 255, 255, 16, 17, 18]


def test_prepare_cityscapes_on_a_full_size_frame(tmp_path: Path) -> None:
    base = write_cityscapes(tmp_path, cities=("aachen",), size=(1024, 2048), train_ids=False)
    source = base / "gtFine" / "val" / "aachen" / "aachen_000000_000019_gtFine_labelIds.png"
    with pytest.raises(DataLayoutError) as error:
        build_dataset("cityscapes", tmp_path, "val")
    one_line_error(error, "aachen_000000_000019_gtFine_labelTrainIds.png", "mvpseg prepare cityscapes")
    assert prepare_cityscapes(tmp_path, splits=("val",), progress=False) == 1
    target = source.with_name("aachen_000000_000019_gtFine_labelTrainIds.png")
    raw, converted = stored(source), stored(target)
    assert converted.shape == (1024, 2048)
    assert converted[0, :35].tolist() == [*CITYSCAPES_TRAIN_ID_OF, 255]  # every id, and 255 (the -1 plate)
    expected = np.asarray([*CITYSCAPES_TRAIN_ID_OF, *[0] * 221, 255])[raw]
    np.testing.assert_array_equal(converted, expected)
    assert set(np.unique(raw).tolist()) == set(CITYSCAPES_STORED_IDS)
    item = build_dataset("cityscapes", tmp_path, "val")[0]
    assert item["image"].shape == (1024, 2048, 3)
    np.testing.assert_array_equal(item["label"], converted)
    assert prepare_cityscapes(base, splits=("val",), progress=False) == 0  # done already


def test_prepare_cityscapes_refuses_unknown_ids(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = write_cityscapes(tmp_path, cities=("ulm",), train_ids=False)
    source = base / "gtFine" / "val" / "ulm" / "ulm_000000_000019_gtFine_labelIds.png"
    raw = stored(source).astype(np.uint8)
    raw[5, 5] = 40
    Image.fromarray(raw).save(source)
    assert main(["prepare", "cityscapes", str(tmp_path), "--quiet"]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "[40]" in error and "no Cityscapes label id" in error
    assert main(["prepare", "cityscapes", str(tmp_path), "--splits", "train", "--quiet"]) == 2
    assert "gtFine/train" in capsys.readouterr().err


# --- prepare: ADE20K-847 -------------------------------------------------------------------------------------


def _pickle_trap(path: Path, marker: Path) -> None:
    """A pickle whose loading would create `marker`: the ADE index that must never be unpickled."""

    class Trap:
        def __reduce__(self) -> tuple:
            return (Path.touch, (marker,))

    path.write_bytes(pickle.dumps(Trap()))


def test_prepare_ade847_as_cat_seg_without_unpickling(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = write_ade20k_full(tmp_path, val_sizes=((40, 56), (520, 700)), object_classes=(2978, 97, 3148, 1))
    _pickle_trap(base / "index_ade20k.pkl", tmp_path / "unpickled")
    assert main(["prepare", "ade847", str(tmp_path), "--quiet"]) == 0
    assert "wrote 2 validation images" in capsys.readouterr().out
    assert not (tmp_path / "unpickled").exists()
    images = base / "images_detectron2" / "validation"
    labels = base / "annotations_detectron2" / "validation"
    assert sorted(p.name for p in images.iterdir()) == ["ADE_val_00000001.jpg", "ADE_val_00000002.jpg"]
    assert sorted(p.name for p in labels.iterdir()) == ["ADE_val_00000001.tif", "ADE_val_00000002.tif"]
    seg = np.asarray(Image.open(next(base.rglob("ADE_val_00000001_seg.png"))))
    small = stored(labels / "ADE_val_00000001.tif")
    with Image.open(labels / "ADE_val_00000001.tif") as img:
        assert img.mode == "I;16" and img.format == "TIFF"
    # wall (ADE class 2978) -> 0, bag "traveling bag" (97) -> 191, adding machine (3148) -> 846, class 1 -> ignored.
    assert small[0, 1:5].tolist() == [0, 191, 846, 65535]
    classes = (seg[..., 0].astype(np.int64) // 10) * 256 + seg[..., 1]
    np.testing.assert_array_equal(small, np.select([classes == 2978, classes == 97, classes == 3148],
                                                    [0, 191, 846], 65535))
    # A short side over 512 is brought to 512 (700 * 512 / 520 = 689.2 -> 689), the label by OpenCV's nearest rule.
    big = stored(labels / "ADE_val_00000002.tif")
    assert big.shape == (512, 689)
    with Image.open(images / "ADE_val_00000002.jpg") as jpeg:
        assert jpeg.size == (689, 512) and jpeg.format == "JPEG"
    seg2 = np.asarray(Image.open(next(base.rglob("ADE_val_00000002_seg.png"))))
    rows = np.floor(np.arange(512) * (520 / 512)).astype(int)
    cols = np.floor(np.arange(689) * (700 / 689)).astype(int)
    classes2 = (seg2[..., 0].astype(np.int64) // 10) * 256 + seg2[..., 1]
    expected = np.select([classes2 == 2978, classes2 == 97, classes2 == 3148], [0, 191, 846], 65535)
    np.testing.assert_array_equal(big, expected[rows][:, cols])

    val = build_dataset("ade847", tmp_path, "val")
    assert val.ids == ["ADE_val_00000001", "ADE_val_00000002"]
    assert val[1]["label"].shape == (512, 689) and val[1]["image"].shape == (512, 689, 3)
    assert prepare_ade847(tmp_path, progress=False) == 0  # done already


def test_prepare_ade847_killed_midway_leaves_nothing_that_reads_as_complete(tmp_path: Path) -> None:
    base = write_ade20k_full(tmp_path, val_sizes=((24, 32), (24, 32), (24, 32)))
    seg = next(base.rglob("ADE_val_00000002_seg.png"))
    seg.rename(seg.with_suffix(".bak"))  # the run fails at the second image, after writing the first
    with pytest.raises(DataLayoutError, match="ADE_val_00000002_seg.png"):
        prepare_ade847(base, progress=False)
    with pytest.raises(DataLayoutError) as error:
        build_dataset("ade847", tmp_path, "val")
    one_line_error(error, "folder not found", "images_detectron2", "mvpseg prepare ade847")
    seg.with_suffix(".bak").rename(seg)
    assert prepare_ade847(base, progress=False) == 2  # the first image is kept, the two others written
    assert len(build_dataset("ade847", tmp_path, "val")) == 3
    assert not [p for p in base.rglob(".*")]  # no staging folder or temporary file left


# --- prepare: PASCAL Context-459 ----------------------------------------------------------------------------


def test_prepare_pc459_as_cat_seg(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from scipy.io import loadmat

    base = write_pascal_context_full(tmp_path, val_ids=("2008_000002", "2008_000003"), other_ids=("2008_000001",))
    mat = base / "trainval" / "2008_000003.mat"
    label_map = loadmat(mat)["LabelMap"]
    label_map[3, 3] = 0  # an unlabelled pixel: CAT-Seg's uint16 "LabelMap - 1" wraps it to 65535
    from scipy.io import savemat

    savemat(mat, {"LabelMap": label_map})
    assert main(["prepare", "pc459", str(tmp_path), "--quiet"]) == 0
    assert "wrote 2 labels" in capsys.readouterr().out
    out = base / "annotations_detectron2" / "pc459_val"
    assert sorted(p.name for p in out.iterdir()) == ["2008_000002.tif", "2008_000003.tif"]  # the val ids only
    written = stored(out / "2008_000003.tif")
    assert written[0, :4].tolist() == [0, 458, 65535, 1] and written[3, 3] == 65535
    np.testing.assert_array_equal(written, np.where(label_map == 0, 65535, label_map.astype(np.int64) - 1))
    val = build_dataset("pc459", tmp_path, "val")
    item = val[1]
    assert item["label"][0, :4].tolist() == [0, 458, 65535, 1] and item["label"][3, 3] == 65535
    assert prepare_pc459(tmp_path, progress=False) == 0  # done already


def test_prepare_pc459_bad_sources(tmp_path: Path) -> None:
    base = write_pascal_context_full(tmp_path)
    (base / "trainval" / "2008_000003.mat").unlink()
    with pytest.raises(DataLayoutError) as error:
        prepare_pc459(tmp_path, progress=False)
    one_line_error(error, "label not found", "2008_000003.mat")
    # A file that is no MATLAB file stops the run before the folder is named: the reader says what to run.
    (base / "trainval" / "2008_000003.mat").write_bytes(b"not a mat file")
    with pytest.raises(DataLayoutError) as error:
        prepare_pc459(tmp_path, progress=False)
    one_line_error(error, "2008_000003.mat")
    with pytest.raises(DataLayoutError) as error:
        build_dataset("pc459", tmp_path, "val")
    one_line_error(error, "folder not found", "pc459_val", "mvpseg prepare pc459")
    (base / "pascalcontext_val.txt").unlink()
    with pytest.raises(DataLayoutError) as error:
        prepare_pc459(tmp_path, progress=False)
    one_line_error(error, "pascalcontext_val.txt", "CAT-Seg")


# --- evaluation on the benchmarks -------------------------------------------------------------------------------

TINY = {"short_side": 64, "crop_size": 64, "stride": 32}
CLI_TINY = ["--short-side", "64", "--crop-size", "64", "--stride", "32", "--quiet"]


class _Oracle:
    """A segmenter stand-in that predicts the ground truth (class 0 where it is ignored) and notes the vocabularies."""

    def __init__(self, dataset: object) -> None:
        self.dataset, self.index, self.vocabularies = dataset, 0, []

    def predict(self, image: np.ndarray, vocabulary: Vocabulary) -> object:
        self.vocabularies.append(vocabulary)
        _, label = self.dataset.load(self.index)
        self.index += 1
        return type("Prediction", (), {"labels": np.where(label == self.dataset.info.ignore_index, 0, label)})


@pytest.mark.parametrize("name, writer", [("ade847", write_ade847), ("pc459", write_pc459)])
def test_evaluate_the_16_bit_label_spaces(tmp_path: Path, name: str, writer: object) -> None:
    from mvpseg.evaluate import evaluate

    writer(tmp_path, num_val=2)
    dataset = build_dataset(name, tmp_path, "val")
    oracle = _Oracle(dataset)
    metrics = evaluate(oracle, dataset, progress=False)  # 65535 (and PC-459's 459) ignored, classes up to 846
    assert metrics["num_images"] == 2 and len(metrics["per_class"]) == dataset.info.num_classes
    present = {int(v) for i in range(2) for v in np.unique(dataset.load(i)[1])} - {65535}
    scored = {c for c, name_ in enumerate(dataset.info.class_names) if metrics["per_class"][name_] is not None}
    assert scored == present and metrics["miou"] == pytest.approx(100.0) and metrics["pixel_acc"] == pytest.approx(100.0)
    assert oracle.vocabularies[0].display_names == list(dataset.info.class_names)


def test_evaluate_with_the_peers_synonyms(tiny_rn: object, tmp_path: Path) -> None:
    import mvpseg
    from mvpseg.evaluate import evaluate

    write_voc(tmp_path, num_train=1, num_val=1)
    segmenter = mvpseg.Segmenter(mvpseg.build_mvpseg(tiny_rn, None), config=mvpseg.InferenceConfig(**TINY),
                                 device="cpu")
    peers = build_dataset("voc21", tmp_path, "val", prompt_names_file=peer_class_file("voc21"))
    assert peers.info.class_names == dataset_info("voc21").class_names  # the metrics keep the dataset's names
    keyed = evaluate(segmenter, peers, progress=False)
    assert list(keyed["per_class"]) == list(dataset_info("voc21").class_names)
    # The text tower saw every name of SCLIP's file: the 26 background words, "ship" for boat, ...
    assert Vocabulary.of(read_peer_classes("voc21")).names in segmenter._text_cache
    given = evaluate(segmenter, build_dataset("voc21", tmp_path, "val"), class_names=read_peer_classes("voc21"),
                     progress=False)
    assert list(given["per_class"])[:2] == ["sky", "aeroplane"]  # keyed by the given classes' first names
    assert list(given["per_class"].values()) == list(keyed["per_class"].values())
    plain = evaluate(segmenter, build_dataset("voc21", tmp_path, "val"), progress=False)
    assert tuple(dataset_info("voc21").class_names) in segmenter._text_cache
    assert list(plain["per_class"]) == list(keyed["per_class"])


def test_eval_command_on_a_benchmark_with_the_peers_names(tiny_rn: object, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from safetensors.torch import save_file

    weights = tmp_path / "tiny-rn.safetensors"
    save_file(dict(tiny_rn.model.state_dict()), weights)
    write_cityscapes(tmp_path / "data", cities=("bonn",))
    out = tmp_path / "out"
    status = main(["eval", "--dataset", "cityscapes", "--data-root", str(tmp_path / "data"), "--clip", "test-tiny-rn",
                   "--clip-weights", str(weights), "--peer-class-names", "--out", str(out), *CLI_TINY])
    assert status == 0
    written = json.loads((out / "metrics.json").read_text())
    setup = written["setup"]
    assert (setup["dataset"], setup["split_images"], setup["official_images"]) == ("cityscapes", 1, 500)
    assert list(written["per_class"]) == list(dataset_info("cityscapes").class_names)
    assert setup["prompt_names"]["traffic light"] == ["trafficlight"]  # SCLIP's name for it
    assert "road" not in setup["prompt_names"]  # the same name in both
    assert setup["inference"]["short_side"] == 64
    assert "cityscapes val: 1 images (1 bonn); the official val has 500" in capsys.readouterr().err
    assert main(["eval", "--dataset", "custom", "--data-root", str(tmp_path), "--peer-class-names",
                 "--out", str(out)]) == 2
    assert "no peers' class file" in capsys.readouterr().err
