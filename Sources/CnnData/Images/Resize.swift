// Antialiased resizing as PIL's Image.resize does it (and so torchvision's Resize and
// RandomResizedCrop on PIL images, and resize(antialias=True) on tensors):
// a separable convolution, horizontal pass then vertical pass. Output pixel x of a
// resize from `inSize` to `outSize` is centred at center = (x + 0.5) · scale in input
// coordinates (scale = inSize / outSize); when shrinking, the filter is stretched by the
// scale (support = filterSupport · max(scale, 1)), so every input pixel contributes and
// the result is antialiased. The taps are the input pixels j in
//   [int(center − support + 0.5), int(center + support + 0.5)) ∩ [0, inSize),
// weighted filter((j − center + 0.5) / max(scale, 1)) and normalised to sum 1.
// Filters: bilinear = triangle, support 1; box (area) = 1 on (−0.5, 0.5], support 0.5;
// bicubic = Keys' cubic with a = −0.5, support 2.
//
// The 8-bit path reproduces PIL bit for bit: weights in fixed point with 22 fraction
// bits (rounded half away from zero), sums started at one half, each pass rounded and
// clipped to 0...255, the horizontal pass first and each pass skipped when its size does
// not change. The Float path uses the same taps without rounding (so within one grey
// level of PIL, on 0...255 data).
// A crop box makes crop-then-resize one operation (torchvision's resized_crop): the
// taps are computed on the crop and clipped to it, exactly as resizing the cropped image.
import CnnCore

/// The resampling filter of a resize.
public enum ResizeFilter: String, Sendable, CaseIterable {
    case bilinear, box, bicubic

    var support: Double {
        switch self {
        case .bilinear: return 1
        case .box: return 0.5
        case .bicubic: return 2
        }
    }

    @inline(__always)
    func weight(_ x: Double) -> Double {
        switch self {
        case .bilinear:
            let a = abs(x)
            return a < 1 ? 1 - a : 0
        case .box:
            return x > -0.5 && x <= 0.5 ? 1 : 0
        case .bicubic:
            let a = abs(x), c = -0.5
            if a < 1 { return ((c + 2) * a - (c + 3)) * a * a + 1 }
            if a < 2 { return (((a - 5) * a + 8) * a - 4) * c }
            return 0
        }
    }
}

/// A rectangle of an image, in pixels.
public struct CropBox: Equatable, Sendable {
    public var top: Int, left: Int, height: Int, width: Int

    public init(top: Int, left: Int, height: Int, width: Int) {
        self.top = top
        self.left = left
        self.height = height
        self.width = width
    }
}

/// The taps of a one-dimensional resize: output i reads `count[i]` inputs from `first[i]`
/// with weights `weights[i * size ..< i * size + count[i]]`.
struct ResampleTaps {
    var first: [Int]
    var count: [Int]
    var weights: [Double]
    var size: Int

    init(inSize: Int, outSize: Int, filter: ResizeFilter) {
        let scale = Double(inSize) / Double(outSize)
        let filterScale = max(scale, 1)
        let support = filter.support * filterScale
        size = Int(support.rounded(.up)) * 2 + 1
        first = [Int](repeating: 0, count: outSize)
        count = [Int](repeating: 0, count: outSize)
        weights = [Double](repeating: 0, count: outSize * size)
        for x in 0..<outSize {
            let center = (Double(x) + 0.5) * scale
            // C's (int) cast truncates toward zero, as PIL's does.
            let lo = max(Int(center - support + 0.5), 0)
            let hi = min(Int(center + support + 0.5), inSize)
            var total = 0.0
            for j in lo..<max(hi, lo) {
                let w = filter.weight((Double(j) - center + 0.5) / filterScale)
                weights[x * size + j - lo] = w
                total += w
            }
            if total != 0 { for j in 0..<(hi - lo) { weights[x * size + j] /= total } }
            first[x] = lo
            count[x] = max(hi - lo, 0)
        }
    }

    /// The weights in PIL's fixed point (22 fraction bits, rounded half away from zero).
    func fixedPoint() -> [Int32] {
        weights.map { w in Int32(w < 0 ? -0.5 + w * Double(1 << 22) : 0.5 + w * Double(1 << 22)) }
    }
}

