"""Images: which inputs are usable, and how each becomes the one stored geometry (a square JPEG).

Packing brings every image (JPEG or PNG, greyscale or RGB, any size) to one square side, so the loaders
keep one geometry: `fit="crop"` takes the centred square and resizes it, `fit="resize"` resizes the whole
image to a square. A JPEG that already is side×side, RGB or greyscale, without an EXIF orientation, is
kept byte for byte (the Kaggle rule); every other image is decoded (its EXIF orientation applied), made
square and encoded as a baseline JPEG at quality `JPEG_QUALITY` with 4:4:4 chroma, which the same Pillow
build does deterministically. Readers that predict without packing call the same functions, so an image
gets the same pixels packed or not.
"""
from __future__ import annotations

import io

from PIL import Image, ImageOps

FITS = ("crop", "resize")
JPEG_QUALITY = 95
_RESAMPLE = Image.Resampling.LANCZOS
_ORIENTATION = 0x0112  # EXIF tag
_JPEG_SOI = b"\xff\xd8\xff"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# Modes kept as they are (RGB, greyscale) or converted without loss (palette -> RGB, bilevel -> greyscale).
_USABLE = {"JPEG": {"RGB", "L"}, "PNG": {"RGB", "L", "P", "1"}}


def _orientation(im: Image.Image) -> int | None:
    return im.getexif().get(_ORIENTATION)


def _decoded(data: bytes) -> tuple[Image.Image | None, str | None]:
    """The fully decoded image of JPEG or PNG bytes, or why there is none."""
    if not data:
        return None, "empty file"
    if not data.startswith((_JPEG_SOI, _PNG_MAGIC)):
        return None, "not a JPEG or PNG (no JPEG or PNG signature at its start)"
    try:
        im = Image.open(io.BytesIO(data))
        if im.format not in _USABLE:
            return None, f"not a JPEG or PNG ({im.format})"
        if im.mode not in _USABLE[im.format]:
            return None, (f"{im.format} colour mode {im.mode} is not supported (only RGB and greyscale, 8 bits, no "
                          f"alpha); convert it to 8-bit RGB")
        im.load()  # raises on truncated or corrupt data
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError...
        return None, f"cannot decode image: {exc}"
    if im.format == "JPEG" and b"\xff\xd9" not in data[-64:]:
        return None, "truncated JPEG (no end-of-image marker)"
    return im, None


def image_problem(data: bytes) -> str | None:
    """Why these bytes are not a usable image (any JPEG or PNG, greyscale or RGB), or None. Decodes it once."""
    return _decoded(data)[1]


def to_square(img: Image.Image, side: int, fit: str) -> Image.Image:
    """`img` as a side×side image: the centred square crop resized (`crop`), or the whole image resized."""
    if fit not in FITS:
        raise ValueError(f"fit must be one of {', '.join(FITS)}, got {fit!r}")
    w, h = img.size
    if fit == "crop" and w != h:
        s = min(w, h)
        left, top = (w - s) // 2, (h - s) // 2
        img = img.crop((left, top, left + s, top + s))
    return img if img.size == (side, side) else img.resize((side, side), _RESAMPLE)


def encode_jpeg(img: Image.Image) -> bytes:
    """Baseline JPEG bytes of an RGB or greyscale image, deterministic for one Pillow build."""
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=JPEG_QUALITY, subsampling=0, optimize=False, progressive=False)
    return buf.getvalue()


def _kept_as_is(im: Image.Image, side: int) -> bool:
    return im.format == "JPEG" and im.size == (side, side) and im.mode in ("RGB", "L") and \
        _orientation(im) in (None, 1)


def square_jpeg(data: bytes, side: int, fit: str) -> tuple[bytes | None, str | None]:
    """The stored JPEG for these image bytes: (bytes, None), or (None, why the image is unusable)."""
    im, problem = _decoded(data)
    if problem:
        return None, problem
    if _kept_as_is(im, side):
        return data, None
    im = ImageOps.exif_transpose(im)  # pixels as displayed; the stored JPEG has no orientation tag
    im = im.convert("L" if im.mode in ("L", "1") else "RGB")
    return encode_jpeg(to_square(im, side, fit)), None


def stored_jpeg_problem(data: bytes, side: int) -> str | None:
    """Why these bytes are not a JPEG the loaders can take as stored (side×side, RGB or greyscale, no EXIF
    orientation, decodable), or None. The Kaggle layout's images must already be this."""
    if not data:
        return "empty file"
    if data[:3] != _JPEG_SOI:
        return "not a JPEG (no JPEG start-of-image marker)"
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.format != "JPEG":
                return f"not a JPEG ({im.format})"
            if im.size != (side, side):
                return f"image is {im.size[0]}x{im.size[1]}, expected {side}x{side}"
            orientation = _orientation(im)
            if orientation not in (None, 1):
                return (f"EXIF Orientation tag is {orientation}, not 1: DALI would rotate this image and PIL would "
                        f"not; rotate its pixels and drop the tag (e.g. `exiftran -ai`), then re-pack")
            if im.mode not in ("RGB", "L"):
                return (f"JPEG colour mode {im.mode} is not supported (only RGB and grayscale decode the same "
                        f"everywhere); convert it to RGB")
            im.load()  # raises on truncated or corrupt entropy-coded data
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError... for corrupt data
        return f"cannot decode JPEG: {exc}"
    if b"\xff\xd9" not in data[-64:]:
        return "truncated JPEG (no end-of-image marker)"
    return None
