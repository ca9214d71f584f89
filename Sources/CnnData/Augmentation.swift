// Seeded, deterministic augmentation. The random choices for a sample are a
// pure function of (seed, epoch, dataset index of the sample) through
// `counterHash`, so they do not depend on the number of ranks, the batch
// split, or thread timing: a run on 1 rank and on 4 ranks sees the same
// augmented images.
//
// Geometry. For an image of H×W and parameters (flip, shiftY, shiftX):
//   output(c, y, x) = flipped(c, y + shiftY, x + shiftX)
//   flipped(c, y, x) = flip ? input(c, y, W−1−x) : input(c, y, x)
// i.e. mirror first, then shift (crop) the mirrored image. Positions outside
// the image read a black pixel: value 0 before normalisation, so
// (0 − mean[c]) / std[c] after it. That is the usual pipeline "pad with
// zeros, random-crop, flip, then normalise" (torchvision RandomCrop(padding: p)
// → RandomHorizontalFlip → Normalize): the padding is black, not the dataset
// mean. (Shifts are symmetric, so mirroring before or after the crop gives
// the same distribution of images.)
//   Random crop with padding p: pad p pixels on every side, crop H×W back at
//     a uniform position — the same as a uniform shift in −p…p on each axis.
//   Random translation by up to ±t: a uniform shift in −t…t on each axis.
//   Both on: the shifts add.
import CnnCore

/// Augmentation options; all off by default.
public struct Augmentation: Equatable, Sendable, Codable {
    /// Zero-padding for the random crop (CIFAR style uses 4); 0 disables it.
    public var cropPadding: Int
    /// Mirror left–right with probability 0.5.
    public var horizontalFlip: Bool
    /// Largest random translation in pixels on each axis; 0 disables it.
    public var maxTranslation: Int
    /// torchvision's transforms applied after the crop and flip, in [0, 1]
    /// pixel values before normalisation.
    public var photometric = TorchvisionAugmentation()

    /// Options as given; the defaults leave images unchanged.
    public init(cropPadding: Int = 0, horizontalFlip: Bool = false, maxTranslation: Int = 0) {
        precondition(cropPadding >= 0 && maxTranslation >= 0, "augmentation sizes must not be negative")
        self.cropPadding = cropPadding
        self.horizontalFlip = horizontalFlip
        self.maxTranslation = maxTranslation
    }

    /// No augmentation.
    public static let none = Augmentation()

    /// Whether every image passes through unchanged.
    public var isIdentity: Bool { cropPadding == 0 && !horizontalFlip && maxTranslation == 0 && photometric.isIdentity }

    /// The random choices for one sample: a pure function of (seed, epoch, sampleIndex).
    /// Draws happen in a fixed order whatever is enabled.
    public func parameters(seed: UInt64, epoch: Int, sampleIndex: Int) -> AugmentationParameters {
        let key = counterHash(seed ^ 0xA06_3E47_A710_0003, UInt64(truncatingIfNeeded: epoch))
        var rng = SplitMix64(seed: counterHash(key, UInt64(truncatingIfNeeded: sampleIndex)))
        let flipBit = rng.next() >> 63 == 1
        let cropY = Int(uniformBelow(UInt64(2 * cropPadding + 1), &rng)) - cropPadding
        let cropX = Int(uniformBelow(UInt64(2 * cropPadding + 1), &rng)) - cropPadding
        let moveY = Int(uniformBelow(UInt64(2 * maxTranslation + 1), &rng)) - maxTranslation
        let moveX = Int(uniformBelow(UInt64(2 * maxTranslation + 1), &rng)) - maxTranslation
        return AugmentationParameters(flip: horizontalFlip && flipBit, shiftY: cropY + moveY, shiftX: cropX + moveX)
    }
}

/// The geometric transform applied to one sample (see the file comment).
public struct AugmentationParameters: Equatable, Sendable {
    /// Mirror left–right (applied before the shift).
    public var flip: Bool
    /// Output row y reads row y + shiftY of the (mirrored) image.
    public var shiftY: Int
    /// Output column x reads column x + shiftX of the (mirrored) image.
    public var shiftX: Int

    /// Parameters as given.
    public init(flip: Bool = false, shiftY: Int = 0, shiftX: Int = 0) {
        self.flip = flip
        self.shiftY = shiftY
        self.shiftX = shiftX
    }

    /// The identity transform.
    public static let identity = AugmentationParameters()

    /// Applies the transform to one CHW byte image, filling with 0 (black).
    /// The batch assembler does the same on the fly while normalising.
    public func apply(to image: ArraySlice<UInt8>, channels: Int, height: Int, width: Int) -> [UInt8] {
        precondition(image.count == channels * height * width, "image of \(image.count) bytes is not \(channels)x\(height)x\(width)")
        var out = [UInt8](repeating: 0, count: image.count)
        let base = image.startIndex
        for c in 0..<channels {
            for y in 0..<height {
                let sy = y + shiftY
                guard sy >= 0 && sy < height else { continue }
                for x in 0..<width {
                    let mx = x + shiftX
                    guard mx >= 0 && mx < width else { continue }
                    let sx = flip ? width - 1 - mx : mx
                    out[(c * height + y) * width + x] = image[base + (c * height + sy) * width + sx]
                }
            }
        }
        return out
    }
}