public enum Resize {
    /// `image` (or its `crop`) resized to height × width, bit for bit as PIL's
    /// `image.crop(box).resize((width, height), filter)`.
    public static func resize(_ image: Image8, height: Int, width: Int, filter: ResizeFilter = .bilinear,
                              crop: CropBox? = nil) -> Image8 {
        let box = crop ?? CropBox(top: 0, left: 0, height: image.height, width: image.width)
        precondition(height > 0 && width > 0, "Resize: output \(width)x\(height) must be positive")
        precondition(box.top >= 0 && box.left >= 0 && box.height > 0 && box.width > 0
                     && box.top + box.height <= image.height && box.left + box.width <= image.width,
                     "Resize: crop \(box) outside the \(image.width)x\(image.height) image")
        let c = image.channels
        let horizontal = ResampleTaps(inSize: box.width, outSize: width, filter: filter)
        let vertical = ResampleTaps(inSize: box.height, outSize: height, filter: filter)
        // The rows the vertical pass reads; the horizontal pass makes only those.
        let rowFirst = vertical.first[0]
        let rowEnd = vertical.first[height - 1] + vertical.count[height - 1]
        let needHorizontal = width != box.width
        let needVertical = height != box.height

        // Horizontal pass: rows rowFirst..<rowEnd of the crop, each width × c.
        var stage: [UInt8]
        var stageWidth: Int, stageRowOffset: Int
        if needHorizontal {
            let k = horizontal.fixedPoint()
            let rows = needVertical ? rowEnd - rowFirst : box.height
            let firstRow = needVertical ? rowFirst : 0
            stage = [UInt8](repeating: 0, count: rows * width * c)
            image.pixels.withUnsafeBufferPointer { src in
                stage.withUnsafeMutableBufferPointer { dst in
                    k.withUnsafeBufferPointer { k in
                        for y in 0..<rows {
                            let row = src.baseAddress! + ((box.top + firstRow + y) * image.width + box.left) * c
                            let out = dst.baseAddress! + y * width * c
                            horizontalRow(row, out, width: width, channels: c, taps: horizontal, k: k.baseAddress!)
                        }
                    }
                }
            }
            stageWidth = width
            stageRowOffset = firstRow
            if !needVertical { return Image8(width: width, height: height, channels: c, pixels: stage) }
        } else {
            // The crop itself is the stage.
            stage = [UInt8](repeating: 0, count: box.height * box.width * c)
            for y in 0..<box.height {
                let from = ((box.top + y) * image.width + box.left) * c
                stage.replaceSubrange(y * box.width * c..<(y + 1) * box.width * c,
                                      with: image.pixels[from..<from + box.width * c])
            }
            stageWidth = box.width
            stageRowOffset = 0
            if !needVertical { return Image8(width: width, height: height, channels: c, pixels: stage) }
        }
        // Vertical pass.
        let k = vertical.fixedPoint()
        var out = [UInt8](repeating: 0, count: height * width * c)
        let rowBytes = stageWidth * c
        // Row by row with a row of accumulators, so the inner loop runs along memory.
        var accumulator = [Int32](repeating: 0, count: rowBytes)
        stage.withUnsafeBufferPointer { src in
            out.withUnsafeMutableBufferPointer { dst in
                accumulator.withUnsafeMutableBufferPointer { acc in
                    for y in 0..<height {
                        let lo = vertical.first[y] - stageRowOffset, n = vertical.count[y], kb = y * vertical.size
                        for i in 0..<rowBytes { acc[i] = 1 << 21 }
                        for j in 0..<n {
                            let w = k[kb + j]
                            let row = src.baseAddress! + (lo + j) * rowBytes
                            for i in 0..<rowBytes { acc[i] &+= Int32(row[i]) &* w }
                        }
                        let o = dst.baseAddress! + y * rowBytes
                        for i in 0..<rowBytes { o[i] = clip8(acc[i]) }
                    }
                }
            }
        }
        return Image8(width: width, height: height, channels: c, pixels: out)
    }

