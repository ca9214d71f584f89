// An 8-bit image as decoders produce it and as PIL holds it: rows of pixels with the
// channels of a pixel adjacent (HWC), 1 channel (PIL's "L") or 3 ("RGB").
// Conversions follow PIL's convert(): L -> RGB copies the grey value to the three
// channels, RGB -> L is ITU-R 601-2 luma in PIL's fixed point,
//   L = (19595 R + 38470 G + 7471 B + 0x8000) >> 16,
// and CMYK -> RGB (from Adobe-convention JPEGs, whose stored values are inverted, which
// PIL always assumes) is R = 255 - k - c*(255-k)/255 with PIL's rounding, on the uninverted values.
import CnnCore

/// An 8-bit image, height × width pixels of `channels` interleaved bytes (HWC).
public struct Image8: Equatable, Sendable {
    public var width: Int
    public var height: Int
    /// 1 (grey) or 3 (RGB).
    public var channels: Int
    /// height * width * channels bytes, row after row.
    public var pixels: [UInt8]

    /// An image over `pixels` (HWC), which must hold height * width * channels bytes.
    public init(width: Int, height: Int, channels: Int, pixels: [UInt8]) {
        precondition(width >= 0 && height >= 0 && (channels == 1 || channels == 3),
                     "Image8: \(width)x\(height)x\(channels) is not a 1- or 3-channel image")
        precondition(pixels.count == width * height * channels,
                     "Image8: \(pixels.count) bytes for \(width)x\(height)x\(channels)")
        self.width = width
        self.height = height
        self.channels = channels
        self.pixels = pixels
    }

    /// An image from a CHW buffer (planes of height × width).
    public init(chw: [UInt8], channels: Int, height: Int, width: Int) {
        precondition(chw.count == channels * height * width, "Image8: \(chw.count) bytes is not \(channels)x\(height)x\(width)")
        var hwc = [UInt8](repeating: 0, count: chw.count)
        let plane = height * width
        for c in 0..<channels {
            for i in 0..<plane { hwc[i * channels + c] = chw[c * plane + i] }
        }
        self.init(width: width, height: height, channels: channels, pixels: hwc)
    }

    /// The image with `count` channels (1 or 3), converted as PIL's convert("L"/"RGB").
    public func converted(toChannels count: Int) -> Image8 {
        precondition(count == 1 || count == 3, "Image8: channels must be 1 or 3, got \(count)")
        if count == channels { return self }
        let n = width * height
        var out = [UInt8](repeating: 0, count: n * count)
        if count == 3 {
            for i in 0..<n {
                let v = pixels[i]
                out[3 * i] = v; out[3 * i + 1] = v; out[3 * i + 2] = v
            }
        } else {
            for i in 0..<n {
                out[i] = Image8.luma(pixels[3 * i], pixels[3 * i + 1], pixels[3 * i + 2])
            }
        }
        return Image8(width: width, height: height, channels: count, pixels: out)
    }

    /// ITU-R 601-2 luma as PIL's RGB -> L conversion computes it.
    @inline(__always)
    public static func luma(_ r: UInt8, _ g: UInt8, _ b: UInt8) -> UInt8 {
        UInt8(truncatingIfNeeded: (UInt32(r) * 19595 + UInt32(g) * 38470 + UInt32(b) * 7471 + 0x8000) >> 16)
    }

    /// The pixels as CHW planes.
    public func chw() -> [UInt8] {
        let plane = width * height
        var out = [UInt8](repeating: 0, count: pixels.count)
        for c in 0..<channels {
            for i in 0..<plane { out[c * plane + i] = pixels[i * channels + c] }
        }
        return out
    }

    /// The pixels as CHW planes of Floats, each byte times `scale` (1/255 gives
    /// torchvision's ToTensor range [0, 1]).
    public func chwFloat(scale: Float = 1.0 / 255.0) -> [Float] {
        let plane = width * height
        var out = [Float](repeating: 0, count: pixels.count)
        for c in 0..<channels {
            for i in 0..<plane { out[c * plane + i] = Float(pixels[i * channels + c]) * scale }
        }
        return out
    }

    /// Converts Adobe-convention CMYK (stored inverted, as JPEG files hold it) to RGB as PIL does.
    static func rgb(fromInvertedCMYK cmyk: [UInt8], width: Int, height: Int) -> Image8 {
        let n = width * height
        var out = [UInt8](repeating: 0, count: n * 3)
        @inline(__always) func mulDiv255(_ a: Int, _ b: Int) -> Int {
            let t = a * b + 128
            return ((t >> 8) + t) >> 8
        }
        for i in 0..<n {
            let nk = Int(cmyk[4 * i + 3])           // 255 - k on the uninverted value
            for ch in 0..<3 {
                let c = 255 - Int(cmyk[4 * i + ch])
                out[3 * i + ch] = UInt8(clamping: nk - mulDiv255(c, nk))
            }
        }
        return Image8(width: width, height: height, channels: 3, pixels: out)
    }
}
