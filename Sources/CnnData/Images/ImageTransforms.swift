// torchvision's standard image transforms, as plain functions over CHW Float buffers
// (values in [0, 1] as after ToTensor, unless a function says otherwise) with the random
// choices drawn from an explicit generator. `sampleGenerator` keys the generator by
// (seed, epoch, global sample index) through `counterHash`, as `Augmentation` does, so an
// augmented image does not depend on the number of ranks or threads.
//
// Each function follows torchvision's definition (transforms v1/v2 on tensors):
//   RandomResizedCrop(size, scale, ratio): up to 10 tries of area·U(scale) and
//     exp(U(log ratio)), w = round(sqrt(area·r)), h = round(sqrt(area/r)) (Python's
//     round, half to even), accepted if 0 < w ≤ W and 0 < h ≤ H, at a uniform position;
//     else the centre crop of the whole image clamped to the ratio range. The crop is
//     then resized (antialiased, `Resize`).
//   RandomRotation(degrees): angle U(−d, d), counter-clockwise for positive angles,
//     about the image centre, same size; bilinear (or nearest) sampling of the input at
//     the rotated position with the out-of-image part read as 0, and the fill blended
//     in as torchvision does: out = sample·m + (1 − m)·fill where m is the same sampling
//     of an all-ones mask (nearest: fill where m < 0.5).
//   ColorJitter(brightness b, contrast c, saturation s, hue h): factors U(max(0, 1−x), 1+x)
//     and a hue shift U(−h, h), the four adjustments in a random order; hue: through
//     torchvision's RGB -> HSV -> RGB with the hue rotated; brightness: clamp(f·img), contrast:
//     clamp(f·img + (1−f)·mean(grey(img))), saturation: clamp(f·img + (1−f)·grey(img)),
//     grey = 0.2989 R + 0.587 G + 0.114 B; a 1-channel image's grey is itself and its
//     saturation is unchanged.
//   RandomVerticalFlip / RandomHorizontalFlip(p).
//   GaussianNoise(mean, sigma, clip): img + mean + sigma·N(0, 1), clamped to [0, 1] if clip.
//   RandomErasing(p 0.5, scale (0.02, 0.33), ratio (0.3, 3.3), value 0): with probability
//     p, up to 10 tries of an erase area·U(scale) and aspect exp(U(log ratio)),
//     h = round(sqrt(a·r)), w = round(sqrt(a/r)), accepted if h < H and w < W, at a
//     uniform position, filled with the value per channel or N(0, 1) noise ("random").
//   Evaluation: Resize(s) makes the shorter side s and the longer int(s·long/short),
//     then CenterCrop(h, w) at top = round((H − h)/2), left = round((W − w)/2), padding
//     with 0 first where the image is smaller than the crop.
import CnnCore

/// The generator for one sample's random choices: a pure function of (seed, epoch,
/// global sample index, stream). Use a different `stream` for independent draws.
public func sampleGenerator(seed: UInt64, epoch: Int, sampleIndex: Int, stream: UInt64 = 0) -> SplitMix64 {
    let key = counterHash(seed ^ 0x1A6E_7F0A_D5C3_0014 ^ SplitMix64.mix(stream), UInt64(truncatingIfNeeded: epoch))
    return SplitMix64(seed: counterHash(key, UInt64(truncatingIfNeeded: sampleIndex)))
}

extension SplitMix64 {
    /// A uniform Double in [0, 1) with 53 random bits.
    public mutating func nextUnitDouble() -> Double { Double(next() >> 11) * (1.0 / 9_007_199_254_740_992.0) }

    /// A uniform Double in [low, high).
    public mutating func uniform(_ low: Double, _ high: Double) -> Double { low + (high - low) * nextUnitDouble() }

    /// A uniform integer in low...high.
    public mutating func integer(_ low: Int, _ high: Int) -> Int {
        precondition(high >= low, "empty range \(low)...\(high)")
        return low + Int(uniformBelow(UInt64(high - low + 1), &self))
    }
}

/// How a rotation samples the input.
public enum RotationInterpolation: String, Sendable {
    case nearest, bilinear
}

/// What random erasing writes.
public enum ErasingValue: Equatable, Sendable {
    /// The same value in every erased pixel of channel c (one value for all channels, or one per channel).
    case constant([Float])
    /// Standard normal noise (torchvision's value="random").
    case random
}

