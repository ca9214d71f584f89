import XCTest
import CnnCore

/// The blocked im2col kernels against direct loops, on shapes where a tiny
/// panel budget forces many blocks (blocks inside images and blocks spanning images).
final class ConvolutionBlockedTests: XCTestCase {

    /// Direct-loop reference of the padded input (independent of the kernels' tables).
    struct Naive {
        let g: Conv2DGeometry
        func source(_ i: Int, _ n: Int) -> Int? {
            if i >= 0 && i < n { return i }
            switch g.paddingMode {
            case .zeros: return nil
            case .reflect: return i < 0 ? -i : (n - 1) - (i - (n - 1))
            case .replicate: return min(max(i, 0), n - 1)
            case .circular: return i < 0 ? i + n : i - n
            }
        }
        /// Calls body(output index, input index, weight index) for every multiply-accumulate.
        func forEachTap(batch: Int, _ body: (Int, Int, Int) -> Void) {
            let Cg = g.groupInChannels, Kg = g.groupOutChannels
            for n in 0..<batch { for k in 0..<g.outChannels {
                let grp = k / Kg
                for oy in 0..<g.outHeight { for ox in 0..<g.outWidth {
                    let out = ((n * g.outChannels + k) * g.outHeight + oy) * g.outWidth + ox
                    for cl in 0..<Cg { for a in 0..<g.kernelHeight { for b in 0..<g.kernelWidth {
                        let c = grp * Cg + cl
                        guard let y = source(oy * g.strideHeight - g.padTop + a * g.dilationHeight, g.height),
                              let x = source(ox * g.strideWidth - g.padLeft + b * g.dilationWidth, g.width) else { continue }
                        let xi = ((n * g.inChannels + c) * g.height + y) * g.width + x
                        let wi = ((k * Cg + cl) * g.kernelHeight + a) * g.kernelWidth + b
                        body(out, xi, wi)
                    } } }
                } }
            } }
        }
    }

    func random(_ count: Int, _ rng: inout SplitMix64) -> [Float] {
        (0..<count).map { _ in rng.nextUnitFloat() * 2 - 1 }
    }

    /// Checks the stored-panel path (with `budget`) and the packed im2col path against the direct loops.
    func check(_ g: Conv2DGeometry, batch: Int, budget: Int, manyBlocks: Bool = true, file: StaticString = #filePath, line: UInt = #line) {
        check(g, batch: batch, budget: budget, packed: false, manyBlocks: manyBlocks, file: file, line: line)
        check(g, batch: batch, budget: budget, packed: true, manyBlocks: false, file: file, line: line)
    }

