"""The package's one way to find and read image files: which names count as images, and how bytes
become an RGB uint8 array.

Why one module: `convert --from-folder`, `make-pairs`, detection and `align` used to accept different
suffix sets and to decode differently, so a photo could work in one command and be ignored or break in
the next.  The rules, once:

* A file is *listed* by its suffix (`IMAGE_SUFFIXES`, case-insensitive; hidden files never), but *read*
  by its content: a WebP or PNG saved as `.jpg` (phones and messengers do this) decodes normally.
* Pixels come out RGB uint8 (H, W, 3) the way a photo viewer shows them: EXIF orientation applied
  (OpenCV's `imdecode` with `IMREAD_COLOR` does this for JPEG, PNG, WebP and TIFF; the alpha path below
  does it with Pillow), grey expanded, 16-bit scaled to 8-bit, and transparency composited over white
  (the RGB stored under transparent pixels is arbitrary, often black or leftovers of an edit).
* The size is read from the header *before* decoding, so a huge photo (or a tiny file that claims
  20000x20000 pixels) never allocates gigabytes: a JPEG over `max_pixels` is decoded at 1/2, 1/4 or 1/8
  scale by libjpeg itself (`IMREAD_REDUCED_COLOR_*`, the DCT is scaled, the full image never exists),
  and `LoadedImage.note` says so for the caller to report; other formats cannot be decoded reduced and
  are refused with the file's size in the message.
* A file that cannot be used (missing, empty, not an image, corrupt, too large) raises `DatasetError`
  with one line naming it.
* A photo is resized (`resize_image`, `downscale`) with INTER_AREA when it shrinks and INTER_LINEAR
  when it only grows, and written back (`encode_jpeg`) at `JPEG_QUALITY`, the same in every command.
"""

from __future__ import annotations

import dataclasses
import io
import math
import warnings
from pathlib import Path

import numpy as np

from face_recognition_tf.errors import DatasetError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm"})
# 64 million pixels (8000x8000, 192 MB as RGB) covers every camera's normal output; larger JPEGs are
# decoded reduced, larger images of other formats are refused
MAX_PIXELS = 64_000_000
JPEG_REDUCTIONS = (1, 2, 4, 8)  # the scales libjpeg can decode at directly
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclasses.dataclass(frozen=True)
class LoadedImage:
    """A decoded photo and what happened on the way.

    `width`/`height` are the file's own size as displayed (after EXIF orientation); `scale` is the
    returned image's size over that (1.0 unless it was downscaled), so coordinates found in `image`
    map back to the file by dividing by `scale`.  `note` is None or one sentence for a report.
    """

    image: np.ndarray
    width: int
    height: int
    scale: float
    format: str
    note: str | None = None


# what `frtf align` writes beside the identity folders of its output: not people
ALIGN_REPORT = "align_report.json"
CONTACT_SHEETS = "contact_sheets"


def identity_folders(root) -> list[Path]:
    """The identity sub-folders of a folder of people (`root/alice/`, `root/bob/`), sorted: hidden folders
    and, in an `frtf align` output, its contact sheets are not people.  Every command reading such a tree
    (convert --from-folder, make-pairs, split, galleries) lists it here."""
    root = Path(root)
    not_people = {CONTACT_SHEETS} if (root / ALIGN_REPORT).is_file() else set()
    return sorted(p for p in root.iterdir()
                  if p.is_dir() and not p.name.startswith(".") and p.name not in not_people)


def aligned_tree(root) -> bool:
    """Whether `root` holds `frtf align` crops: the align output itself (its report beside the people) or a
    part (train/val/test) that `frtf split` made of one.  Commands reading such a tree skip detection:
    running MTCNN again on a 112x112 crop re-aligns an already aligned face, or misses it."""
    import json

    from face_recognition_tf.data.split import SPLIT_FILE

    root = Path(root)
    if (root / ALIGN_REPORT).is_file():
        return True
    split = root.parent / SPLIT_FILE
    try:
        document = json.loads(split.read_text()) if split.is_file() else {}
    except (OSError, ValueError):
        return False
    return bool(document.get("aligned")) and root.name in document.get("parts", {})


def has_image_suffix(path) -> bool:
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def list_images(folder, *, recursive: bool = True) -> list[Path]:
    """Image files in `folder` (and its sub-folders unless `recursive=False`), sorted.

    Hidden files and anything inside hidden folders are left out: macOS `._photo.jpg` resource forks,
    editors' backups and this package's own half-written temporary files (`.name.XXXX.tmp`).
    """
    folder = Path(folder)
    found = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(
        p for p in found
        if has_image_suffix(p) and not any(part.startswith(".") for part in p.relative_to(folder).parts)
        and p.is_file()
    )