public enum ImageTransforms {
    // MARK: Random resized crop

    /// torchvision's RandomResizedCrop.get_params: the crop box of an H×W image.
    public static func randomResizedCropBox(height: Int, width: Int, scale: (Double, Double) = (0.08, 1.0),
                                            ratio: (Double, Double) = (3.0 / 4.0, 4.0 / 3.0),
                                            rng: inout SplitMix64) -> CropBox {
        precondition(scale.0 <= scale.1 && ratio.0 <= ratio.1 && ratio.0 > 0, "RandomResizedCrop: scale and ratio must be (min, max)")
        for _ in 0..<10 {
            let (w, h) = sampleSides(area: Double(height * width), scale: scale, ratio: ratio, rng: &rng)
            if w > 0 && w <= width && h > 0 && h <= height {
                let top = rng.integer(0, height - h), left = rng.integer(0, width - w)
                return CropBox(top: top, left: left, height: h, width: w)
            }
        }
        // Fallback to the central crop.
        let inRatio = Double(width) / Double(height)
        var w = width, h = height
        if inRatio < ratio.0 {
            h = Int((Double(w) / ratio.0).rounded(.toNearestOrEven))
        } else if inRatio > ratio.1 {
            w = Int((Double(h) * ratio.1).rounded(.toNearestOrEven))
        }
        return CropBox(top: (height - h) / 2, left: (width - w) / 2, height: h, width: w)
    }

    /// RandomResizedCrop on CHW Floats: the random crop resized to outHeight × outWidth.
    public static func randomResizedCrop(_ chw: [Float], channels: Int, height: Int, width: Int,
                                         outHeight: Int, outWidth: Int, scale: (Double, Double) = (0.08, 1.0),
                                         ratio: (Double, Double) = (3.0 / 4.0, 4.0 / 3.0),
                                         filter: ResizeFilter = .bilinear, rng: inout SplitMix64) -> [Float] {
        let box = randomResizedCropBox(height: height, width: width, scale: scale, ratio: ratio, rng: &rng)
        return Resize.resize(chw: chw, channels: channels, height: height, width: width,
                             toHeight: outHeight, toWidth: outWidth, filter: filter, crop: box)
    }

    /// RandomResizedCrop on an 8-bit image, as torchvision does on PIL images (PIL-exact resize).
    public static func randomResizedCrop(_ image: Image8, outHeight: Int, outWidth: Int,
                                         scale: (Double, Double) = (0.08, 1.0),
                                         ratio: (Double, Double) = (3.0 / 4.0, 4.0 / 3.0),
                                         filter: ResizeFilter = .bilinear, rng: inout SplitMix64) -> Image8 {
        let box = randomResizedCropBox(height: image.height, width: image.width, scale: scale, ratio: ratio, rng: &rng)
        return Resize.resize(image, height: outHeight, width: outWidth, filter: filter, crop: box)
    }

    // MARK: Rotation

    /// Rotates each H×W plane by `degrees` counter-clockwise about the centre (see the file comment).
    public static func rotate(_ chw: [Float], channels: Int, height: Int, width: Int, degrees: Double,
                              interpolation: RotationInterpolation = .bilinear, fill: Float = 0) -> [Float] {
        precondition(chw.count == channels * height * width, "rotate: \(chw.count) values is not \(channels)x\(height)x\(width)")
        let theta = degrees * Double.pi / 180
        let cosT = cos(theta), sinT = sin(theta)
        let cx = Double(width - 1) / 2, cy = Double(height - 1) / 2
        let plane = height * width
        var out = [Float](repeating: 0, count: chw.count)
        for y in 0..<height {
            for x in 0..<width {
                let dx = Double(x) - cx, dy = Double(y) - cy
                let sx = cx + cosT * dx - sinT * dy
                let sy = cy + sinT * dx + cosT * dy
                switch interpolation {
                case .nearest:
                    // grid_sample's nearest: round half to even.
                    let ix = Int(sx.rounded(.toNearestOrEven)), iy = Int(sy.rounded(.toNearestOrEven))
                    let inside = ix >= 0 && ix < width && iy >= 0 && iy < height
                    for c in 0..<channels {
                        out[c * plane + y * width + x] = inside ? chw[c * plane + iy * width + ix] : fill
                    }
                case .bilinear:
                    let x0 = Int(sx.rounded(.down)), y0 = Int(sy.rounded(.down))
                    let fx = Float(sx - Double(x0)), fy = Float(sy - Double(y0))
                    let taps = [(y0, x0, (1 - fy) * (1 - fx)), (y0, x0 + 1, (1 - fy) * fx),
                                (y0 + 1, x0, fy * (1 - fx)), (y0 + 1, x0 + 1, fy * fx)]
                    var mask: Float = 0
                    for (ty, tx, w) in taps where ty >= 0 && ty < height && tx >= 0 && tx < width { mask += w }
                    for c in 0..<channels {
                        var sum: Float = 0
                        for (ty, tx, w) in taps where ty >= 0 && ty < height && tx >= 0 && tx < width {
                            sum += chw[c * plane + ty * width + tx] * w
                        }
                        out[c * plane + y * width + x] = sum * mask + (1 - mask) * fill
                    }
                }
            }
        }
        return out
    }