    func check(_ g: Conv2DGeometry, batch: Int, budget: Int, packed: Bool, manyBlocks: Bool,
               path expected: ConvolutionPath? = nil, file: StaticString = #filePath, line: UInt = #line) {
        var rng = SplitMix64(seed: UInt64(g.height * 131 + g.width * 7 + batch))
        let x = random(batch * g.inChannels * g.height * g.width, &rng)
        let w = random(g.outChannels * g.panelRows, &rng)
        let bias = random(g.outChannels, &rng)
        let dy = random(batch * g.outChannels * g.outPixels, &rng)
        var yRef = [Double](repeating: 0, count: dy.count)
        var dxRef = [Double](repeating: 0, count: x.count)
        var dwRef = [Double](repeating: 0, count: w.count)
        Naive(g: g).forEachTap(batch: batch) { out, xi, wi in
            yRef[out] += Double(x[xi]) * Double(w[wi])
            dxRef[xi] += Double(w[wi]) * Double(dy[out])
            dwRef[wi] += Double(dy[out]) * Double(x[xi])
        }
        for i in 0..<yRef.count { yRef[i] += Double(bias[i / g.outPixels % g.outChannels]) }
        var dbRef = [Double](repeating: 0, count: g.outChannels)
        for i in 0..<dy.count { dbRef[i / g.outPixels % g.outChannels] += Double(dy[i]) }

        let ws = ConvolutionWorkspace(panelBudgetBytes: budget, allowsPackedIm2col: packed)
        var y = [Float](repeating: .nan, count: dy.count)
        var dx = [Float](repeating: .nan, count: x.count)
        var dw = [Float](repeating: 0.5, count: w.count)   // backward-weights accumulates
        var db = [Float](repeating: 0.5, count: g.outChannels)
        x.withUnsafeBufferPointer { xp in w.withUnsafeBufferPointer { wp in bias.withUnsafeBufferPointer { bp in
            dy.withUnsafeBufferPointer { dyp in
                y.withUnsafeMutableBufferPointer { yp in
                    convolution2DForward(input: xp.baseAddress!, weight: wp.baseAddress!, bias: bp.baseAddress!,
                                         output: yp.baseAddress!, batch: batch, geometry: g, workspace: ws)
                }
                dx.withUnsafeMutableBufferPointer { dxp in
                    convolution2DBackwardData(gradOutput: dyp.baseAddress!, weight: wp.baseAddress!,
                                              gradInput: dxp.baseAddress!, batch: batch, geometry: g, workspace: ws)
                }
                dw.withUnsafeMutableBufferPointer { dwp in db.withUnsafeMutableBufferPointer { dbp in
                    convolution2DBackwardWeights(input: xp.baseAddress!, gradOutput: dyp.baseAddress!,
                                                 gradWeight: dwp.baseAddress!, gradBias: dbp.baseAddress!,
                                                 batch: batch, geometry: g, workspace: ws)
                } }
            }
        } } }
        // A NaN (an element never written: the outputs start as NaN) counts as infinitely wrong;
        // `max()` alone would skip it.
        func worst(_ a: [Float], _ b: [Double], offset: Double = 0) -> Double {
            zip(a, b).map { let e = abs(Double($0) - offset - $1) / max(1, abs($1)); return e.isNaN ? .infinity : e }.max() ?? 0
        }
        let label = "\(g.height)x\(g.width) C\(g.inChannels) K\(g.outChannels) k\(g.kernelHeight)x\(g.kernelWidth) "
            + "s\(g.strideHeight)x\(g.strideWidth) d\(g.dilationHeight) g\(g.groups) \(g.paddingMode) N\(batch) "
            + "P\(ws.blockPixels)" + (packed ? " packed" : " panel")
        if let expected { XCTAssertEqual(ws.path, expected, "path " + label, file: file, line: line) }
        if manyBlocks {
            XCTAssertLessThan(ws.blockPixels * 2, batch * g.outPixels, "too few blocks: " + label, file: file, line: line)
        }
        XCTAssertLessThan(worst(y, yRef), 1e-4, "forward " + label, file: file, line: line)
        XCTAssertLessThan(worst(dx, dxRef), 1e-4, "backward-data " + label, file: file, line: line)
        XCTAssertLessThan(worst(dw, dwRef, offset: 0.5), 1e-4, "backward-weights " + label, file: file, line: line)
        XCTAssertLessThan(worst(db, dbRef, offset: 0.5), 1e-4, "bias " + label, file: file, line: line)
    }

    func geometry(_ c: Int, _ h: Int, _ w: Int, _ k: Int, kernel: (Int, Int), stride: (Int, Int) = (1, 1),
                  dilation: (Int, Int) = (1, 1), padding: ConvPadding = .valid, groups: Int = 1,
                  mode: PaddingMode = .zeros) throws -> Conv2DGeometry {
        try Conv2DGeometry(inChannels: c, height: h, width: w, outChannels: k, kernelHeight: kernel.0,
                           kernelWidth: kernel.1, strideHeight: stride.0, strideWidth: stride.1,
                           dilationHeight: dilation.0, dilationWidth: dilation.1, padding: padding,
                           groups: groups, paddingMode: mode)
    }

    func testBlocksInsideImages() throws {
        // 3·3·3 = 27 rows · 4 bytes → a 1 KiB budget gives P = 16 pixels; 13×11 = 143 pixels → 9 blocks per image.
        for mode in PaddingMode.allCases {
            check(try geometry(3, 13, 11, 5, kernel: (3, 3), padding: .explicit(top: 1, bottom: 2, left: 2, right: 1),
                               mode: mode), batch: 2, budget: 1024)
        }
        check(try geometry(4, 12, 9, 6, kernel: (3, 2), stride: (2, 3), dilation: (2, 1), padding: .same, groups: 2),
              batch: 2, budget: 512)
    }

    func testBlocksSpanningImages() throws {
        // 8·3·3 = 72 rows → a 4.5 KiB budget gives P = 16 > 3·3 = 9 pixels per image: blocks span images.
        for mode in PaddingMode.allCases {
            check(try geometry(8, 5, 5, 6, kernel: (3, 3), stride: (2, 2), padding: .explicit(top: 1, bottom: 1, left: 1, right: 1),
                               mode: mode), batch: 5, budget: 72 * 4 * 16)
        }
        // Depthwise, dilated, 7×7 maps: 49 pixels, P = 64 → blocks straddle image boundaries.
        check(try geometry(6, 7, 7, 6, kernel: (3, 3), dilation: (2, 2), padding: .same, groups: 6, mode: .reflect),
              batch: 4, budget: 9 * 4 * 64)
        // Default budget, several images in one block.
        check(try geometry(16, 8, 8, 8, kernel: (3, 3), padding: .same, groups: 2), batch: 3, budget: convolutionPanelBudgetBytes,
              manyBlocks: false)
    }

