// Which strategy each convolution pass runs, as a value.
//
// The workspace chooses the path once per geometry and batch (`ConvolutionWorkspace.prepare`),
// from the geometry and the panel block width; the passes only switch on it. So every rule
// that picks a strategy lives in `ConvolutionPath.init`, `bench conv` can print it, and a
// table test pins each reference layer to its path.

/// The strategies of the three passes of one convolution geometry.
public struct ConvolutionPath: Equatable, Sendable, CustomStringConvertible {
    /// Forward (and the forward that computes a flipped backward-data).
    public enum Forward: String, Equatable, Sendable, CaseIterable {
        /// 1×1, stride 1, unpadded: one GEMM per image and group on the NCHW input itself
        /// (planes of 256 pixels and more; smaller ones take packed im2col, `pointwiseUsesPackedPlan`).
        case pointwise
        /// Packed im2col: the GEMM's B panels are built straight from the (phase-plane) input.
        case packedIm2col
        /// 1×1 strided (fp32): the input pixels it reads copied into a contiguous matrix per block
        /// of images, then one plain GEMM per block (`PackedIm2colPlan.stridedPointwiseForward`).
        case subsampledPointwise
        /// Implicit B: the GEMM reads B rows from the phase-plane input in place, over virtual
        /// pixels (no B packing); see `implicitForwardPays`.
        case implicitB
        /// Stored im2col panel per block of output pixels; a block that spans images goes
        /// through the block-output buffer.
        case panel
        /// Stored im2col panel; a block that spans images runs one GEMM per image segment
        /// straight into the NCHW tensor (see `spanningBlocksUseDirectGemm`).
        case panelImageSegments
    }

    /// Backward-data (dx from dY).
    public enum BackwardData: Equatable, Sendable {
        /// A forward convolution of dY with the flipped weights (`flippedBackwardDataGeometry`),
        /// run with the given forward path.
        case flippedForward(Forward)
        /// 1×1, stride 1, unpadded: dx = W_gᵀ · dY per image, no col2im.
        case pointwise
        /// 1×1 strided, Kg ≤ KC (or ≤ `sgemmTilesDepthLimit` on planes of 128 output pixels and
        /// more; smaller ones keep dcol's blocks of several images): each GEMM tile scattered
        /// into dx as it finishes (`sgemmTiles`).
        case stridedPointwiseTiles
        /// 1×1 strided: dcol per block of output rows, written into dx interleaved with zeros.
        case stridedPointwise
        /// 3×3, stride 2, zero pad 1: each dx row gathered from dcol (ConvolutionStride2Backward.swift).
        case stride2Kernel3Gather
        /// Stride 1, zero-padded, whole images per block: each dx row gathered from dcol
        /// (ConvolutionStride1Backward.swift).
        case stride1RowGather
        /// dx zeroed, then col2im scatter-adds of dcol per block.
        case col2im
        /// col2im, with blocks that span images computing dcol one image segment at a time.
        case col2imImageSegments
    }

    /// Backward-weights (dW from x and dY).
    public enum BackwardWeights: String, Equatable, Sendable, CaseIterable {
        /// 1×1, stride 1, unpadded: dW_g += dY · xᵀ per image.
        case pointwise
        /// dY packed as A, the Bᵀ panels transposed straight from the phase-plane input.
        case packedIm2col
        /// 1×1 strided: the Bᵀ panels gathered from the input in place.
        case gatheredPointwise
        /// Stored im2col panel per block; spanning blocks through the block-output buffer.
        case panel
        /// Stored im2col panel; spanning blocks as one GEMM per image segment.
        case panelImageSegments
    }

    public var forward: Forward
    public var backwardData: BackwardData
    public var backwardWeights: BackwardWeights

    public init(forward: Forward, backwardData: BackwardData, backwardWeights: BackwardWeights) {
        self.forward = forward
        self.backwardData = backwardData
        self.backwardWeights = backwardWeights
    }

    /// "forward / backward-data / backward-weights", e.g. "packedIm2col/flip:implicitB/packedIm2col".
    public var description: String {
        "\(forward.rawValue)/\(backwardData.name)/\(backwardWeights.rawValue)"
    }

