"""Dataset readers, class splits, transforms and the COCO-Stuff converter on tiny generated data."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from fakedata import (
    STUFFTHINGMAPS_STAMP_RAW,
    STUFFTHINGMAPS_STAMP_TRAIN_IDS,
    write_coco_stuff,
    write_context,
    write_custom,
    write_stuffthingmaps,
    write_voc,
)
from PIL import Image

from mvpseg.data import (
    DataLayoutError,
    EvalTransform,
    TrainAugmentation,
    build_dataset,
    dataset_info,
    prepare_coco_stuff,
    read_class_names,
)
from mvpseg.data.classes import MMSEG_COCO_STUFF_CLASSES, MMSEG_CONTEXT60_CLASSES, MMSEG_CONTEXT_CLASSES
from mvpseg.data.transforms import resize_label


def raw_label(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img).astype(np.int64)


def reduce_zero(raw: np.ndarray) -> np.ndarray:
    """Background 0 -> 255, class k -> k - 1, void 255 stays."""
    return np.where((raw == 0) | (raw == 255), 255, raw - 1)


# --- class names and splits -----------------------------------------------------------------------------


def test_builtin_splits() -> None:
    voc = dataset_info("voc")
    assert len(voc.class_names) == 20
    assert voc.unseen == (15, 16, 17, 18, 19)
    assert voc.unseen_names == ("potted plant", "sheep", "sofa", "train", "tv monitor")
    assert "dining table" in voc.class_names
    assert voc.seen == tuple(range(15)) and voc.seen_names[0] == "aeroplane"

    context = dataset_info("context")
    assert len(context.class_names) == 59
    assert context.unseen == (0, 6, 7, 14, 19, 24, 31, 33, 48, 54)
    assert [MMSEG_CONTEXT_CLASSES[i] for i in context.unseen] == [
        "aeroplane", "bird", "boat", "cat", "cow", "fence", "keyboard", "motorbike", "sofa", "tvmonitor",
    ]  # fmt: skip

    coco = dataset_info("coco_stuff")
    assert len(coco.class_names) == 171 and len(set(coco.class_names)) == 171
    assert coco.unseen == (19, 23, 28, 29, 36, 51, 76, 88, 94, 112, 133, 136, 137, 157, 160)
    assert [MMSEG_COCO_STUFF_CLASSES[i] for i in coco.unseen] == [
        "cow", "giraffe", "suitcase", "frisbee", "skateboard", "carrot", "scissors", "cardboard",
        "clouds", "grass", "playingfield", "river", "road", "tree", "wall-concrete",
    ]  # fmt: skip
    assert coco.class_names[160] == "concrete wall"


def test_unknown_dataset_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="voc21, context60, coco-object, voc, context, coco-stuff, cityscapes, "
                                         "ade20k, ade847, pc459, custom"):
        dataset_info("kitti")


def test_read_class_names(tmp_path: Path) -> None:
    path = tmp_path / "names.txt"
    path.write_text("# my classes\n sky \n\nred car\n")
    assert read_class_names(path) == ["sky", "red car"]
    path.write_text("sky\ncar\nsky\n")
    with pytest.raises(ValueError, match="sky"):
        read_class_names(path)
    path.write_text("# nothing\n\n")
    with pytest.raises(ValueError, match="no class names"):
        read_class_names(path)


# --- readers ----------------------------------------------------------------------------------------------


def test_voc_without_aug(tmp_path: Path) -> None:
    base = write_voc(tmp_path, num_train=3, num_val=2)
    train = build_dataset("voc", tmp_path, "train")
    assert train.ids == ["2007_000000", "2007_000001", "2007_000002"]
    assert all(p.parent.name == "SegmentationClass" for p in train.label_paths)
    item = train[1]
    assert item["name"] == "2007_000001"
    assert item["image"].shape == (48, 64, 3) and item["image"].dtype == np.uint8
    assert item["label"].shape == (48, 64) and item["label"].dtype == np.int64
    # Stamp [0 (background), 255 (void), 20 (tvmonitor), 1 (aeroplane)] -> [255, 255, 19, 0].
    assert item["label"][0, :4].tolist() == [255, 255, 19, 0]
    raw = raw_label(base / "SegmentationClass" / "2007_000001.png")
    np.testing.assert_array_equal(item["label"], reduce_zero(raw))
    # Any of the three root levels works.
    for root in (tmp_path / "VOCdevkit", base):
        assert build_dataset("voc", root, "val").ids == ["2007_000003", "2007_000004"]


def test_voc_with_aug(tmp_path: Path) -> None:
    base = write_voc(tmp_path, num_train=2, num_val=1, num_aug=3)
    train = build_dataset("voc", tmp_path, "train")
    assert len(train) == 5
    # VOC's own train images keep their SegmentationClass labels (as mmseg and ZegCLIP read them).
    assert [p.parent.name for p in train.label_paths] == ["SegmentationClass"] * 2 + ["SegmentationClassAug"] * 3
    item = train[4]  # an SBD-only image: it has no SegmentationClass label
    assert not (base / "SegmentationClass" / f"{item['name']}.png").exists()
    raw = raw_label(base / "SegmentationClassAug" / f"{item['name']}.png")
    np.testing.assert_array_equal(item["label"], reduce_zero(raw))
    assert build_dataset("voc", tmp_path, "trainaug").ids == train.ids
    val = build_dataset("voc", tmp_path, "val")
    assert len(val) == 1 and val.label_paths[0].parent.name == "SegmentationClass"


def test_context(tmp_path: Path) -> None:
    base = write_context(tmp_path, num_train=2, num_val=2)
    val = build_dataset("context", tmp_path, "val")
    assert val.info.name == "context" and len(val.info.class_names) == 59
    item = val[0]
    assert item["label"][0, :4].tolist() == [255, 255, 58, 0]
    raw = raw_label(base / "SegmentationClassContext" / f"{item['name']}.png")
    np.testing.assert_array_equal(item["label"], reduce_zero(raw))


VOC_TRAIN = ["2007_000000", "2007_000001", "2007_000002"]
VOC_VAL = ["2007_000003", "2007_000004"]
VOC_SBD = ["2007_000005", "2007_000006", "2007_000007", "2007_000008"]


@pytest.mark.parametrize("aug_format", ["trainaug", "deeplab", "deeplab-relative", "mmseg"])
def test_voc_aug_list_formats_give_the_standard_set(tmp_path: Path, aug_format: str) -> None:
    base = write_voc(tmp_path, num_train=3, num_val=2, num_aug=4, aug_format=aug_format)
    for split in ("train", "trainaug"):
        ds = build_dataset("voc", tmp_path, split)
        assert ds.ids[:3] == VOC_TRAIN and sorted(ds.ids[3:]) == VOC_SBD  # train.txt's ids first
        assert not set(ds.ids) & set(VOC_VAL)
        assert [p.parent.name for p in ds.label_paths] == ["SegmentationClass"] * 3 + ["SegmentationClassAug"] * 4
        assert [p.name for p in ds.image_paths] == [f"{i}.jpg" for i in ds.ids]
        assert ds.label_folders == {"SegmentationClass": 3, "SegmentationClassAug": 4}
        assert ds.describe() == f"voc {split}: 7 images (3 SegmentationClass, 4 SegmentationClassAug)"
    train = build_dataset("voc", tmp_path, "train")
    raw = raw_label(base / "SegmentationClass" / "2007_000001.png")
    np.testing.assert_array_equal(train[1]["label"], reduce_zero(raw))
    index = train.ids.index("2007_000006")
    np.testing.assert_array_equal(train[index]["label"],
                                  reduce_zero(raw_label(base / "SegmentationClassAug" / "2007_000006.png")))


def test_voc_aug_list_duplicates_and_val_ids_are_dropped(tmp_path: Path) -> None:
    base = write_voc(tmp_path, num_train=3, num_val=2, num_aug=4)
    # A list that also holds val ids and repeats: SBD's own train/val overlap VOC val.
    listed = ["2007_000005", "2007_000003", *VOC_TRAIN, "2007_000005", *VOC_SBD, "2007_000004"]
    (base / "ImageSets" / "Segmentation" / "trainaug.txt").write_text("\n".join(listed) + "\n")
    train = build_dataset("voc", tmp_path, "train")
    assert train.ids == [*VOC_TRAIN, *VOC_SBD]
    assert build_dataset("voc", tmp_path, "val").describe() == (
        "voc val: 2 images (2 SegmentationClass); the official val has 1449 (a partial or another copy)"
    )


def test_voc_missing_aug_pieces(tmp_path: Path) -> None:
    base = write_voc(tmp_path, num_train=2, num_val=1)
    with pytest.raises(DataLayoutError, match="SegmentationClassAug"):
        build_dataset("voc", tmp_path, "trainaug")
    (base / "SegmentationClassAug").mkdir()
    with pytest.raises(DataLayoutError, match="trainaug.txt"):
        build_dataset("voc", tmp_path, "trainaug")
    with pytest.warns(UserWarning, match="training on train.txt only"):
        assert build_dataset("voc", tmp_path, "train").ids == ["2007_000000", "2007_000001"]


def test_context60_keeps_background_as_class_0(tmp_path: Path) -> None:
    info = dataset_info("context60")
    assert info.num_classes == 60 and info.class_names[0] == "background"
    assert info.class_names[1:] == dataset_info("context").class_names  # the same readable names
    assert info.unseen == (1, 7, 8, 15, 20, 25, 32, 34, 49, 55)
    assert [MMSEG_CONTEXT60_CLASSES[i] for i in info.unseen] == [
        "aeroplane", "bird", "boat", "cat", "cow", "fence", "keyboard", "motorbike", "sofa", "tvmonitor",
    ]  # fmt: skip
    assert info.unseen_names == tuple(dataset_info("context").unseen_names)
    for alias in ("context-60", "Pascal_Context_60"):
        assert dataset_info(alias) is info
    base = write_context(tmp_path, num_train=2, num_val=2)
    val = build_dataset("context60", tmp_path, "val")
    assert val.info.name == "context60" and val.describe().startswith("context60 val: 2 images (2 SegmentationClassContext);")
    item = val[0]
    assert item["label"][0, :4].tolist() == [0, 255, 59, 1]  # labels 0..59 as stored, 255 ignored
    np.testing.assert_array_equal(item["label"], raw_label(base / "SegmentationClassContext" / f"{item['name']}.png"))
    assert (item["label"] == 0).any()  # the background pixels are class 0, not ignored


def test_coco_stuff(tmp_path: Path) -> None:
    base = write_coco_stuff(tmp_path, num_train=2, num_val=3)
    val = build_dataset("coco-stuff", tmp_path, "val")
    assert val.ids == ["000000500000", "000000500001", "000000500002"]
    item = val[2]
    assert item["label"][0, :4].tolist() == [0, 255, 170, 1]  # identity mapping
    raw = raw_label(base / "annotations" / "val2017" / "000000500002_labelTrainIds.png")
    np.testing.assert_array_equal(item["label"], raw)
    assert len(build_dataset("coco-stuff", base, "train2017")) == 2


def test_custom(tmp_path: Path) -> None:
    root = write_custom(tmp_path / "world", class_names=("sky", "grass", "red car"), unseen=("red car",))
    train = build_dataset("custom", root, "train")
    assert train.info.class_names == ("sky", "grass", "red car")
    assert train.info.unseen == (2,) and train.info.seen == (0, 1)
    item = train[0]
    assert item["label"][0, :4].tolist() == [0, 255, 2, 1]  # no background shift
    np.testing.assert_array_equal(item["label"], raw_label(root / "SegmentationClass" / "img_000.png"))

    names = tmp_path / "names.txt"
    names.write_text("blue sky\ngreen grass\ncar\n")
    unseen = tmp_path / "unseen.txt"
    unseen.write_text("green grass\n")
    other = build_dataset("custom", root, "val", class_names_file=names, unseen_file=unseen)
    assert other.info.class_names == ("blue sky", "green grass", "car") and other.info.unseen == (1,)

    (root / "unseen.txt").write_text("red car\nboat\n")
    with pytest.raises(ValueError, match="boat"):
        build_dataset("custom", root, "train")
    (root / "unseen.txt").unlink()
    assert build_dataset("custom", root, "train").info.unseen == ()


def test_custom_jpg_and_greyscale(tmp_path: Path) -> None:
    root = write_custom(tmp_path, image_ext=".jpg", palette=False, unseen=None)
    ds = build_dataset("custom", root, "val")
    assert ds.image_paths[0].suffix == ".jpg"
    assert ds[0]["label"][0, :4].tolist() == [0, 255, 3, 1]


def test_missing_folder_is_one_line(tmp_path: Path) -> None:
    base = write_context(tmp_path)
    (base / "SegmentationClassContext").rename(base / "labels")
    with pytest.raises(DataLayoutError) as error:
        build_dataset("context", tmp_path, "train")
    message = str(error.value)
    assert "\n" not in message
    assert str(base / "SegmentationClassContext") in message and "expected layout" in message

    with pytest.raises(DataLayoutError, match="VOCdevkit/VOC2012"):
        build_dataset("voc", tmp_path / "nowhere", "train")
    with pytest.raises(DataLayoutError, match="no dataset found"):
        build_dataset("voc", tmp_path / "VOCdevkit" / "VOC2010" / "labels", "train")


def test_missing_file_and_bad_labels(tmp_path: Path) -> None:
    base = write_voc(tmp_path, num_train=2, num_val=1)
    (base / "JPEGImages" / "2007_000001.jpg").unlink()
    with pytest.raises(DataLayoutError, match="2007_000001.jpg"):
        build_dataset("voc", tmp_path, "train")

    # A label of the wrong size names the file.
    label_path = base / "SegmentationClass" / "2007_000002.png"
    Image.fromarray(np.zeros((10, 10), dtype=np.uint8)).save(label_path)
    val = build_dataset("voc", tmp_path, "val")
    with pytest.raises(DataLayoutError, match="2007_000002.png"):
        val[0]
    # A value outside the VOC label space (21..254) is refused.
    Image.fromarray(np.full((48, 64), 30, dtype=np.uint8)).save(label_path)
    with pytest.raises(DataLayoutError, match=r"\[30\]"):
        val[0]
    # A colour-coded label is not an index map.
    Image.fromarray(np.zeros((48, 64, 3), dtype=np.uint8)).save(label_path)
    with pytest.raises(DataLayoutError, match="mode RGB"):
        val[0]


def test_exif_orientation(tmp_path: Path) -> None:
    root = write_custom(tmp_path, num_train=1, num_val=1)
    upright = np.random.default_rng(0).integers(0, 256, size=(48, 64, 3), dtype=np.uint8)
    stored = Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90)  # 64 x 48 on disk
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    stored.save(root / "JPEGImages" / "img_000.png", exif=exif.tobytes())
    item = build_dataset("custom", root, "train")[0]
    np.testing.assert_array_equal(item["image"], upright)
    # A stray tag on pixels that already match the label: the stored orientation is kept.
    Image.fromarray(upright).save(root / "JPEGImages" / "img_000.png", exif=exif.tobytes())
    item = build_dataset("custom", root, "train")[0]
    np.testing.assert_array_equal(item["image"], upright)


def test_dataset_transform_determinism(tmp_path: Path) -> None:
    write_voc(tmp_path, num_train=2, num_val=1)
    aug = TrainAugmentation(crop_size=32, scale=(64, 48))
    ds = build_dataset("voc", tmp_path, "train", transform=aug, seed=3)
    a, b = ds[0], ds[0]
    assert a["image"].shape == (3, 32, 32) and a["image"].dtype == torch.uint8
    assert a["label"].shape == (32, 32) and a["label"].dtype == torch.int64
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])
    changed = []
    for epoch in range(1, 4):
        ds.set_epoch(epoch)
        changed.append(not torch.equal(ds[0]["image"], a["image"]))
    assert any(changed)


# --- transforms ------------------------------------------------------------------------------------------


def test_train_augmentation_pads_with_ignore() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(1, 256, size=(20, 30, 3), dtype=np.uint8)
    label = rng.integers(0, 5, size=(20, 30)).astype(np.int64)
    aug = TrainAugmentation(
        crop_size=40, scale=(30, 20), ratio_range=(1.0, 1.0), flip_prob=0.0, photometric=False
    )
    out_image, out_label = aug(image, label, np.random.default_rng(1))
    assert out_image.shape == (3, 40, 40) and out_image.dtype == torch.uint8
    assert out_label.shape == (40, 40) and out_label.dtype == torch.int64
    assert (out_label[20:] == 255).all() and (out_label[:, 30:] == 255).all()
    assert (out_image[:, 20:] == 0).all() and (out_image[:, :, 30:] == 0).all()
    np.testing.assert_array_equal(out_label[:20, :30].numpy(), label)
    np.testing.assert_array_equal(out_image[:, :20, :30].permute(1, 2, 0).numpy(), image)


def test_train_augmentation_rescale_flip_and_photometric() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(30, 40, 3), dtype=np.uint8)
    label = np.tile(np.arange(40), (30, 1)).astype(np.int64)  # label = column index
    # Ratio 2 on img_scale (40, 30): the 40x30 image becomes 80x60.
    flip = TrainAugmentation(
        crop_size=100, scale=(40, 30), ratio_range=(2.0, 2.0), flip_prob=1.0, photometric=False
    )
    out_image, out_label = flip(image, label, np.random.default_rng(0))
    assert (
        (out_label[:60, :80] != 255).all()
        and (out_label[60:] == 255).all()
        and (out_label[:, 80:] == 255).all()
    )
    assert out_label[0, :4].tolist() == [39, 39, 38, 38]  # flipped, nearest-upsampled columns
    photometric = TrainAugmentation(crop_size=30, scale=(40, 30), ratio_range=(1.0, 1.0), flip_prob=0.0)
    changed = 0
    for seed in range(4):
        img, lab = photometric(image, label, np.random.default_rng(seed))
        assert img.dtype == torch.uint8
        start = int(lab[0, 0])  # label = column index: where the crop started
        np.testing.assert_array_equal(lab.numpy(), label[:, start : start + 30])  # labels untouched
        crop = image[:, start : start + 30]
        changed += not np.array_equal(img.permute(1, 2, 0).numpy(), crop)
    assert changed > 0


def test_train_augmentation_is_deterministic() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(50, 70, 3), dtype=np.uint8)
    label = rng.integers(0, 3, size=(50, 70)).astype(np.int64)
    aug = TrainAugmentation(crop_size=32, scale=(70, 50))
    a = aug(image, label, np.random.default_rng(5))
    b = aug(image, label, np.random.default_rng(5))
    c = aug(image, label, np.random.default_rng(6))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_cat_max_ratio() -> None:
    # Vertical stripes: class 0 in columns 0..39, 1 in 40..59, 2 in 60..99. A 50x50 crop is
    # dominated (one class >= 75%) only at left offsets 0..2 and 48..50.
    label = np.zeros((100, 100), dtype=np.int64)
    label[:, 40:60] = 1
    label[:, 60:] = 2
    label[95:, :] = 255  # ignore pixels are not counted
    image = np.zeros((100, 100, 3), dtype=np.uint8)

    def dominant_share(out_label: torch.Tensor) -> float:
        values = out_label[out_label != 255]
        return torch.bincount(values).max().item() / values.numel()

    kwargs = {
        "crop_size": 50,
        "scale": (100, 100),
        "ratio_range": (1.0, 1.0),
        "flip_prob": 0.0,
        "photometric": False,
    }
    limited = TrainAugmentation(cat_max_ratio=0.75, **kwargs)
    free = TrainAugmentation(cat_max_ratio=1.0, **kwargs)
    limited_shares = [dominant_share(limited(image, label, np.random.default_rng(s))[1]) for s in range(50)]
    free_shares = [dominant_share(free(image, label, np.random.default_rng(s))[1]) for s in range(50)]
    assert max(limited_shares) < 0.75
    assert max(free_shares) >= 0.75  # without the constraint, dominated crops do occur


def test_eval_transform_keeps_label() -> None:
    image = np.zeros((48, 64, 3), dtype=np.uint8)
    label = np.arange(48 * 64).reshape(48, 64) % 7
    out_image, out_label = EvalTransform(short_side=32)(image, label)
    assert out_image.shape == (3, 32, 43) and out_image.dtype == torch.uint8
    assert out_label.shape == (48, 64) and out_label.dtype == torch.int64
    np.testing.assert_array_equal(out_label.numpy(), label)
    assert EvalTransform(short_side=None)(image, label)[0].shape == (3, 48, 64)


def test_resize_label_is_nearest() -> None:
    label = np.array([[0, 1], [2, 255]], dtype=np.int64)
    np.testing.assert_array_equal(
        resize_label(label, (4, 4)),
        [[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 255, 255], [2, 2, 255, 255]],
    )


# --- COCO-Stuff converter --------------------------------------------------------------------------------


def test_prepare_coco_stuff(tmp_path: Path) -> None:
    base = write_stuffthingmaps(tmp_path, splits=("train2017", "val2017"), num_images=2)
    with pytest.raises(DataLayoutError, match=re.escape(f"make it with: mvpseg prepare coco-stuff {tmp_path}") + "$"):
        build_dataset("coco-stuff", tmp_path, "val")

    assert prepare_coco_stuff(tmp_path, progress=False) == 4
    target = base / "annotations" / "val2017" / "000000000001_labelTrainIds.png"
    converted = raw_label(target)
    assert converted[0, : len(STUFFTHINGMAPS_STAMP_RAW)].tolist() == list(STUFFTHINGMAPS_STAMP_TRAIN_IDS)
    values = set(np.unique(converted).tolist())
    assert values <= set(range(171)) | {255}
    raw = raw_label(base / "annotations" / "val2017" / "000000000001.png")
    assert (converted[raw == 182] == 255).all() and (converted[raw == 255] == 255).all()
    assert not [p for p in target.parent.iterdir() if p.name.startswith(".")]  # no temp files left

    mtime = os.stat(target).st_mtime_ns
    assert prepare_coco_stuff(base, progress=False) == 0  # idempotent
    assert os.stat(target).st_mtime_ns == mtime
    assert len(build_dataset("coco-stuff", tmp_path, "val")) == 2

    with pytest.raises(DataLayoutError, match="test2017"):
        prepare_coco_stuff(tmp_path, splits=("test2017",), progress=False)


def test_prepare_coco_stuff_workers(tmp_path: Path) -> None:
    single = write_stuffthingmaps(tmp_path / "a", num_images=3)
    multi = write_stuffthingmaps(tmp_path / "b", num_images=3)
    assert prepare_coco_stuff(single, splits=("val2017",), progress=False) == 3
    assert prepare_coco_stuff(multi, splits=("val2017",), num_workers=2, progress=False) == 3
    for path in sorted((single / "annotations" / "val2017").glob("*_labelTrainIds.png")):
        np.testing.assert_array_equal(
            raw_label(path), raw_label(multi / "annotations" / "val2017" / path.name)
        )