def read_rgb(path, *, max_side: int | None = None, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """The photo at `path` as RGB uint8 (H, W, 3); see `load_image` for the options."""
    return load_image(path, max_side=max_side, max_pixels=max_pixels).image


def load_image(path, *, max_side: int | None = None, max_pixels: int = MAX_PIXELS) -> LoadedImage:
    """Read and decode one image file by its content.

    `max_side`: downscale (area interpolation) so the longer side is at most this many pixels.
    `max_pixels`: the most pixels ever decoded; see the module docstring.  The bytes are read with
    numpy rather than `cv2.imread`, which fails silently on non-ASCII paths on some platforms.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: image file not found" if not path.exists() else f"{path}: not a file")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read image ({exc.strerror or exc})") from None
    return decode_image(data, str(path), max_side=max_side, max_pixels=max_pixels)


def decode_image(data: bytes, source: str = "image", *, max_side: int | None = None,
                 max_pixels: int = MAX_PIXELS) -> LoadedImage:
    """Decode image file bytes (any format OpenCV or Pillow reads); `source` names them in errors."""
    if max_side is not None and max_side < 1:
        raise ValueError(f"max_side must be a positive number of pixels, got {max_side}")
    if not data:
        raise DatasetError(f"{source}: not a readable image (empty file)")
    if data[:3] == b"\xff\xd8\xff":
        loaded = _decode_jpeg(data, source, max_side, max_pixels)
    else:
        loaded = _decode_other(data, source, max_pixels)
    return _fit(loaded, max_side)


def _decode_jpeg(data: bytes, source: str, max_side: int | None, max_pixels: int) -> LoadedImage:
    import cv2

    size = _jpeg_size(data)
    if size is None:
        raise DatasetError(f"{source}: not a readable image (corrupt JPEG: no frame header)")
    width, height = size
    factor = _jpeg_reduction(width, height, max_side, max_pixels)
    if factor is None:
        raise DatasetError(
            f"{source}: {width}x{height} JPEG is too large to decode even at 1/8 scale "
            f"({_mpx(width * height)} Mpx; limit {_mpx(max_pixels)} Mpx)"
        )
    flag = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4,
            8: cv2.IMREAD_REDUCED_COLOR_8}[factor]
    image = cv2.imdecode(np.frombuffer(data, np.uint8), flag)
    if image is None:
        raise DatasetError(f"{source}: not a readable image (corrupt or unsupported JPEG)")
    image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB, dst=image)
    if width * height == 0:
        height, width = image.shape[:2]
    elif image.shape[:2] != (math.ceil(height / factor), math.ceil(width / factor)):
        width, height = height, width  # OpenCV applied an EXIF orientation that turns it 90 degrees
    note = None
    if factor > 1:
        reason = "over the decoding limit" if width * height > max_pixels else "for the requested size"
        note = (f"{width}x{height} photo ({_mpx(width * height)} Mpx) decoded at 1/{factor} scale "
                f"({image.shape[1]}x{image.shape[0]}) {reason}")
    return LoadedImage(image, width, height, image.shape[1] / width, "JPEG", note)


def _decode_other(data: bytes, source: str, max_pixels: int) -> LoadedImage:
    import cv2

    size = _png_size(data)
    if size is not None and size[0] * size[1] > max_pixels:
        raise DatasetError(_too_large(source, "PNG", *size, max_pixels))
    header = _pillow_header(data, source, max_pixels)
    if header is not None:
        fmt, (width, height), has_alpha = header
        if width * height > max_pixels:
            raise DatasetError(_too_large(source, fmt, width, height, max_pixels))
        if has_alpha:
            return _decode_with_pillow(data, source, fmt)
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        if header is not None:  # a format Pillow reads and this OpenCV build does not (GIF, ICO, ...)
            return _decode_with_pillow(data, source, header[0])
        raise DatasetError(f"{source}: not a readable image (not a known image format, or corrupt)")
    image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB, dst=image)
    fmt = header[0] if header is not None else "image"
    return LoadedImage(image, image.shape[1], image.shape[0], 1.0, fmt)


def _pillow_header(data: bytes, source: str, max_pixels: int):
    """(format, (width, height), has_alpha) from the header, or None if Pillow does not know the format.

    Pillow opens lazily (no pixels decoded).  Its decompression-bomb check refuses images over about
    179 Mpx before we can, so that error is turned into ours.
    """
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                alpha = img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info
                return img.format or "image", img.size, alpha
    except Image.DecompressionBombError:
        raise DatasetError(f"{source}: image is too large to decode (over 179 Mpx; limit "
                           f"{_mpx(max_pixels)} Mpx, and only JPEG can be decoded at reduced size)") from None
    except Exception:  # Pillow raises many kinds (UnidentifiedImageError, SyntaxError, struct.error, ...)
        return None


def _decode_with_pillow(data: bytes, source: str, fmt: str) -> LoadedImage:
    """Images with transparency (OpenCV keeps alpha only without EXIF orientation) and formats
    OpenCV lacks: Pillow decodes, `exif_transpose` orients, transparent pixels become white."""
    from PIL import Image, ImageOps

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                rgba = np.asarray(ImageOps.exif_transpose(img).convert("RGBA"))
    except Exception as exc:
        raise DatasetError(f"{source}: not a readable image (corrupt {fmt}: {exc})") from None
    alpha = rgba[:, :, 3:4].astype(np.float32) / 255.0
    rgb = rgba[:, :, :3].astype(np.float32) * alpha + 255.0 * (1.0 - alpha)
    image = np.ascontiguousarray(np.clip(np.rint(rgb), 0, 255).astype(np.uint8))
    return LoadedImage(image, image.shape[1], image.shape[0], 1.0, fmt)


def resize_image(image: np.ndarray, size) -> np.ndarray:
    """`image` at `size` = (width, height): the package's one photo resize.

    INTER_AREA when either side shrinks (it averages the pixels a target pixel covers, so there is no
    aliasing), INTER_LINEAR when the image only grows (INTER_AREA enlarges almost like nearest
    neighbour, which leaves blocks).  `--resize` in `convert --from-folder` and `make-pairs`, and every
    downscale of a photo for detection, go through here.
    """
    import cv2

    width, height = int(size[0]), int(size[1])
    shrink = height < image.shape[0] or width < image.shape[1]
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


JPEG_QUALITY = 95  # what the package writes when it has to (re-)encode a photo or a crop


def encode_jpeg(image: np.ndarray, quality: int = JPEG_QUALITY) -> bytes | None:
    """RGB uint8 (H, W, 3) -> JPEG bytes (the inverse of `decode_image`'s colour order), or None if
    OpenCV cannot encode it."""
    import cv2

    ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    return encoded.tobytes() if ok else None


def downscale(image: np.ndarray, max_side: int | None) -> tuple[np.ndarray, float]:
    """`image` shrunk so that its longer side is at most `max_side` (None: no limit), and the ratio
    of the new size to the old (1.0 when it already fits)."""
    height, width = image.shape[:2]
    if not max_side or max(height, width) <= max_side:
        return image, 1.0
    ratio = max_side / float(max(height, width))
    return resize_image(image, (max(1, round(width * ratio)), max(1, round(height * ratio)))), ratio


def _fit(loaded: LoadedImage, max_side: int | None) -> LoadedImage:
    """Downscale to `max_side` (`downscale`) and say so in the note."""
    image, ratio = downscale(loaded.image, max_side)
    if ratio == 1.0:
        return loaded
    size = (image.shape[1], image.shape[0])
    note = (f"{loaded.width}x{loaded.height} photo downscaled to {size[0]}x{size[1]} "
            f"(longer side at most {max_side})")
    return dataclasses.replace(loaded, image=image, scale=size[0] / loaded.width, note=note)


def _jpeg_reduction(width: int, height: int, max_side: int | None, max_pixels: int) -> int | None:
    """The libjpeg scale denominator: the smallest that fits `max_pixels`, or a larger one when the
    result would still be at least `max_side` (decoding fewer pixels is faster and loses nothing)."""
    if width * height == 0:  # height defined later in the stream (DNL): let the decoder find out
        return 1
    fitting = [f for f in JPEG_REDUCTIONS if math.ceil(width / f) * math.ceil(height / f) <= max_pixels]
    if not fitting:
        return None
    factor = fitting[0]
    if max_side is not None:
        factor = max([factor] + [f for f in fitting if max(math.ceil(width / f), math.ceil(height / f)) >= max_side])
    return factor


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) as stored (before EXIF orientation) from the first SOF marker, or None."""
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            i += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image / start of scan before any frame header
            return None
        if marker in _JPEG_SOF:
            if i + 9 > n:
                return None
            return int.from_bytes(data[i + 7:i + 9], "big"), int.from_bytes(data[i + 5:i + 7], "big")
        i += 2 + int.from_bytes(data[i + 2:i + 4], "big")
    return None


def _png_size(data: bytes) -> tuple[int, int] | None:
    if data[:8] != _PNG_SIGNATURE or data[12:16] != b"IHDR" or len(data) < 24:
        return None
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def _too_large(source: str, fmt: str, width: int, height: int, max_pixels: int) -> str:
    return (f"{source}: {width}x{height} {fmt} image is too large to decode ({_mpx(width * height)} Mpx; "
            f"limit {_mpx(max_pixels)} Mpx, and only JPEG can be decoded at reduced size): downscale it first")


def _mpx(pixels: int) -> str:
    return f"{pixels / 1e6:.0f}" if pixels >= 10e6 else f"{pixels / 1e6:.1f}"