    /// The paths of `g` when a panel block holds `blockPixels` output pixels (the workspace's
    /// `blockPixels` for this geometry and batch). `allowsPackedIm2col` false keeps every pass
    /// on the stored panel; `implicitB` forces implicit B on (true) or off (false) wherever
    /// packed im2col applies, nil lets the geometry decide.
    /// With `precision` .bf16 no pass takes implicit B or the tile scatter of `sgemmTiles`
    /// (they have no bf16 kernel): a flipped backward-data runs packed im2col (and only with
    /// 4 or more input channels per group, where its GEMM's M fills a tile), strided 1×1
    /// backward-data the dcol path.
    /// `planeLimitBytes` (nil: `packedIm2colPlaneLimitBytes`) is the largest phase-plane copy
    /// packed im2col may use (larger for the forward of a flipped backward-data).
    public init(_ g: Conv2DGeometry, blockPixels p: Int, allowsPackedIm2col: Bool = true, implicitB: Bool? = nil,
                precision: ComputePrecision = .fp32, planeLimitBytes: Int? = nil) {
        let spanning = g.outPixels < p && spanningBlocksUseDirectGemm(g)
        let packed = allowsPackedIm2col
            && packedIm2colApplies(g, planeLimitBytes: planeLimitBytes ?? packedIm2colPlaneLimitBytes)
        if g.isPointwise && !packed {
            forward = .pointwise
        } else if packed && g.isStridedPointwise {
            forward = precision == .fp32 ? .subsampledPointwise : .packedIm2col
        } else if packed {
            forward = precision == .fp32 && implicitForwardPays(g, override: implicitB) ? .implicitB : .packedIm2col
        } else {
            forward = spanning ? .panelImageSegments : .panel
        }

        if g.isPointwise {
            backwardWeights = .pointwise
        } else if packed {
            backwardWeights = g.isStridedPointwise ? .gatheredPointwise : .packedIm2col
        } else {
            backwardWeights = spanning ? .panelImageSegments : .panel
        }

        let fp32 = precision == .fp32
        // Narrow inputs (at most 16 channels per group) on planes under 256 output pixels keep
        // the row gather: the flip's GEMM has only M = Cg rows against a deep K = Kg·kh·kw and
        // copies a padded dY per image, while the gather's GEMM (M = Cg·kh·kw, K = Kg) covers
        // whole images per block (GoogLeNet's 16×14×14 → 48 3×3: 0.61 → 0.71-0.77 of its GEMM).
        // The same on planes under 64 pixels with up to 64 input channels, where the gather's
        // GEMM runs on W_gᵀ packed once per pass over blocks of about 256 columns (GoogLeNet's
        // 48×7×7 → 128: 0.62 → 0.76). Only from 128 output channels per group: fashion-cnn's
        // 50×7×7 → 75 measured faster this way too (0.64 → 0.80), but it keeps the flip so that
        // the reference models' fp32 training keeps its bits.
        let narrowSmallPlane = fp32 && !g.isPointwise && g.isStride1ZeroPadded && g.outPixels <= p
            && ((g.groupInChannels <= 16 && g.outPixels < 256)
                || (g.groupInChannels <= 64 && g.outPixels < 64 && g.groupOutChannels >= 128))
        if allowsPackedIm2col, !narrowSmallPlane, let bg = flippedBackwardDataGeometry(g, implicitB: implicitB),
           fp32 || g.groupInChannels >= 4 {
            backwardData = .flippedForward(fp32 && implicitForwardPays(bg, override: implicitB) ? .implicitB : .packedIm2col)
        } else if g.isPointwise {
            backwardData = .pointwise
        } else if fp32 && g.isStridedPointwise && sgemmTilesSupports(k: g.groupOutChannels)
                    && (g.groupOutChannels <= GemmBlocking.KC || g.outPixels >= 128) {
            backwardData = .stridedPointwiseTiles
        } else if g.isStridedPointwise && p >= g.outWidth {
            backwardData = .stridedPointwise
        } else if g.isStride2Kernel3Pad1 && p >= g.outWidth {
            backwardData = .stride2Kernel3Gather
        } else if g.isStride1ZeroPadded && g.outPixels <= p {
            backwardData = .stride1RowGather
        } else {
            backwardData = spanning ? .col2imImageSegments : .col2im
        }
    }
}

extension ConvolutionPath.BackwardData {
    /// A short name: the case, "flip:<forward>" for a flipped forward.
    public var name: String {
        switch self {
        case .flippedForward(let f): return "flip:\(f.rawValue)"
        case .pointwise: return "pointwise"
        case .stridedPointwiseTiles: return "stridedPointwiseTiles"
        case .stridedPointwise: return "stridedPointwise"
        case .stride2Kernel3Gather: return "stride2Kernel3Gather"
        case .stride1RowGather: return "stride1RowGather"
        case .col2im: return "col2im"
        case .col2imImageSegments: return "col2imImageSegments"
        }
    }
}

extension ConvolutionPath.Forward {
    /// Whether this path runs on a `PackedIm2colPlan`.
    var usesPackedPlan: Bool { self == .packedIm2col || self == .implicitB || self == .subsampledPointwise }
}