    /// RandomRotation: an angle U(−maxDegrees, maxDegrees), then `rotate`.
    public static func randomRotation(_ chw: [Float], channels: Int, height: Int, width: Int, maxDegrees: Double,
                                      interpolation: RotationInterpolation = .bilinear, fill: Float = 0,
                                      rng: inout SplitMix64) -> [Float] {
        let angle = rng.uniform(-maxDegrees, maxDegrees)
        return rotate(chw, channels: channels, height: height, width: width, degrees: angle,
                      interpolation: interpolation, fill: fill)
    }

    // MARK: Colour

    /// torchvision's rgb_to_grayscale of pixel i (for 1 channel, the value itself).
    @inline(__always)
    static func grey(_ chw: [Float], channels: Int, plane: Int, _ i: Int) -> Float {
        channels == 3 ? 0.2989 * chw[i] + 0.587 * chw[plane + i] + 0.114 * chw[2 * plane + i] : chw[i]
    }

    /// adjust_brightness: clamp(factor · img, 0, 1).
    public static func adjustBrightness(_ chw: inout [Float], factor: Float) {
        for i in chw.indices { chw[i] = min(max(chw[i] * factor, 0), 1) }
    }

    /// adjust_contrast: blend with the mean grey level of the whole image.
    public static func adjustContrast(_ chw: inout [Float], channels: Int, factor: Float) {
        let plane = chw.count / channels
        var total: Double = 0
        for i in 0..<plane { total += Double(grey(chw, channels: channels, plane: plane, i)) }
        let mean = Float(total / Double(plane))
        for i in chw.indices { chw[i] = min(max(factor * chw[i] + (1 - factor) * mean, 0), 1) }
    }

    /// adjust_saturation: blend with the pixel's grey level; 1-channel images are unchanged.
    public static func adjustSaturation(_ chw: inout [Float], channels: Int, factor: Float) {
        guard channels == 3 else { return }
        let plane = chw.count / 3
        for i in 0..<plane {
            let g = grey(chw, channels: 3, plane: plane, i)
            for c in 0..<3 { chw[c * plane + i] = min(max(factor * chw[c * plane + i] + (1 - factor) * g, 0), 1) }
        }
    }

    /// adjust_hue: rotates the hue by `shift` turns (−0.5 … 0.5) through torchvision's
    /// RGB -> HSV -> RGB; 1-channel images are unchanged.
    public static func adjustHue(_ chw: inout [Float], channels: Int, shift: Float) {
        guard channels == 3 else { return }
        let plane = chw.count / 3
        for i in 0..<plane {
            let r = chw[i], g = chw[plane + i], b = chw[2 * plane + i]
            let maxc = max(r, g, b), minc = min(r, g, b)
            let cr = maxc - minc
            let s = cr / (maxc == minc ? 1 : maxc)
            let divisor = maxc == minc ? 1 : cr
            let rc = (maxc - r) / divisor, gc = (maxc - g) / divisor, bc = (maxc - b) / divisor
            var h: Float
            if maxc == r { h = bc - gc } else if maxc == g { h = 2 + rc - bc } else { h = 4 + gc - rc }
            h = fmodf(h / 6 + 1, 1)
            h = h + shift
            h -= (h / 1).rounded(.down)          // Python's % 1.0
            let v = maxc
            let sector = h * 6, fi = sector.rounded(.down), f = sector - fi
            let p = min(max(v * (1 - s), 0), 1)
            let q = min(max(v * (1 - s * f), 0), 1)
            let t = min(max(v * (1 - s * (1 - f)), 0), 1)
            let rgb: (Float, Float, Float)
            switch ((Int(fi) % 6) + 6) % 6 {
            case 0: rgb = (v, t, p)
            case 1: rgb = (q, v, p)
            case 2: rgb = (p, v, t)
            case 3: rgb = (p, q, v)
            case 4: rgb = (t, p, v)
            default: rgb = (v, p, q)
            }
            chw[i] = rgb.0; chw[plane + i] = rgb.1; chw[2 * plane + i] = rgb.2
        }
    }

