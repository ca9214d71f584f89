// Convolution geometry: sizes, padding rules and their validation.
//
// Dimension letters: N batch, C input channels, H×W input plane, K output
// channels, kh×kw kernel, outH×outW output plane, G groups (Cg = C/G input
// and Kg = K/G output channels per group).

/// How a convolution fills the border it pads (PyTorch's `padding_mode`):
/// the result equals `F.pad(x, mode)` followed by an unpadded convolution.
public enum PaddingMode: String, CaseIterable, Sendable {
    /// Zeros outside the input.
    case zeros
    /// Mirror without repeating the edge: index -1 reads 1, W reads W-2.
    case reflect
    /// Repeat the edge value: index -1 reads 0, W reads W-1.
    case replicate
    /// Wrap around: index -1 reads W-1, W reads 0.
    case circular
}

/// How much a convolution pads, before the padding mode says with what.
public enum ConvPadding: Equatable, Sendable {
    /// Fixed amounts on each side (asymmetric allowed).
    case explicit(top: Int, bottom: Int, left: Int, right: Int)
    /// TensorFlow's "same": output size ceil(n / stride); the total padding is
    /// split with the odd element after (bottom/right). With stride 1 the
    /// output size equals the input size, as in PyTorch's `padding='same'`.
    case same
    /// No padding.
    case valid
}

/// TensorFlow's "same" padding along one axis:
/// total = max((ceil(n/s) − 1)·s + k_eff − n, 0) with k_eff = (k − 1)·d + 1,
/// before = total / 2 (floor), after = total − before.
/// Example: n = 13, s = 5, k = 6 → total 3, before 1, after 2, output 3.
public func sameConvolutionPadding(inputSize n: Int, kernelSize k: Int, stride s: Int,
                                   dilation d: Int = 1) -> (before: Int, after: Int) {
    let effective = (k - 1) * d + 1
    let outSize = (n + s - 1) / s
    let total = max((outSize - 1) * s + effective - n, 0)
    return (total / 2, total - total / 2)
}

/// Output length of a convolution along one axis: floor((n + pads − k_eff) / s) + 1.
public func convolutionOutputSize(inputSize n: Int, kernelSize k: Int, stride s: Int, dilation d: Int = 1,
                                  padBefore: Int, padAfter: Int) -> Int {
    let effective = (k - 1) * d + 1
    return (n + padBefore + padAfter - effective) / s + 1
}

/// The full geometry of one 2-D convolution over a given input plane:
/// everything the kernels need, validated once.
///
/// A 1-D convolution over (N, C, L) is this with H = 1, kh = 1 and no
/// vertical padding.
public struct Conv2DGeometry: Equatable, Sendable {
    /// Name used in error messages.
    public var layer: String
    /// C, H, W of one input sample.
    public var inChannels: Int, height: Int, width: Int
    /// K.
    public var outChannels: Int
    public var kernelHeight: Int, kernelWidth: Int
    public var strideHeight: Int, strideWidth: Int
    public var dilationHeight: Int, dilationWidth: Int
    /// Resolved padding amounts (after `.same` / `.valid`).
    public var padTop: Int, padBottom: Int, padLeft: Int, padRight: Int
    public var groups: Int
    public var paddingMode: PaddingMode
    /// Output plane, computed.
    public private(set) var outHeight: Int, outWidth: Int

