"""Robust decoding and folder handling on real files."""

import cv2
import numpy as np
import pytest
from asserts import raises

from edgecnn.data import (
    decode_resized,
    find_splits,
    find_training_splits,
    iter_video_frames,
    list_images,
    map_classes,
    read_image,
    scan_image_folder,
)
from edgecnn.errors import UserInputError
from edgecnn.preprocess import PreprocessConfig


def test_read_image_formats_and_corrupt(tmp_path):
    cv2.imwrite(str(tmp_path / "gray.png"), np.full((10, 12), 80, np.uint8))
    cv2.imwrite(str(tmp_path / "rgba.png"), np.full((10, 12, 4), 90, np.uint8))
    cv2.imwrite(str(tmp_path / "deep.png"), np.full((10, 12, 3), 40000, np.uint16))
    (tmp_path / "corrupt.jpg").write_bytes(b"\xff\xd8\xff garbage")
    (tmp_path / "empty.png").write_bytes(b"")
    for name in ("gray.png", "rgba.png", "deep.png"):
        img = read_image(tmp_path / name)
        assert img.shape == (10, 12, 3) and img.dtype == np.uint8, name
    assert read_image(tmp_path / "corrupt.jpg") is None
    assert read_image(tmp_path / "empty.png") is None
    assert read_image(tmp_path / "missing.png") is None


@pytest.mark.parametrize("ext", [".gif", ".avif"])
def test_gif_and_avif_images_are_listed_and_decoded(tmp_path, ext):
    """Both are common in scraped image folders; OpenCV >= 4.11 decodes them (a GIF: its first frame)."""
    img = np.zeros((24, 32, 3), np.uint8)
    img[:, 16:] = (0, 0, 255)
    ok, buf = cv2.imencode(ext, img)
    if not ok:
        pytest.skip(f"this OpenCV {cv2.__version__} has no {ext} codec")
    path = tmp_path / "cls" / f"a{ext.upper()}"
    path.parent.mkdir()
    buf.tofile(path)
    assert list_images(tmp_path) == [path]
    decoded = read_image(path)
    assert decoded.shape == (24, 32, 3)
    assert decoded[:, :14].max() < 40 and decoded[:, 18:, 2].min() > 200  # black left, red right (lossy codecs)
    assert scan_image_folder(tmp_path).counts() == {"cls": 1}


def test_scan_folder_names_empty_class_folders(tmp_path, image_folder):
    (image_folder / "fox").mkdir()
    (image_folder / "owl").mkdir()
    (image_folder / "owl" / "readme.txt").write_text("no images yet")
    folder = scan_image_folder(image_folder)
    assert folder.classes == ["cat", "dog"] and folder.empty == ["fox", "owl"]


# EXIF Orientation k -> the numpy transform that turns the stored pixels into the upright (displayed) image.
_UPRIGHT = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],  # mirrored left-right
    3: lambda a: a[::-1, ::-1],  # rotated 180°
    4: lambda a: a[::-1],  # mirrored top-bottom
    5: lambda a: a.transpose(1, 0, 2),  # transposed
    6: lambda a: np.rot90(a, -1),  # rotate 90° clockwise to display (the usual portrait phone photo)
    7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),  # transversed
    8: lambda a: np.rot90(a, 1),  # rotate 90° counter-clockwise to display
}