    func testStrideTwoThreeByThreeGather() throws {
        // Backward-data gathers per dx row (isStride2Kernel3Pad1). Blocks of one output row
        // (27 rows, P = 32 ≥ outW): odd 37×35 maps, pad 1 all round; even 36×34, pad only top / left.
        check(try geometry(3, 37, 35, 4, kernel: (3, 3), stride: (2, 2),
                           padding: .explicit(top: 1, bottom: 1, left: 1, right: 1)), batch: 2, budget: 27 * 4 * 32)
        check(try geometry(3, 36, 34, 4, kernel: (3, 3), stride: (2, 2),
                           padding: .explicit(top: 1, bottom: 0, left: 1, right: 0)), batch: 2, budget: 27 * 4 * 32)
        // Blocks of several whole images (18 rows, P = 192, 8×8 = 64 pixels per image: 3, 3, 1), two groups.
        check(try geometry(4, 16, 16, 6, kernel: (3, 3), stride: (2, 2),
                           padding: .explicit(top: 1, bottom: 1, left: 1, right: 1), groups: 2),
              batch: 7, budget: 18 * 4 * 192)
        // Blocks of several output rows, bottom / right padding 2.
        check(try geometry(2, 33, 40, 3, kernel: (3, 3), stride: (2, 2),
                           padding: .explicit(top: 1, bottom: 2, left: 1, right: 2)), batch: 2, budget: 18 * 4 * 80)
        // dcol GEMMs wider than one B panel (128 columns: the fp32 weights are packed once per
        // pass and each panel of dY packed from its own columns): whole images (3 × 400 columns)
        // and 6 output rows of 30 (180 columns).
        check(try geometry(4, 40, 40, 6, kernel: (3, 3), stride: (2, 2),
                           padding: .explicit(top: 1, bottom: 1, left: 1, right: 1)), batch: 3,
              budget: convolutionPanelBudgetBytes, manyBlocks: false)
        check(try geometry(4, 60, 60, 6, kernel: (3, 3), stride: (2, 2),
                           padding: .explicit(top: 1, bottom: 1, left: 1, right: 1)), batch: 2, budget: 36 * 4 * 200)
    }

    func testStrideOneRowGather() throws {
        // Backward-data of stride-1 zero-padded layers whose images fit a block gathers each dx
        // row from dcol (masked shifted loads). LeNet-5's 6-channel layer in blocks of 2 + 2 + 1
        // images (150 rows, P = 208 ≥ 2 · 100); a 1-channel first layer (28-wide rows, 4 vectors).
        check(try geometry(6, 14, 14, 16, kernel: (5, 5)), batch: 5, budget: 150 * 4 * 208, manyBlocks: false)
        check(try geometry(1, 28, 28, 5, kernel: (3, 3), padding: .same), batch: 3, budget: 1 << 20, manyBlocks: false)
        // Small planes whose dcol fits in L1: as many images per block as the panel budget allows (2).
        check(try geometry(3, 4, 4, 4, kernel: (3, 3), padding: .same), batch: 5, budget: 27 * 4 * 32)
        // 37-wide rows (a chunk of 4 vectors, then 1), dilation, asymmetric padding, two groups.
        check(try geometry(4, 6, 37, 4, kernel: (3, 5), dilation: (2, 2),
                           padding: .explicit(top: 2, bottom: 0, left: 3, right: 1), groups: 2),
              batch: 2, budget: 1 << 20, manyBlocks: false)
        // Rows narrower than a vector (whole-vector stores run into the next row), an output
        // wider than the input, and padding wider than the kernel (dx pixels no tap reaches).
        check(try geometry(2, 6, 3, 3, kernel: (2, 2), padding: .explicit(top: 1, bottom: 1, left: 1, right: 1)),
              batch: 3, budget: 1 << 20, manyBlocks: false)
        check(try geometry(2, 5, 9, 3, kernel: (3, 3), padding: .explicit(top: 3, bottom: 0, left: 4, right: 1)),
              batch: 2, budget: 1 << 20, manyBlocks: false)
        // Split over 3 threads by images.
        let saved = ComputeThreads.count
        defer { ComputeThreads.count = saved }
        ComputeThreads.count = 3
        check(try geometry(6, 14, 14, 16, kernel: (5, 5)), batch: 7, budget: 150 * 4 * 208, manyBlocks: false)
    }