    /// Checks every argument and resolves the padding for an H×W input.
    /// Throws `CnnError.invalidArgument` naming `layer`, the argument and its value.
    public init(layer: String = "Conv2d", inChannels: Int, height: Int, width: Int, outChannels: Int,
                kernelHeight: Int, kernelWidth: Int, strideHeight: Int = 1, strideWidth: Int = 1,
                dilationHeight: Int = 1, dilationWidth: Int = 1, padding: ConvPadding = .valid,
                groups: Int = 1, paddingMode: PaddingMode = .zeros) throws {
        try Conv2DGeometry.checkHyperparameters(
            layer: layer, inChannels: inChannels, outChannels: outChannels,
            kernelHeight: kernelHeight, kernelWidth: kernelWidth, strideHeight: strideHeight,
            strideWidth: strideWidth, dilationHeight: dilationHeight, dilationWidth: dilationWidth,
            padding: padding, groups: groups)
        func bad(_ argument: String, _ value: Any, _ reason: String) -> CnnError {
            .invalidArgument(layer: layer, argument: argument, value: "\(value)", reason: reason)
        }
        guard height > 0, width > 0 else {
            throw bad("input size", "\(height)x\(width)", "input height and width must be positive")
        }
        self.layer = layer
        self.inChannels = inChannels; self.height = height; self.width = width
        self.outChannels = outChannels
        self.kernelHeight = kernelHeight; self.kernelWidth = kernelWidth
        self.strideHeight = strideHeight; self.strideWidth = strideWidth
        self.dilationHeight = dilationHeight; self.dilationWidth = dilationWidth
        self.groups = groups
        self.paddingMode = paddingMode
        switch padding {
        case let .explicit(top, bottom, left, right):
            (padTop, padBottom, padLeft, padRight) = (top, bottom, left, right)
        case .valid:
            (padTop, padBottom, padLeft, padRight) = (0, 0, 0, 0)
        case .same:
            let v = sameConvolutionPadding(inputSize: height, kernelSize: kernelHeight, stride: strideHeight,
                                           dilation: dilationHeight)
            let h = sameConvolutionPadding(inputSize: width, kernelSize: kernelWidth, stride: strideWidth,
                                           dilation: dilationWidth)
            (padTop, padBottom, padLeft, padRight) = (v.before, v.after, h.before, h.after)
        }
        let effH = (kernelHeight - 1) * dilationHeight + 1
        let effW = (kernelWidth - 1) * dilationWidth + 1
        let paddedH = height + padTop + padBottom, paddedW = width + padLeft + padRight
        guard effH <= paddedH, effW <= paddedW else {
            throw bad("kernel size", "\(kernelHeight)x\(kernelWidth) (dilated \(effH)x\(effW))",
                      "larger than the padded input \(paddedH)x\(paddedW)")
        }
        switch paddingMode {
        case .zeros, .replicate: break
        case .reflect:
            // F.pad(mode='reflect') mirrors without the edge, so it needs pad < size.
            guard max(padTop, padBottom) < height, max(padLeft, padRight) < width else {
                throw bad("padding", "(\(padTop), \(padBottom), \(padLeft), \(padRight))",
                          "reflect padding must be smaller than the input size \(height)x\(width)")
            }
        case .circular:
            // F.pad(mode='circular') wraps once, so it needs pad ≤ size.
            guard max(padTop, padBottom) <= height, max(padLeft, padRight) <= width else {
                throw bad("padding", "(\(padTop), \(padBottom), \(padLeft), \(padRight))",
                          "circular padding must not exceed the input size \(height)x\(width)")
            }
        }
        outHeight = (paddedH - effH) / strideHeight + 1
        outWidth = (paddedW - effW) / strideWidth + 1
    }