    /// One output row of the horizontal pass: `width` pixels of `channels` bytes.
    @inline(__always)
    static func horizontalRow(_ row: UnsafePointer<UInt8>, _ out: UnsafeMutablePointer<UInt8>, width: Int, channels c: Int,
                              taps: ResampleTaps, k: UnsafePointer<Int32>) {
        taps.first.withUnsafeBufferPointer { first in
            taps.count.withUnsafeBufferPointer { count in
                for x in 0..<width {
                    let p = row + first[x] * c, n = count[x], w = k + x * taps.size
                    if c == 3 {
                        var s0: Int32 = 1 << 21, s1: Int32 = 1 << 21, s2: Int32 = 1 << 21
                        for j in 0..<n {
                            let q = p + 3 * j, wj = w[j]
                            s0 &+= Int32(q[0]) &* wj
                            s1 &+= Int32(q[1]) &* wj
                            s2 &+= Int32(q[2]) &* wj
                        }
                        out[3 * x] = clip8(s0); out[3 * x + 1] = clip8(s1); out[3 * x + 2] = clip8(s2)
                    } else {
                        for ch in 0..<c {
                            var sum: Int32 = 1 << 21
                            for j in 0..<n { sum &+= Int32(p[j * c + ch]) &* w[j] }
                            out[x * c + ch] = clip8(sum)
                        }
                    }
                }
            }
        }
    }

    @inline(__always)
    static func clip8(_ sum: Int32) -> UInt8 {
        let v = sum >> 22
        return v < 0 ? 0 : (v > 255 ? 255 : UInt8(v))
    }

    /// Resizes CHW Float planes (channels × height × width, or the `crop` of each plane)
    /// to channels × outHeight × outWidth, with PIL's taps and no rounding.
    public static func resize(chw input: [Float], channels: Int, height: Int, width: Int,
                              toHeight outHeight: Int, toWidth outWidth: Int,
                              filter: ResizeFilter = .bilinear, crop: CropBox? = nil) -> [Float] {
        let box = crop ?? CropBox(top: 0, left: 0, height: height, width: width)
        precondition(input.count == channels * height * width, "Resize: \(input.count) values is not \(channels)x\(height)x\(width)")
        precondition(outHeight > 0 && outWidth > 0, "Resize: output \(outWidth)x\(outHeight) must be positive")
        precondition(box.top >= 0 && box.left >= 0 && box.height > 0 && box.width > 0
                     && box.top + box.height <= height && box.left + box.width <= width,
                     "Resize: crop \(box) outside the \(width)x\(height) image")
        let horizontal = ResampleTaps(inSize: box.width, outSize: outWidth, filter: filter)
        let vertical = ResampleTaps(inSize: box.height, outSize: outHeight, filter: filter)
        let hw = horizontal.weights.map(Float.init), vw = vertical.weights.map(Float.init)
        var stage = [Float](repeating: 0, count: box.height * outWidth)
        var out = [Float](repeating: 0, count: channels * outHeight * outWidth)
        input.withUnsafeBufferPointer { src in
            out.withUnsafeMutableBufferPointer { dst in
                stage.withUnsafeMutableBufferPointer { tmp in
                    for c in 0..<channels {
                        let plane = c * height * width
                        for y in 0..<box.height {
                            let row = plane + (box.top + y) * width + box.left
                            for x in 0..<outWidth {
                                let lo = horizontal.first[x], n = horizontal.count[x], kb = x * horizontal.size
                                var sum: Float = 0
                                for j in 0..<n { sum += src[row + lo + j] * hw[kb + j] }
                                tmp[y * outWidth + x] = sum
                            }
                        }
                        let outPlane = c * outHeight * outWidth
                        for y in 0..<outHeight {
                            let lo = vertical.first[y], n = vertical.count[y], kb = y * vertical.size
                            let o = dst.baseAddress! + outPlane + y * outWidth
                            for j in 0..<n {
                                let w = vw[kb + j], row = tmp.baseAddress! + (lo + j) * outWidth
                                for x in 0..<outWidth { o[x] += row[x] * w }
                            }
                        }
                    }
                }
            }
        }
        return out
    }
}