    /// Planes under 64 pixels with 17-64 input channels and at least 128 output channels per
    /// group also take the row gather, with W_gᵀ packed once per pass and wide blocks of whole
    /// images (about 256 columns, in blocks of equal size).
    func testStrideOneRowGatherOnSmallPlanesWithWideBlocks() throws {
        let gather = ConvolutionPath(forward: .packedIm2col, backwardData: .stride1RowGather, backwardWeights: .packedIm2col)
        let flip = ConvolutionPath(forward: .packedIm2col, backwardData: .flippedForward(.packedIm2col),
                                   backwardWeights: .packedIm2col)
        let pad1 = ConvPadding.explicit(top: 1, bottom: 1, left: 1, right: 1)
        // GoogLeNet's 5b.branch3.1 shape scaled down in channels: 288 dcol rows (two MC blocks of
        // the packed weights), 49 pixels, 8 images per wide block: 11 images as 6 + 5.
        let g = try geometry(32, 7, 7, 128, kernel: (3, 3), padding: pad1)
        let ws = ConvolutionWorkspace(allowsPackedIm2col: true)
        ws.prepare(for: g, batch: 11)
        XCTAssertEqual(ws.backwardDataBlockPixels, 8 * 49)
        check(g, batch: 11, budget: convolutionPanelBudgetBytes, packed: true, manyBlocks: false, path: gather)
        // One image per task and a single image; rows of 6 (whole-vector stores into the next row).
        check(try geometry(40, 6, 6, 130, kernel: (3, 3), padding: pad1), batch: 1,
              budget: convolutionPanelBudgetBytes, packed: true, manyBlocks: false, path: gather)
        // Two groups of 32 → 128, a 5×7 plane.
        check(try geometry(64, 5, 7, 256, kernel: (3, 3), padding: pad1, groups: 2), batch: 4,
              budget: convolutionPanelBudgetBytes, packed: true, manyBlocks: false, path: gather)
        // Fewer than 128 output channels (fashion-cnn's 50 → 75 at 7×7) and 64-pixel planes keep the flip.
        check(try geometry(50, 7, 7, 75, kernel: (3, 3), padding: pad1), batch: 3,
              budget: convolutionPanelBudgetBytes, packed: true, manyBlocks: false, path: flip)
        check(try geometry(32, 8, 8, 128, kernel: (3, 3), padding: pad1), batch: 2,
              budget: convolutionPanelBudgetBytes, packed: true, manyBlocks: false, path: flip)
        // Split over 2 and 3 threads by images.
        let saved = ComputeThreads.count
        defer { ComputeThreads.count = saved }
        for threads in [2, 3] {
            ComputeThreads.count = threads
            check(g, batch: 16, budget: convolutionPanelBudgetBytes, packed: true, manyBlocks: false, path: gather)
        }
    }

    /// Forward blocks of up to 8 images of 7×7 (392 columns) through packed im2col, in blocks of
    /// equal size (17 images: 6 + 6 + 5; 2 threads: 9 + 8 images, 5 + 4 / 4 + 4), 3×3 and 1×1,
    /// and their backward-data as flipped forwards over the same blocks.
    func testSevenBySevenForwardBlocksOfEightImages() throws {
        let pad1 = ConvPadding.explicit(top: 1, bottom: 1, left: 1, right: 1)
        let saved = ComputeThreads.count
        defer { ComputeThreads.count = saved }
        for threads in [1, 2] {
            ComputeThreads.count = threads
            check(try geometry(24, 7, 7, 20, kernel: (3, 3), padding: pad1), batch: 17,
                  budget: convolutionPanelBudgetBytes, packed: true, manyBlocks: false,
                  path: ConvolutionPath(forward: .packedIm2col, backwardData: .flippedForward(.packedIm2col),
                                        backwardWeights: .packedIm2col))
            check(try geometry(16, 7, 7, 24, kernel: (1, 1)), batch: 17, budget: convolutionPanelBudgetBytes,
                  packed: true, manyBlocks: false,
                  path: ConvolutionPath(forward: .packedIm2col, backwardData: .flippedForward(.packedIm2col),
                                        backwardWeights: .pointwise))
        }
    }