/// The augmentations of torchvision's standard recipes, each with its
/// torchvision meaning, applied in this order (all off by default):
/// RandomResizedCrop(size: the image's, scale, ratio 3/4-4/3), RandomVerticalFlip,
/// RandomRotation(degrees, bilinear, fill 0), ColorJitter(brightness, contrast,
/// saturation), Gaussian noise (sigma, clipped to [0, 1]), RandomErasing(p).
/// Their randomness comes from (seed, epoch, sample index) alone, as the crop's.
public struct TorchvisionAugmentation: Equatable, Sendable, Codable {
    /// RandomResizedCrop's area range; nil: off.
    public var resizedCropScale: [Double]? = nil
    public var verticalFlip = false
    /// RandomRotation's degrees (uniform in ±degrees); 0: off.
    public var rotationDegrees = 0.0
    public var brightness = 0.0
    public var contrast = 0.0
    public var saturation = 0.0
    /// Standard deviation of added Gaussian noise, in [0, 1] pixel units; 0: off.
    public var noiseSigma = 0.0
    /// RandomErasing's probability (its default scale and ratio, erased to 0); 0: off.
    public var erasingProbability = 0.0

    public init() {}

    /// The config keys (`augment:` in a config file), torchvision's names in snake_case.
    public enum CodingKeys: String, CodingKey, CaseIterable {
        case resizedCropScale = "random_resized_crop", verticalFlip = "vertical_flip", rotationDegrees = "rotation"
        case brightness, contrast, saturation, noiseSigma = "gaussian_noise", erasingProbability = "random_erasing"
    }

    /// Decodes strictly: an unknown key is an error naming it and the known ones.
    public init(from decoder: Decoder) throws {
        let names = try decoder.container(keyedBy: AnyKey.self).allKeys.map(\.stringValue)
        if let unknown = names.first(where: { CodingKeys(rawValue: $0) == nil }) {
            throw CnnError.invalidConfig(field: "augment.\(unknown)", value: "(unknown key)",
                                         allowed: CodingKeys.allCases.map(\.rawValue).joined(separator: ", "))
        }
        let c = try decoder.container(keyedBy: CodingKeys.self)
        resizedCropScale = try c.decodeIfPresent([Double].self, forKey: .resizedCropScale)
        verticalFlip = try c.decodeIfPresent(Bool.self, forKey: .verticalFlip) ?? false
        rotationDegrees = try c.decodeIfPresent(Double.self, forKey: .rotationDegrees) ?? 0
        brightness = try c.decodeIfPresent(Double.self, forKey: .brightness) ?? 0
        contrast = try c.decodeIfPresent(Double.self, forKey: .contrast) ?? 0
        saturation = try c.decodeIfPresent(Double.self, forKey: .saturation) ?? 0
        noiseSigma = try c.decodeIfPresent(Double.self, forKey: .noiseSigma) ?? 0
        erasingProbability = try c.decodeIfPresent(Double.self, forKey: .erasingProbability) ?? 0
    }

    /// Throws naming the first value out of range (`augment.<key>`) and what is allowed.
    public func validate() throws {
        if let scale = resizedCropScale {
            guard scale.count == 2, scale.allSatisfy({ $0.isFinite }), 0 < scale[0], scale[0] <= scale[1], scale[1] <= 1 else {
                throw CnnError.invalidConfig(field: "augment.random_resized_crop", value: "\(scale)",
                                             allowed: "[min, max] area fractions with 0 < min <= max <= 1, e.g. [0.08, 1.0]")
            }
        }
        for (key, value, upper) in [(CodingKeys.rotationDegrees, rotationDegrees, 180.0), (.brightness, brightness, 1),
                                    (.contrast, contrast, 1), (.saturation, saturation, 1), (.noiseSigma, noiseSigma, 1),
                                    (.erasingProbability, erasingProbability, 1)] where !(value.isFinite && (0...upper).contains(value)) {
            throw CnnError.invalidConfig(field: "augment.\(key.rawValue)", value: "\(value)", allowed: "a number from 0 to \(upper)")
        }
    }

    public var isIdentity: Bool {
        resizedCropScale == nil && !verticalFlip && rotationDegrees == 0 && brightness == 0 && contrast == 0
            && saturation == 0 && noiseSigma == 0 && erasingProbability == 0
    }

    /// Applies the enabled transforms to one CHW image of [0, 1] values.
    public func apply(_ chw: inout [Float], channels: Int, height: Int, width: Int,
                      seed: UInt64, epoch: Int, sampleIndex: Int) {
        var rng = sampleGenerator(seed: seed, epoch: epoch, sampleIndex: sampleIndex, stream: 0x70C4)
        if let scale = resizedCropScale {
            chw = ImageTransforms.randomResizedCrop(chw, channels: channels, height: height, width: width, outHeight: height,
                                                    outWidth: width, scale: (scale[0], scale[1]), rng: &rng)
        }
        if verticalFlip { _ = ImageTransforms.randomVerticalFlip(&chw, channels: channels, height: height, width: width, rng: &rng) }
        if rotationDegrees > 0 {
            chw = ImageTransforms.randomRotation(chw, channels: channels, height: height, width: width,
                                                 maxDegrees: rotationDegrees, rng: &rng)
        }
        if brightness > 0 || contrast > 0 || saturation > 0 {
            ImageTransforms.colorJitter(&chw, channels: channels, brightness: brightness, contrast: contrast,
                                        saturation: saturation, rng: &rng)
        }
        if noiseSigma > 0 { ImageTransforms.gaussianNoise(&chw, sigma: Float(noiseSigma), rng: &rng) }
        if erasingProbability > 0 {
            _ = ImageTransforms.randomErasing(&chw, channels: channels, height: height, width: width,
                                              probability: erasingProbability, rng: &rng)
        }
    }
}

/// Any key, to list what a mapping holds.
private struct AnyKey: CodingKey {
    var stringValue: String
    var intValue: Int? { nil }
    init(stringValue: String) { self.stringValue = stringValue }
    init?(intValue: Int) { nil }
}