    /// Checks the arguments that do not depend on the input plane (used when
    /// a layer is built, before any input is seen).
    public static func checkHyperparameters(
        layer: String, inChannels: Int, outChannels: Int, kernelHeight: Int, kernelWidth: Int,
        strideHeight: Int, strideWidth: Int, dilationHeight: Int, dilationWidth: Int,
        padding: ConvPadding, groups: Int
    ) throws {
        func bad(_ argument: String, _ value: Any, _ reason: String) -> CnnError {
            .invalidArgument(layer: layer, argument: argument, value: "\(value)", reason: reason)
        }
        guard inChannels > 0 else { throw bad("in_channels", inChannels, "must be positive") }
        guard outChannels > 0 else { throw bad("out_channels", outChannels, "must be positive") }
        guard kernelHeight > 0, kernelWidth > 0 else {
            throw bad("kernel_size", "\(kernelHeight)x\(kernelWidth)", "must be positive")
        }
        guard strideHeight > 0, strideWidth > 0 else {
            throw bad("stride", "\(strideHeight)x\(strideWidth)", "must be positive")
        }
        guard dilationHeight > 0, dilationWidth > 0 else {
            throw bad("dilation", "\(dilationHeight)x\(dilationWidth)", "must be positive")
        }
        if case let .explicit(top, bottom, left, right) = padding, min(top, bottom, left, right) < 0 {
            throw bad("padding", "(\(top), \(bottom), \(left), \(right))", "must not be negative")
        }
        guard groups > 0 else { throw bad("groups", groups, "must be positive") }
        guard inChannels % groups == 0 else {
            throw bad("groups", groups, "in_channels \(inChannels) is not divisible by groups")
        }
        guard outChannels % groups == 0 else {
            throw bad("groups", groups, "out_channels \(outChannels) is not divisible by groups")
        }
    }

    /// Input channels per group (Cg).
    public var groupInChannels: Int { inChannels / groups }
    /// Output channels per group (Kg).
    public var groupOutChannels: Int { outChannels / groups }
    /// Rows of the im2col panel: Cg·kh·kw, the GEMM reduction length.
    public var panelRows: Int { groupInChannels * kernelHeight * kernelWidth }
    /// Output pixels per image: outH·outW.
    public var outPixels: Int { outHeight * outWidth }
    /// Multiply-accumulates of one sample: K·outH·outW·Cg·kh·kw.
    public var multiplyAccumulates: Int { outChannels * outPixels * panelRows }
    /// True for a 1×1, unpadded convolution with a stride above 1 (a ResNet
    /// shortcut): every input pixel feeds at most one output pixel.
    public var isStridedPointwise: Bool {
        kernelHeight == 1 && kernelWidth == 1 && !isPointwise
            && padTop == 0 && padBottom == 0 && padLeft == 0 && padRight == 0
    }
    /// True when the input itself is the im2col panel: 1×1 kernel, stride 1, no padding.
    public var isPointwise: Bool {
        kernelHeight == 1 && kernelWidth == 1 && strideHeight == 1 && strideWidth == 1
            && padTop == 0 && padBottom == 0 && padLeft == 0 && padRight == 0
    }
}

/// Where padded position `i` (−pad ≤ i < n + pad) of an axis of length `n`
/// reads from, or −1 for a zero (`.zeros` mode outside the input).
/// PyTorch semantics; assumes the pad limits `Conv2DGeometry` checks.
@inline(__always)
public func paddedSourceIndex(_ i: Int, size n: Int, mode: PaddingMode) -> Int {
    if i >= 0 && i < n { return i }
    switch mode {
    case .zeros: return -1
    case .reflect: return i < 0 ? -i : 2 * (n - 1) - i
    case .replicate: return i < 0 ? 0 : n - 1
    case .circular: return ((i % n) + n) % n
    }
}

/// Pads one H×W plane into a (top+H+bottom)×(left+W+right) plane, as
/// `F.pad` does; `.zeros` mode fills with `value` (ConstantPad2d).
/// The same index mapping drives im2col and col2im.
public func padPlane(_ src: UnsafePointer<Float>, height: Int, width: Int,
                     top: Int, bottom: Int, left: Int, right: Int,
                     mode: PaddingMode, value: Float = 0, into dst: UnsafeMutablePointer<Float>) {
    let outW = left + width + right
    for py in 0..<(top + height + bottom) {
        let y = paddedSourceIndex(py - top, size: height, mode: mode)
        for px in 0..<outW {
            let x = paddedSourceIndex(px - left, size: width, mode: mode)
            dst[py * outW + px] = (y < 0 || x < 0) ? value : src[y * width + x]
        }
    }
}