    /// col2im of stride-2 layers adds 8 dcol floats per 16-float dx vector: the 7×7 stride-2
    /// stem shape (pad 3) with output rows of 23 and 19 pixels (vectors, then the last 8+ floats
    /// one by one), two groups, and reflect padding (the border through the padding table).
    func testStrideTwoCol2imAgainstReference() throws {
        let pad3 = ConvPadding.explicit(top: 3, bottom: 3, left: 3, right: 3)
        let col2im = ConvolutionPath(forward: .packedIm2col, backwardData: .col2im, backwardWeights: .packedIm2col)
        check(try geometry(3, 48, 46, 64, kernel: (7, 7), stride: (2, 2), padding: pad3), batch: 2,
              budget: convolutionPanelBudgetBytes, packed: true, manyBlocks: false, path: col2im)
        check(try geometry(3, 37, 38, 8, kernel: (7, 7), stride: (2, 2), padding: pad3), batch: 2, budget: 147 * 4 * 64)
        check(try geometry(4, 35, 41, 6, kernel: (5, 5), stride: (2, 2), padding: .explicit(top: 2, bottom: 1, left: 2, right: 0),
                           groups: 2), batch: 2, budget: 1 << 20, manyBlocks: false)
        check(try geometry(3, 30, 44, 4, kernel: (7, 7), stride: (2, 2), padding: pad3, mode: .reflect), batch: 2,
              budget: 1 << 20, manyBlocks: false)
    }

    func testPointwiseAndStridedOneByOne() throws {
        check(try geometry(6, 5, 7, 4, kernel: (1, 1)), batch: 3, budget: 256, manyBlocks: false)
        check(try geometry(6, 5, 7, 4, kernel: (1, 1), groups: 2), batch: 2, budget: 256, manyBlocks: false)
        check(try geometry(6, 9, 9, 4, kernel: (1, 1), stride: (2, 2)), batch: 3, budget: 256)   // resnet shortcut shape
        // Even widths: the packed path gathers 8 outputs per 16-float load (runs of 16 and 1 for outW = 17).
        check(try geometry(6, 10, 34, 4, kernel: (1, 1), stride: (2, 2)), batch: 3, budget: 1 << 20, manyBlocks: false)
        check(try geometry(5, 9, 12, 3, kernel: (1, 1), stride: (3, 2)), batch: 2, budget: 1 << 20, manyBlocks: false)
        // Backward-data tile by tile from the GEMM (sgemmTiles) with two groups and tiles spanning
        // several output rows; and more than KC = 384 output channels (one K step no longer
        // holds them: the stored-dcol path, with odd and with 16-wide output rows).
        check(try geometry(8, 14, 16, 6, kernel: (1, 1), stride: (2, 2), groups: 2), batch: 2, budget: 1 << 20,
              manyBlocks: false)
        check(try geometry(3, 7, 8, 400, kernel: (1, 1), stride: (2, 2)), batch: 2, budget: 1 << 20, manyBlocks: false)
        check(try geometry(2, 4, 32, 400, kernel: (1, 1), stride: (2, 2)), batch: 2, budget: 1 << 20, manyBlocks: false)
    }

    /// The fp32 strided 1×1 forward through a subsampled copy (`subsampledPointwise`) against the
    /// direct loops: one image per GEMM straight into y (23×23 = 529 output pixels), blocks of
    /// several images through the block buffer in equal sizes (10×10: 6 per GEMM, 7 images → 4 + 3),
    /// output rows of 8 and more (whole vectors, then an overlapping last one: 17 and 23 wide)
    /// and shorter ones (one load per row, or element by element where fewer than 16 floats of
    /// the plane remain: 9×9 and 7×8 inputs), stride 3 in x, two groups, three threads.
    func testSubsampledStridedPointwiseForward() throws {
        let oneByOne: [(Conv2DGeometry, Int)] = [
            (try geometry(3, 46, 46, 5, kernel: (1, 1), stride: (2, 2)), 2),
            (try geometry(5, 20, 20, 7, kernel: (1, 1), stride: (2, 2)), 7),
            (try geometry(6, 10, 34, 4, kernel: (1, 1), stride: (2, 2)), 3),
            (try geometry(4, 9, 9, 3, kernel: (1, 1), stride: (2, 2)), 3),
            (try geometry(3, 7, 8, 9, kernel: (1, 1), stride: (2, 2)), 2),
            (try geometry(4, 12, 15, 3, kernel: (1, 1), stride: (2, 3)), 2),
            (try geometry(8, 14, 16, 6, kernel: (1, 1), stride: (2, 2), groups: 2), 3),
        ]
        for (g, batch) in oneByOne {
            let ws = ConvolutionWorkspace()
            ws.prepare(for: g, batch: batch)
            XCTAssertEqual(ws.path.forward, .subsampledPointwise, "\(g.height)x\(g.width)")
            check(g, batch: batch, budget: 1 << 20, packed: true, manyBlocks: false)
        }
        let saved = ComputeThreads.count
        defer { ComputeThreads.count = saved }
        ComputeThreads.count = 3
        check(try geometry(5, 20, 20, 7, kernel: (1, 1), stride: (2, 2)), batch: 17, budget: 1 << 20, packed: true,
              manyBlocks: false)
    }