    /// ColorJitter(brightness, contrast, saturation, hue): factors U(max(0, 1 − x), 1 + x)
    /// for each non-zero strength and a hue shift U(−hue, hue) (hue ≤ 0.5), applied in a
    /// random order of the four, as torchvision draws them (the order first, then the factors).
    public static func colorJitter(_ chw: inout [Float], channels: Int, brightness: Double = 0, contrast: Double = 0,
                                   saturation: Double = 0, hue: Double = 0, rng: inout SplitMix64) {
        precondition(brightness >= 0 && contrast >= 0 && saturation >= 0 && hue >= 0 && hue <= 0.5,
                     "ColorJitter strengths must not be negative, and hue at most 0.5")
        var order = [0, 1, 2, 3]
        for i in stride(from: 3, to: 0, by: -1) { order.swapAt(i, rng.integer(0, i)) }
        func factor(_ x: Double) -> Float? { x > 0 ? Float(rng.uniform(max(0, 1 - x), 1 + x)) : nil }
        let b = factor(brightness), c = factor(contrast), s = factor(saturation)
        let h: Float? = hue > 0 ? Float(rng.uniform(-hue, hue)) : nil
        for op in order {
            switch op {
            case 0: if let b { adjustBrightness(&chw, factor: b) }
            case 1: if let c { adjustContrast(&chw, channels: channels, factor: c) }
            case 2: if let s { adjustSaturation(&chw, channels: channels, factor: s) }
            default: if let h { adjustHue(&chw, channels: channels, shift: h) }
            }
        }
    }

    // MARK: Flips and noise

    /// Mirrors each plane top to bottom.
    public static func flipVertical(_ chw: inout [Float], channels: Int, height: Int, width: Int) {
        for c in 0..<channels {
            for y in 0..<height / 2 {
                let a = (c * height + y) * width, b = (c * height + height - 1 - y) * width
                for x in 0..<width { chw.swapAt(a + x, b + x) }
            }
        }
    }

    /// Mirrors each plane left to right.
    public static func flipHorizontal(_ chw: inout [Float], channels: Int, height: Int, width: Int) {
        for row in 0..<channels * height {
            let base = row * width
            for x in 0..<width / 2 { chw.swapAt(base + x, base + width - 1 - x) }
        }
    }

    /// RandomVerticalFlip(p); returns whether it flipped.
    @discardableResult
    public static func randomVerticalFlip(_ chw: inout [Float], channels: Int, height: Int, width: Int,
                                          probability: Double = 0.5, rng: inout SplitMix64) -> Bool {
        guard rng.nextUnitDouble() < probability else { return false }
        flipVertical(&chw, channels: channels, height: height, width: width)
        return true
    }

    /// GaussianNoise: img + mean + sigma · N(0, 1), clamped to [0, 1] when `clip`.
    public static func gaussianNoise(_ chw: inout [Float], mean: Float = 0, sigma: Float = 0.1, clip: Bool = true,
                                     rng: inout SplitMix64) {
        for i in chw.indices {
            let v = chw[i] + mean + sigma * rng.nextNormal()
            chw[i] = clip ? min(max(v, 0), 1) : v
        }
    }

    // MARK: Random erasing

