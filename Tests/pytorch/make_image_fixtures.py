"""Writes Tests/fixtures/images/: a small input image and what Pillow makes of it
(resizes, grey conversion, JPEG decodes), so the Swift tests can compare against
Pillow without Pillow in CI. Run by hand:  python3 Tests/pytorch/make_image_fixtures.py
(needs `pip install pillow`). The outputs are committed; rerun only to change them."""
import os
from PIL import Image

out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "images")
os.makedirs(out, exist_ok=True)

W, H = 24, 19
img = Image.new("RGB", (W, H))
# Smooth ramps plus a fixed pseudo-random texture: edges and gradients both matter for resize.
state = 12345
pixels = []
for y in range(H):
    for x in range(W):
        state = (state * 1103515245 + 12345) & 0x7FFFFFFF
        noise = (state >> 16) % 64
        pixels.append(((x * 10 + noise) % 256, (y * 13 + 2 * noise) % 256, ((x + y) * 6 + 255 - noise) % 256))
img.putdata(pixels)
img.save(os.path.join(out, "input.png"))

# Resizes: (name, size (w, h), filter, crop box or None). A crop box is cropped first,
# as torchvision's resized_crop does on PIL images.
resizes = [
    ("resize_bilinear_10x7.png", (10, 7), Image.BILINEAR, None),
    ("resize_bilinear_53x41.png", (53, 41), Image.BILINEAR, None),
    ("resize_bilinear_13x19.png", (13, 19), Image.BILINEAR, None),
    ("resize_box_8x5.png", (8, 5), Image.BOX, None),
    ("resize_bicubic_11x9.png", (11, 9), Image.BICUBIC, None),
    ("crop_3_5_17x12_bilinear_16x16.png", (16, 16), Image.BILINEAR, (5, 3, 22, 15)),
]
for name, size, resample, box in resizes:
    source = img.crop(box) if box else img
    source.resize(size, resample).save(os.path.join(out, name))

img.convert("L").save(os.path.join(out, "input_L.png"))
# 4096 colours spread so that PIL's fixed-point luma rounding is exercised near its boundaries.
colours = Image.new("RGB", (64, 64))
colours.putdata([((x * 4 + 1) % 256, (y * 4 + 2) % 256, (x * 7 + y * 13 + x * y) % 256) for y in range(64) for x in range(64)])
colours.save(os.path.join(out, "colours.png"))
colours.convert("L").save(os.path.join(out, "colours_L.png"))
img.convert("L").resize((7, 6), Image.BILINEAR).save(os.path.join(out, "input_L_bilinear_7x6.png"))

# JPEGs written by Pillow, and Pillow's decode of each (what torchvision would see).
img.save(os.path.join(out, "baseline.jpg"), quality=90)
img.save(os.path.join(out, "progressive.jpg"), quality=85, progressive=True)
img.convert("L").save(os.path.join(out, "gray.jpg"), quality=90)
img.convert("CMYK").save(os.path.join(out, "cmyk.jpg"), quality=95)
for name in ["baseline", "progressive", "gray", "cmyk"]:
    decoded = Image.open(os.path.join(out, name + ".jpg"))
    decoded.convert("RGB").save(os.path.join(out, name + "_pil_rgb.png"))
    decoded.convert("L").save(os.path.join(out, name + "_pil_l.png"))
print("wrote", sorted(os.listdir(out)))