    func testPackedIm2colShapes() throws {
        // Output rows wider and narrower than a 16-column micro-panel, planes not a multiple of 16,
        // stride 2 and 3, dilation, asymmetric padding, groups.
        check(try geometry(5, 19, 23, 7, kernel: (3, 3), padding: .same), batch: 2, budget: 1 << 20, manyBlocks: false)
        check(try geometry(4, 9, 5, 6, kernel: (3, 3), padding: .explicit(top: 0, bottom: 2, left: 1, right: 0)),
              batch: 3, budget: 1 << 20, manyBlocks: false)
        check(try geometry(6, 21, 37, 5, kernel: (3, 3), stride: (2, 2), padding: .explicit(top: 1, bottom: 1, left: 1, right: 1)),
              batch: 2, budget: 1 << 20, manyBlocks: false)
        check(try geometry(4, 17, 20, 5, kernel: (3, 2), stride: (3, 3), dilation: (2, 1), padding: .same), batch: 2,
              budget: 1 << 20, manyBlocks: false)
        check(try geometry(8, 11, 13, 8, kernel: (5, 5), dilation: (2, 2), padding: .same, groups: 4), batch: 2,
              budget: 1 << 20, manyBlocks: false)
        // Unpadded stride 1 (the input is read in place), as in LeNet-5.
        check(try geometry(6, 14, 14, 16, kernel: (5, 5)), batch: 3, budget: 1 << 20, manyBlocks: false)
        // Backward-data as a flipped forward (≥ 8 input channels, stride 1): asymmetric padding, dilation.
        check(try geometry(10, 9, 11, 6, kernel: (3, 5), dilation: (2, 1),
                           padding: .explicit(top: 2, bottom: 1, left: 0, right: 3)), batch: 2, budget: 1 << 20, manyBlocks: false)
        check(try geometry(16, 7, 7, 12, kernel: (3, 3), padding: .same, groups: 2), batch: 3, budget: 1 << 20,
              manyBlocks: false)
        // Small planes: forward GEMMs over blocks of several images (5×5: 8 + 1 images; 7×7 with two groups).
        check(try geometry(9, 5, 5, 10, kernel: (3, 3), padding: .same), batch: 9, budget: 1 << 20, manyBlocks: false)
        check(try geometry(12, 9, 9, 8, kernel: (3, 3), stride: (2, 2), padding: .same, groups: 2), batch: 5,
              budget: 1 << 20, manyBlocks: false)
        // Implicit B (rows not a multiple of 16 wide, little waste): forward with 6 and 20 output
        // channels; backward-data of a 1-channel 5×5 layer through the M = 1 kernel (LeNet-5's first layer).
        check(try geometry(3, 28, 28, 6, kernel: (5, 5), padding: .same), batch: 2, budget: 1 << 20, manyBlocks: false)
        check(try geometry(20, 14, 14, 20, kernel: (3, 3), padding: .same), batch: 2, budget: 1 << 20, manyBlocks: false)
        check(try geometry(1, 28, 28, 6, kernel: (5, 5), padding: .same), batch: 2, budget: 1 << 20, manyBlocks: false)
        check(try geometry(1, 30, 26, 7, kernel: (5, 5), padding: .explicit(top: 2, bottom: 1, left: 2, right: 2)), batch: 2,
              budget: 1 << 20, manyBlocks: false)
        // Backward-data of 3-channel first layers through implicit B with M = 3.
        check(try geometry(3, 20, 20, 12, kernel: (3, 3), padding: .same), batch: 2, budget: 1 << 20, manyBlocks: false)
        check(try geometry(3, 16, 16, 8, kernel: (3, 3), padding: .same), batch: 2, budget: 1 << 20, manyBlocks: false)
        // More than KC = 384 reduction rows (2 K steps) and more than MC = 144 output channels (2 row blocks).
        check(try geometry(48, 6, 7, 150, kernel: (3, 3), padding: .same), batch: 2, budget: 1 << 20, manyBlocks: false)
    }

    func testPackedIm2colThreadsMatchOneThread() throws {
        let g = try geometry(8, 12, 12, 12, kernel: (3, 3), padding: .same)
        let saved = ComputeThreads.count
        defer { ComputeThreads.count = saved }
        ComputeThreads.count = 3
        check(g, batch: 5, budget: 1 << 20, manyBlocks: false)
        // Implicit B, split by images and (one image) by columns.
        let implicit = try geometry(20, 14, 14, 20, kernel: (3, 3), padding: .same)
        check(implicit, batch: 4, budget: 1 << 20, manyBlocks: false)
        check(implicit, batch: 1, budget: 1 << 20, manyBlocks: false)
        check(try geometry(1, 28, 28, 6, kernel: (5, 5), padding: .same), batch: 1, budget: 1 << 20, manyBlocks: false)
    }