    /// One try of torchvision's box sampling: an area fraction uniform in
    /// `scale`, a log-uniform aspect ratio in `ratio`; returns the sides
    /// sqrt(area·aspect) and sqrt(area/aspect), rounded half to even as Python's round.
    static func sampleSides(area: Double, scale: (Double, Double), ratio: (Double, Double),
                            rng: inout SplitMix64) -> (Int, Int) {
        let target = area * rng.uniform(scale.0, scale.1)
        let aspect = exp(rng.uniform(log(ratio.0), log(ratio.1)))
        return (Int((target * aspect).squareRoot().rounded(.toNearestOrEven)),
                Int((target / aspect).squareRoot().rounded(.toNearestOrEven)))
    }

    /// RandomErasing.get_params: the erased box, or nil when no try fits.
    public static func randomErasingBox(height: Int, width: Int, scale: (Double, Double) = (0.02, 0.33),
                                        ratio: (Double, Double) = (0.3, 3.3), rng: inout SplitMix64) -> CropBox? {
        for _ in 0..<10 {
            let (h, w) = sampleSides(area: Double(height * width), scale: scale, ratio: ratio, rng: &rng)
            guard h < height && w < width else { continue }
            let top = rng.integer(0, height - h), left = rng.integer(0, width - w)
            return CropBox(top: top, left: left, height: h, width: w)
        }
        return nil
    }

    /// RandomErasing with torchvision's defaults; returns the erased box, if any.
    @discardableResult
    public static func randomErasing(_ chw: inout [Float], channels: Int, height: Int, width: Int,
                                     probability: Double = 0.5, scale: (Double, Double) = (0.02, 0.33),
                                     ratio: (Double, Double) = (0.3, 3.3), value: ErasingValue = .constant([0]),
                                     rng: inout SplitMix64) -> CropBox? {
        guard rng.nextUnitDouble() < probability else { return nil }
        guard let box = randomErasingBox(height: height, width: width, scale: scale, ratio: ratio, rng: &rng) else { return nil }
        for c in 0..<channels {
            for y in box.top..<box.top + box.height {
                for x in box.left..<box.left + box.width {
                    let v: Float
                    switch value {
                    case .random: v = rng.nextNormal()
                    case .constant(let values):
                        precondition(values.count == 1 || values.count == channels, "RandomErasing: \(values.count) values for \(channels) channels")
                        v = values.count == 1 ? values[0] : values[c]
                    }
                    chw[(c * height + y) * width + x] = v
                }
            }
        }
        return box
    }

    // MARK: Evaluation

    /// torchvision's Resize(shorter): the size with the shorter side `shorter` and the
    /// longer int(shorter · long / short).
    public static func shorterSideSize(height: Int, width: Int, shorter: Int) -> (height: Int, width: Int) {
        precondition(shorter > 0 && height > 0 && width > 0, "Resize: sizes must be positive")
        if width <= height { return (shorter * height / width, shorter) }
        return (shorter, shorter * width / height)
    }

    /// CenterCrop(height, width) of an H×W image: the box, after padding with
    /// (top, left, bottom, right) zeros where the image is smaller than the crop.
    public static func centerCropBox(height: Int, width: Int, cropHeight: Int, cropWidth: Int)
        -> (box: CropBox, padding: (top: Int, left: Int, bottom: Int, right: Int)) {
        let padLeft = cropWidth > width ? (cropWidth - width) / 2 : 0
        let padTop = cropHeight > height ? (cropHeight - height) / 2 : 0
        let padRight = cropWidth > width ? (cropWidth - width + 1) / 2 : 0
        let padBottom = cropHeight > height ? (cropHeight - height + 1) / 2 : 0
        let h = height + padTop + padBottom, w = width + padLeft + padRight
        let top = Int((Double(h - cropHeight) / 2).rounded(.toNearestOrEven))
        let left = Int((Double(w - cropWidth) / 2).rounded(.toNearestOrEven))
        return (CropBox(top: top, left: left, height: cropHeight, width: cropWidth), (padTop, padLeft, padBottom, padRight))
    }

