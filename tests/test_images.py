"""The package's one image reader (faces/images.py): files are listed by suffix and read by content,
come out RGB uint8 the way a viewer shows them, and a huge or broken file never costs gigabytes or a
traceback.  Everything here is synthetic and small on disk, so it runs in seconds without TensorFlow."""

import io
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps

from face_recognition_tf.errors import DatasetError
from face_recognition_tf.faces import images
from face_recognition_tf.faces.images import IMAGE_SUFFIXES, decode_image, list_images, load_image, read_rgb


def _two_colour(height=20, width=40) -> np.ndarray:
    """RGB: red left half, blue right half; any rotation or channel swap shows."""
    rgb = np.zeros((height, width, 3), np.uint8)
    rgb[:, : width // 2] = (255, 0, 0)
    rgb[:, width // 2:] = (0, 0, 255)
    return rgb


def exif_jpeg(rgb: np.ndarray, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=95, exif=exif.tobytes())
    return buf.getvalue()


def huge_jpeg(width: int, height: int) -> bytes:
    """A 16x16 grey JPEG whose frame header claims width x height: a valid start of a huge photo, a few
    hundred bytes on disk (libjpeg fills the missing scan data with grey and warns)."""
    data = bytearray(cv2.imencode(".jpg", np.full((16, 16, 3), 90, np.uint8))[1].tobytes())
    i = 2
    while data[i + 1] not in (0xC0, 0xC1, 0xC2):
        i += 2 + int.from_bytes(data[i + 2:i + 4], "big")
    data[i + 5:i + 7] = height.to_bytes(2, "big")
    data[i + 7:i + 9] = width.to_bytes(2, "big")
    return bytes(data)


def huge_png(width: int, height: int) -> bytes:
    """A genuine grey PNG of width x height, compressed row by row so memory stays at one row."""
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    packer, row = zlib.compressobj(1), b"\x00" + bytes(width)
    idat = b"".join([packer.compress(row) for _ in range(height)] + [packer.flush()])
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def test_one_suffix_set_and_listing_skips_hidden_files(tmp_path):
    assert IMAGE_SUFFIXES == {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
    from face_recognition_tf.data.conversion import folder
    from face_recognition_tf.evaluation import pairs
    from face_recognition_tf.faces import detect

    assert folder.IMAGE_SUFFIXES is IMAGE_SUFFIXES and pairs.IMAGE_SUFFIXES is IMAGE_SUFFIXES
    assert detect.IMAGE_SUFFIXES is IMAGE_SUFFIXES and detect.list_images is list_images
    for name in ["b.JPG", "a.png", "c.Tiff", ".hidden.jpg", "._a.jpg", "notes.txt", ".x.jpg.ab12.tmp"]:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "d.webp").write_bytes(b"x")
    (tmp_path / ".cache").mkdir()
    (tmp_path / ".cache" / "e.jpg").write_bytes(b"x")
    (tmp_path / "folder.jpg").mkdir()  # a folder with an image-like name is not an image
    expected = [tmp_path / "a.png", tmp_path / "b.JPG", tmp_path / "c.Tiff"]
    assert list_images(tmp_path, recursive=False) == expected
    assert list_images(tmp_path) == sorted(expected + [tmp_path / "sub" / "d.webp"])


def test_content_not_extension_decides_the_format(tmp_path):
    rgb = _two_colour()
    webp = tmp_path / "phone.jpg"  # WebP bytes under a .jpg name
    Image.fromarray(rgb).save(webp, "WEBP", lossless=True)
    loaded = load_image(webp)
    assert loaded.format == "WEBP" and loaded.note is None and loaded.scale == 1.0
    np.testing.assert_array_equal(loaded.image, rgb)
    png = tmp_path / "scan.bmp"  # PNG bytes under a .bmp name
    Image.fromarray(rgb).save(png, "PNG")
    np.testing.assert_array_equal(read_rgb(png), rgb)


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_orientation_is_applied_like_a_photo_viewer(tmp_path, orientation):
    data = exif_jpeg(_two_colour(), orientation)
    path = tmp_path / "phone.jpg"
    path.write_bytes(data)
    expected = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"))
    loaded = load_image(path)
    assert loaded.image.shape == expected.shape
    assert (loaded.width, loaded.height) == (expected.shape[1], expected.shape[0])
    assert np.abs(loaded.image.astype(int) - expected.astype(int)).max() <= 2  # two JPEG decoders
    if orientation == 6:  # "rotate 90 degrees clockwise to display": the red left half ends up on top
        assert loaded.image.shape == (40, 20, 3)
        assert loaded.image[2, 10, 0] > 200 and loaded.image[-3, 10, 2] > 200
    # a reduced decode keeps the orientation, and the original size is still reported upright
    small = load_image(path, max_side=10)
    assert (small.width, small.height) == (loaded.width, loaded.height)
    assert max(small.image.shape[:2]) == 10
    assert (small.image.shape[0] > small.image.shape[1]) == (loaded.image.shape[0] > loaded.image.shape[1])


def test_grey_rgba_and_16_bit_become_8_bit_rgb(tmp_path):
    grey = tmp_path / "grey.png"
    cv2.imwrite(str(grey), np.full((6, 7), 77, np.uint8))
    image = read_rgb(grey)
    assert image.shape == (6, 7, 3) and image.dtype == np.uint8 and np.all(image == 77)

    rgba = np.zeros((4, 5, 4), np.uint8)
    rgba[..., :3] = (10, 20, 30)
    rgba[:, :2, 3] = 255  # left two columns opaque, the rest fully transparent
    rgba[:, 2, 3] = 128
    path = tmp_path / "cutout.png"
    Image.fromarray(rgba, "RGBA").save(path)
    image = read_rgb(path)
    assert image.shape == (4, 5, 3) and image.dtype == np.uint8
    assert tuple(image[0, 0]) == (10, 20, 30)  # opaque: its colour
    assert tuple(image[0, 4]) == (255, 255, 255)  # transparent: the white a viewer shows
    assert abs(int(image[0, 2, 0]) - (10 * 128 + 255 * 127) // 255) <= 1  # half: blended

    deep = np.zeros((3, 4, 3), np.uint16)
    deep[..., 2] = 65535  # red in BGR order
    deep[0, 0] = (0, 32896, 0)
    path = tmp_path / "deep.png"
    cv2.imwrite(str(path), deep)
    image = read_rgb(path)
    assert image.dtype == np.uint8 and tuple(image[1, 1]) == (255, 0, 0) and tuple(image[0, 0]) == (0, 128, 0)
    path = tmp_path / "deep_grey.png"
    cv2.imwrite(str(path), np.full((3, 4), 40000, np.uint16))
    assert np.all(read_rgb(path) == 40000 >> 8)


def test_max_side_downscales_with_a_note(tmp_path):
    path = tmp_path / "big.png"
    cv2.imwrite(str(path), np.zeros((300, 500, 3), np.uint8))
    loaded = load_image(path, max_side=100)
    assert loaded.image.shape == (60, 100, 3)
    assert (loaded.width, loaded.height, loaded.scale) == (500, 300, 0.2)
    assert "500x300 photo downscaled to 100x60" in loaded.note
    assert load_image(path, max_side=1000).note is None


def test_huge_jpeg_is_decoded_reduced_with_a_note(tmp_path):
    path = tmp_path / "huge.jpg"
    path.write_bytes(huge_jpeg(20000, 20000))
    loaded = load_image(path)
    assert loaded.image.shape == (5000, 5000, 3)  # 1/4: the first libjpeg scale under 64 Mpx
    assert (loaded.width, loaded.height, loaded.scale) == (20000, 20000, 0.25)
    assert "20000x20000" in loaded.note and "1/4 scale" in loaded.note
    assert load_image(path, max_side=1000).image.shape == (1000, 1000, 3)  # decoded at 1/8, then resized
    with pytest.raises(DatasetError, match="huge.jpg: 20000x20000 JPEG is too large to decode even at 1/8"):
        load_image(path, max_pixels=1_000_000)


def test_huge_images_never_allocate_the_full_image(tmp_path):
    """In a fresh process (no TensorFlow): the JPEG is decoded at 1/4 scale, the PNG refused from its
    header; the peak memory stays far below the 1.2 GB the full 20000x20000 RGB image would take."""
    if not Path("/proc/self/status").is_file():
        pytest.skip("needs Linux's /proc to measure peak memory")
    (tmp_path / "huge.jpg").write_bytes(huge_jpeg(20000, 20000))
    (tmp_path / "huge.png").write_bytes(huge_png(20000, 20000))
    code = (
        "import sys\n"
        "from face_recognition_tf.errors import DatasetError\n"
        "from face_recognition_tf.faces.images import load_image\n"
        "print(load_image(sys.argv[1] + '/huge.jpg').image.shape)\n"
        "try:\n    load_image(sys.argv[1] + '/huge.png')\n"
        "except DatasetError as exc:\n    print(exc)\n"
        # VmHWM, not ru_maxrss: the latter keeps the high-water mark of the forked pytest process
        "print([int(line.split()[1]) // 1024 for line in open('/proc/self/status') if line.startswith('VmHWM')][0])\n"
    )
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr
    shape, refusal, peak_mb = done.stdout.strip().splitlines()
    assert shape == "(5000, 5000, 3)"
    assert "huge.png: 20000x20000 PNG image is too large to decode (400 Mpx" in refusal
    assert int(peak_mb) < 600, f"peak memory {peak_mb} MB"


def test_unusable_files_are_one_line_errors_naming_the_file(tmp_path):
    text = tmp_path / "notes.jpg"
    text.write_text("these are not pixels\n")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    truncated = tmp_path / "cut.png"
    truncated.write_bytes(cv2.imencode(".png", np.zeros((50, 50, 3), np.uint8))[1].tobytes()[:60])
    cases = [
        (text, "notes.jpg: not a readable image"),
        (empty, "empty.png: not a readable image \\(empty file\\)"),
        (truncated, "cut.png: not a readable image"),
        (tmp_path / "missing.jpg", "missing.jpg: image file not found"),
        (tmp_path, "not a file"),
    ]
    for path, message in cases:
        with pytest.raises(DatasetError, match=message) as info:
            read_rgb(path)
        assert "\n" not in str(info.value)
    with pytest.raises(DatasetError, match="snapshot: not a readable image"):
        decode_image(b"\xff\xd8\xff\xe0 garbage", "snapshot")


def test_old_names_in_detect_read_through_the_one_reader(tmp_path):
    from face_recognition_tf.faces.detect import load_rgb, read_image

    path = tmp_path / "photo.jpg"
    path.write_bytes(exif_jpeg(_two_colour(), 6))
    np.testing.assert_array_equal(read_image(path), read_rgb(path))
    image, name = load_rgb(str(path))
    assert image.shape == (40, 20, 3) and name == str(path)
    assert images.read_rgb is read_rgb