    /// The three passes of `g` (one thread, batch 2) with the given GEMM kernel.
    func passes(_ g: Conv2DGeometry, kernel: GemmKernel, batch: Int = 2) -> (y: [Float], dx: [Float], dw: [Float], path: ConvolutionPath) {
        let previous = GemmKernel.current
        defer { GemmKernel.current = previous }
        GemmKernel.current = kernel
        var rng = SplitMix64(seed: UInt64(g.height * 31 + g.inChannels))
        let x = random(batch * g.inChannels * g.height * g.width, &rng)
        let w = random(g.outChannels * g.panelRows, &rng)
        let dy = random(batch * g.outChannels * g.outPixels, &rng)
        var y = [Float](repeating: .nan, count: dy.count), dx = [Float](repeating: .nan, count: x.count)
        var dw = [Float](repeating: 0, count: w.count)
        let ws = ConvolutionWorkspace()
        convolution2DForward(input: x, weight: w, bias: nil, output: &y, batch: batch, geometry: g, workspace: ws)
        convolution2DBackwardData(gradOutput: dy, weight: w, gradInput: &dx, batch: batch, geometry: g, workspace: ws)
        convolution2DBackwardWeights(input: x, gradOutput: dy, gradWeight: &dw, gradBias: nil, batch: batch,
                                     geometry: g, workspace: ws)
        return (y, dx, dw, ws.path)
    }

    /// The AVX-512 32-column tiles of implicit B and of `sgemmTiles` (strided 1×1 backward-data)
    /// give the AVX2 kernels' bits, and the reference's values: whole and partial row panels,
    /// two K steps, ragged column ends, output rows shorter than a tile; plus the 1×1 flip on
    /// small planes, whose weights are packed transposed instead of copied.
    func testWideKernelPathsMatchSIMDBitsAndReference() throws {
        let cases: [(Conv2DGeometry, ConvolutionPath)] = [
            (try geometry(16, 13, 20, 16, kernel: (3, 3), padding: .same),
             ConvolutionPath(forward: .implicitB, backwardData: .flippedForward(.implicitB), backwardWeights: .packedIm2col)),
            (try geometry(16, 13, 20, 7, kernel: (3, 3), padding: .same),
             ConvolutionPath(forward: .implicitB, backwardData: .flippedForward(.implicitB), backwardWeights: .packedIm2col)),
            (try geometry(48, 9, 22, 30, kernel: (3, 3), padding: .same),
             ConvolutionPath(forward: .implicitB, backwardData: .flippedForward(.packedIm2col), backwardWeights: .packedIm2col)),
            (try geometry(24, 28, 28, 40, kernel: (1, 1), stride: (2, 2)),
             ConvolutionPath(forward: .subsampledPointwise, backwardData: .stridedPointwiseTiles, backwardWeights: .gatheredPointwise)),
            (try geometry(10, 14, 22, 13, kernel: (1, 1), stride: (2, 2)),
             ConvolutionPath(forward: .subsampledPointwise, backwardData: .stridedPointwiseTiles, backwardWeights: .gatheredPointwise)),
            (try geometry(40, 7, 7, 27, kernel: (1, 1)),
             ConvolutionPath(forward: .packedIm2col, backwardData: .flippedForward(.packedIm2col), backwardWeights: .pointwise)),
        ]
        for (g, expected) in cases {
            check(g, batch: 2, budget: 1 << 20, packed: true, manyBlocks: false, path: expected)
            guard CPUFeatures.current.avx512FP32 else { continue }
            let simd = passes(g, kernel: .simd), wide = passes(g, kernel: .avx512)
            let label = "\(g.inChannels)x\(g.height)x\(g.width)->\(g.outChannels) k\(g.kernelHeight) s\(g.strideHeight)"
            XCTAssertEqual(wide.path, expected, label)
            XCTAssertEqual(simd.y, wide.y, "forward " + label)
            XCTAssertEqual(simd.dx, wide.dx, "backward-data " + label)
            XCTAssertEqual(simd.dw, wide.dw, "backward-weights " + label)
        }
    }