def _quadrants(h=48, w=80) -> np.ndarray:
    """Non-square BGR image with four flat, distinct quadrants: every flip and rotation gives a different image."""
    img = np.empty((h, w, 3), np.uint8)
    img[: h // 2, : w // 2] = (255, 0, 0)
    img[: h // 2, w // 2 :] = (0, 255, 0)
    img[h // 2 :, : w // 2] = (0, 0, 255)
    img[h // 2 :, w // 2 :] = (255, 255, 255)
    return img


@pytest.mark.parametrize("orientation", range(1, 9))
def test_read_image_applies_exif_orientation(tmp_path, orientation):
    from PIL import Image, ImageOps  # Pillow (edgecnn[dev]): only the tests use it, to write the EXIF tag

    stored = _quadrants()
    path = tmp_path / f"phone_{orientation}.jpg"
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(np.ascontiguousarray(stored[:, :, ::-1])).save(path, exif=exif, quality=95)
    assert Image.open(path).getexif()[0x0112] == orientation

    expected = _UPRIGHT[orientation](stored)
    with Image.open(path) as im:  # Pillow's reading of the tag must agree with the table above
        pil_upright = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))[:, :, ::-1]
    img = read_image(path)
    assert img.shape == expected.shape == pil_upright.shape and img.dtype == np.uint8
    assert np.abs(img.astype(int) - expected).mean() < 4  # JPEG tolerance; a wrong orientation is off by ~100
    assert np.abs(img.astype(int) - pil_upright).mean() < 4
    assert np.abs(pil_upright.astype(int) - expected).mean() < 4


def test_read_image_orientation_on_gray_and_16bit(tmp_path):
    """The conversions keep working on oriented files: gray JPEG with EXIF, 16-bit PNG without."""
    from PIL import Image

    exif = Image.Exif()
    exif[0x0112] = 6
    gray = _quadrants()[:, :, 1]
    Image.fromarray(gray).save(tmp_path / "gray.jpg", exif=exif, quality=95)
    img = read_image(tmp_path / "gray.jpg")
    assert img.shape == (80, 48, 3) and img.dtype == np.uint8
    assert np.abs(img[:, :, 0].astype(int) - np.rot90(gray, -1)).mean() < 4
    assert (img[:, :, 0] == img[:, :, 2]).all()
    deep = np.zeros((10, 12, 3), np.uint16)
    deep[:5] = 65535
    cv2.imwrite(str(tmp_path / "deep.png"), deep)
    assert (read_image(tmp_path / "deep.png") == (deep >> 8).astype(np.uint8)).all()


def test_decompression_bomb_is_an_unreadable_file_not_a_crash(tmp_path):
    """A tiny PNG claiming 40000x40000 pixels: OpenCV refuses it with an exception (CV_IO_MAX_IMAGE_PIXELS), which
    must become 'unreadable' like any bad file, so the other images of a folder are still processed."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", 40000, 40000, 8, 0, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(b"\x00" * 100))
        + chunk(b"IEND", b"")
    )
    assert read_image(bomb) is None


def test_scan_folder_counts_and_errors(tmp_path, image_folder):
    folder = scan_image_folder(image_folder)
    assert folder.classes == ["cat", "dog"] and len(folder) == 12
    (image_folder / "cat" / "notes.txt").write_text("x")
    assert len(scan_image_folder(image_folder).ignored) == 1
    (tmp_path / "empty").mkdir()
    with raises(UserInputError, "empty"):
        scan_image_folder(tmp_path / "empty")
    with raises(UserInputError, "2"):
        scan_image_folder(_single(tmp_path), min_classes=2)
    with raises(UserInputError, "nope"):
        scan_image_folder(tmp_path / "nope")


def _single(tmp_path):
    d = tmp_path / "single" / "only"
    d.mkdir(parents=True)
    cv2.imwrite(str(d / "a.png"), np.zeros((4, 4, 3), np.uint8))
    return tmp_path / "single"


def test_decode_resized_skips_corrupt(image_folder):
    (image_folder / "cat" / "broken.jpg").write_bytes(b"nope")
    paths = list_images(image_folder)
    cfg = PreprocessConfig(input_size=(16, 16), resize="resize")
    seen = []
    out = decode_resized(paths, cfg, labels=list(range(len(paths))), progress=lambda d, t: seen.append((d, t)))
    assert out.images.shape == (12, 16, 16, 3) and len(out.corrupt) == 1
    assert out.corrupt[0].name == "broken.jpg" and seen[-1] == (13, 13)
    assert len(out.labels) == 12 and len(out.paths) == 12


def test_find_splits(tmp_path):
    (tmp_path / "train").mkdir()
    assert find_splits(tmp_path) == (tmp_path, None)
    (tmp_path / "val").mkdir()
    assert find_splits(tmp_path) == (tmp_path / "train", tmp_path / "val")
    assert find_training_splits(tmp_path) == (tmp_path / "train", tmp_path / "val")
    (tmp_path / "test").mkdir()  # evaluation scores test/; training validates on val/ and leaves test/ unseen
    assert find_splits(tmp_path) == (tmp_path / "train", tmp_path / "test")
    assert find_training_splits(tmp_path) == (tmp_path / "train", tmp_path / "val")
    (tmp_path / "val").rmdir()  # a plain train/ + test/ pair (CIFAR-10's layout) validates on test/
    assert find_training_splits(tmp_path) == (tmp_path / "train", tmp_path / "test")
    (tmp_path / "train").rename(tmp_path / "training")
    (tmp_path / "validation").mkdir()
    assert find_training_splits(tmp_path) == (tmp_path / "training", tmp_path / "validation")


def test_numeric_labels_map_by_name_never_by_index():
    """A model trained on folders '1', '2': those folders are its classes by name, and a folder '0' is no class of it
    (the class-id rule would have scored it as index 0, whose label is '1')."""
    assert map_classes(["1", "2"], ["1", "2"]) == [0, 1]
    assert map_classes(["2", "1"], ["1", "2"]) == [1, 0]
    with raises(UserInputError, "0"):
        map_classes(["0", "1", "2"], ["1", "2"])
    with raises(UserInputError, "0"):
        map_classes(["0"], ["cat", "7"])  # one numeric label is enough to switch ids off


def test_map_classes_by_name_key_and_id():
    labels, keys = ["tench", "goldfish", "Great White Shark"], ["n01", "n02", "n03"]
    assert map_classes(["goldfish", "n03", "0", "great white shark"], labels, keys) == [1, 2, 0, 2]
    with raises(UserInputError, "zebra"):
        map_classes(["zebra"], labels, keys)


def test_map_classes_on_imagenet_exact_case_first_and_never_a_silent_pick():
    """ImageNet repeats names: 'Cardigan' (264, a corgi) vs 'cardigan' (474, a sweater) differ only in case; 'crane'
    (134 bird, 517 machine) and 'maillot' (638, 639) are spelled the same. A folder was scored against the wrong
    class: the case-insensitive lookup let the later index win."""
    from edgecnn.contract import imagenet_labels

    names, wnids = imagenet_labels()
    assert map_classes(["Cardigan", "cardigan", "n02012849", "n03126707", "134"], names, wnids) == [
        264,
        474,
        134,
        517,
        134,
    ]
    for folder in ("crane", "maillot", "CARDIGAN"):
        with raises(UserInputError, folder):
            map_classes([folder], names, wnids)
    with raises(UserInputError, "crane"):
        map_classes(["crane"], names, wnids)


def test_map_classes_reads_folder_spellings():
    import unicodedata

    labels = ["great white shark", "café", "tench"]
    folders = ["great_white_shark", "Great-White-Shark", "tench ", unicodedata.normalize("NFD", "café")]
    assert map_classes(folders, labels) == [0, 0, 2, 1]
    with raises(UserInputError, "model classes"):  # not an int() crash on a Unicode digit
        map_classes(["²"], labels)


def test_video_frames(tmp_path):
    from conftest import write_video

    path = write_video(tmp_path / "v.avi", frames=10, size=(32, 24), fps=10, fourcc="MJPG")
    frames = list(iter_video_frames(path, every=3))
    assert [i for i, _ in frames] == [0, 3, 6, 9] and frames[0][1].shape == (24, 32, 3)
    with pytest.raises(UserInputError):
        list(iter_video_frames(tmp_path / "missing.mp4"))