    /// CenterCrop on CHW Floats (zero padding where the image is smaller).
    public static func centerCrop(_ chw: [Float], channels: Int, height: Int, width: Int,
                                  cropHeight: Int, cropWidth: Int) -> [Float] {
        let (box, pad) = centerCropBox(height: height, width: width, cropHeight: cropHeight, cropWidth: cropWidth)
        var out = [Float](repeating: 0, count: channels * cropHeight * cropWidth)
        for c in 0..<channels {
            for y in 0..<cropHeight {
                let sy = box.top + y - pad.top
                guard sy >= 0 && sy < height else { continue }
                for x in 0..<cropWidth {
                    let sx = box.left + x - pad.left
                    guard sx >= 0 && sx < width else { continue }
                    out[(c * cropHeight + y) * cropWidth + x] = chw[(c * height + sy) * width + sx]
                }
            }
        }
        return out
    }

    /// Evaluation's Resize(shorter) then CenterCrop(cropHeight, cropWidth) on an 8-bit image
    /// (as torchvision does on PIL images), bit-exact resize included.
    public static func resizeShorterSideThenCenterCrop(_ image: Image8, shorter: Int, cropHeight: Int, cropWidth: Int) -> Image8 {
        let size = shorterSideSize(height: image.height, width: image.width, shorter: shorter)
        let resized = Resize.resize(image, height: size.height, width: size.width)
        let (box, pad) = centerCropBox(height: size.height, width: size.width, cropHeight: cropHeight, cropWidth: cropWidth)
        let c = image.channels
        var out = [UInt8](repeating: 0, count: cropHeight * cropWidth * c)
        for y in 0..<cropHeight {
            let sy = box.top + y - pad.top
            guard sy >= 0 && sy < size.height else { continue }
            for x in 0..<cropWidth {
                let sx = box.left + x - pad.left
                guard sx >= 0 && sx < size.width else { continue }
                for ch in 0..<c { out[(y * cropWidth + x) * c + ch] = resized.pixels[(sy * size.width + sx) * c + ch] }
            }
        }
        return Image8(width: cropWidth, height: cropHeight, channels: c, pixels: out)
    }
}

#if canImport(Glibc)
import Glibc
#else
import Darwin
#endif

extension ImageDecoder {
    /// RandomResizedCrop straight from an encoded image. The box is drawn on the size in the
    /// header (so the random choices are those of `ImageTransforms.randomResizedCropBox` on
    /// the full image, whatever the scaling), then a JPEG is decoded at the smallest DCT
    /// scale (1/8 … 1) that keeps the box at least outHeight × outWidth, the box is mapped
    /// to that scale, and cropped and resized. With `dctScaling` false, or when no
    /// smaller scale keeps the box large enough, the result is torchvision's on PIL exactly;
    /// scaled, it is close on smooth content (a few grey levels) but aliases differently on
    /// fine texture (DCT-domain scaling filters more coarsely than PIL's triangle).
    public func decodeRandomResizedCrop(_ bytes: [UInt8], file: String, channels: Int? = nil,
                                        outHeight: Int, outWidth: Int, scale: (Double, Double) = (0.08, 1.0),
                                        ratio: (Double, Double) = (3.0 / 4.0, 4.0 / 3.0),
                                        filter: ResizeFilter = .bilinear, dctScaling: Bool = true,
                                        rng: inout SplitMix64) throws -> Image8 {
        let head = try header(bytes, file: file)
        let box = ImageTransforms.randomResizedCropBox(height: head.height, width: head.width, scale: scale,
                                                       ratio: ratio, rng: &rng)
        var atLeast: (height: Int, width: Int)? = nil
        if dctScaling && head.format == .jpeg {
            atLeast = ((head.height * outHeight + box.height - 1) / box.height,
                       (head.width * outWidth + box.width - 1) / box.width)
        }
        let image = try decode(bytes, file: file, channels: channels, atLeast: atLeast)
        var scaled = box
        if image.width != head.width || image.height != head.height {
            let sy = Double(image.height) / Double(head.height), sx = Double(image.width) / Double(head.width)
            scaled.top = min(Int(Double(box.top) * sy), image.height - 1)
            scaled.left = min(Int(Double(box.left) * sx), image.width - 1)
            scaled.height = max(1, min(Int((Double(box.height) * sy).rounded()), image.height - scaled.top))
            scaled.width = max(1, min(Int((Double(box.width) * sx).rounded()), image.width - scaled.left))
        }
        return Resize.resize(image, height: outHeight, width: outWidth, filter: filter, crop: scaled)
    }
}