    /// Backward-data as a forward pass over the flipped k×k kernel packs the flip straight from
    /// w (`packFlippedWeights`, for packed im2col and implicit B): against the reference with two K steps (50·9 > KC), groups,
    /// more than MC input channels (two row blocks, a tail panel), a partial panel (21 = 6 + 6 + 6 + 3) and a 5×5 kernel.
    func testFlippedKernelPackedFromWeightsMatchesReference() throws {
        let cases = [
            try geometry(21, 7, 7, 50, kernel: (3, 3), padding: .same),
            try geometry(48, 16, 17, 18, kernel: (3, 3), padding: .same, groups: 3),
            try geometry(150, 5, 6, 8, kernel: (3, 3), padding: .same),
            try geometry(20, 16, 17, 14, kernel: (5, 5), padding: .same),
        ]
        for g in cases {
            let ws = ConvolutionWorkspace(panelBudgetBytes: 1 << 20, allowsPackedIm2col: true)
            ws.prepare(for: g, batch: 2)
            XCTAssertTrue([.flippedForward(.packedIm2col), .flippedForward(.implicitB)].contains(ws.path.backwardData),
                          "\(ws.path.backwardData) \(g.inChannels)x\(g.height)x\(g.width)->\(g.outChannels) k\(g.kernelHeight) g\(g.groups)")
            check(g, batch: 2, budget: 1 << 20, packed: true, manyBlocks: false, path: ws.path)
        }
    }

    func testWorkspaceReportsBytesAndRespectsBudget() throws {
        let g = try geometry(64, 16, 16, 64, kernel: (3, 3), padding: .same)
        let ws = ConvolutionWorkspace()
        ws.prepare(for: g, batch: 8)
        XCTAssertLessThanOrEqual(ws.blockPixels * g.panelRows * 4, convolutionPanelBudgetBytes)
        XCTAssertGreaterThanOrEqual(ws.bytes, ws.blockPixels * g.panelRows * 4)
        let before = ws.bytes
        ws.prepare(for: g, batch: 8)
        XCTAssertEqual(ws.bytes, before)
    }

    func testInvalidGeometryNamesLayerAndValue() {
        func message(_ body: () throws -> Conv2DGeometry) -> String {
            do { _ = try body(); return "no error" } catch { return "\(error)" }
        }
        let m1 = message { try Conv2DGeometry(layer: "features.3", inChannels: 6, height: 8, width: 8, outChannels: 4,
                                             kernelHeight: 3, kernelWidth: 3, groups: 4) }
        XCTAssertTrue(m1.contains("features.3") && m1.contains("groups = 4"), m1)
        let m2 = message { try Conv2DGeometry(layer: "c1", inChannels: 1, height: 4, width: 4, outChannels: 1,
                                             kernelHeight: 3, kernelWidth: 3, dilationHeight: 2, dilationWidth: 2) }
        XCTAssertTrue(m2.contains("c1") && m2.contains("dilated 5x5") && m2.contains("4x4"), m2)
        let m3 = message { try Conv2DGeometry(layer: "c2", inChannels: 1, height: 3, width: 3, outChannels: 1,
                                             kernelHeight: 1, kernelWidth: 1,
                                             padding: .explicit(top: 3, bottom: 0, left: 0, right: 0), paddingMode: .reflect) }
        XCTAssertTrue(m3.contains("c2") && m3.contains("reflect") && m3.contains("(3, 0, 0, 0)"), m3)
        let m4 = message { try Conv2DGeometry(layer: "c3", inChannels: 1, height: 3, width: 3, outChannels: 1,
                                             kernelHeight: 0, kernelWidth: 3) }
        XCTAssertTrue(m4.contains("c3") && m4.contains("kernel_size = 0x3"), m4)
        let m5 = message { try Conv2DGeometry(layer: "c4", inChannels: 1, height: 3, width: 3, outChannels: 1,
                                             kernelHeight: 1, kernelWidth: 1,
                                             padding: .explicit(top: 0, bottom: 0, left: 4, right: 0), paddingMode: .circular) }
        XCTAssertTrue(m5.contains("c4") && m5.contains("circular"), m5)
        let m6 = message { try Conv2DGeometry(layer: "c5", inChannels: 2, height: 3, width: 3, outChannels: 2,
                                             kernelHeight: 1, kernelWidth: 1, strideHeight: 0) }
        XCTAssertTrue(m6.contains("c5") && m6.contains("stride = 0x1"), m6)
        let m7 = message { try Conv2DGeometry(layer: "c6", inChannels: 2, height: 3, width: 3, outChannels: 2,
                                             kernelHeight: 1, kernelWidth: 1, padding: .explicit(top: -1, bottom: 0, left: 0, right: 0)) }
        XCTAssertTrue(m7.contains("c6") && m7.contains("padding = (-1, 0, 0, 0)"), m7)
    }
}
