import XCTest
import CnnCore
#if canImport(Glibc)
import Glibc
#endif

/// Which path each convolution pass takes: the reference layers pinned to their paths, and
/// every path case reached by some geometry and checked there against direct loops.
final class ConvolutionPathTests: XCTestCase {
    /// A square-kernel, symmetric-padding geometry as `bench conv` builds its shapes.
    func geometry(_ c: Int, _ h: Int, _ k: Int, kernel: Int, stride: Int = 1, padding: Int = 0,
                  mode: PaddingMode = .zeros) throws -> Conv2DGeometry {
        try Conv2DGeometry(inChannels: c, height: h, width: h, outChannels: k, kernelHeight: kernel,
                           kernelWidth: kernel, strideHeight: stride, strideWidth: stride,
                           padding: .explicit(top: padding, bottom: padding, left: padding, right: padding),
                           paddingMode: mode)
    }

    /// The path a workspace chooses for `g` at `batch`.
    func path(_ g: Conv2DGeometry, batch: Int = 64, packed: Bool = true, implicitB: Bool? = nil) -> String {
        let ws = ConvolutionWorkspace(allowsPackedIm2col: packed, implicitB: implicitB)
        ws.prepare(for: g, batch: batch)
        XCTAssertEqual(ws.path, ConvolutionPath(g, blockPixels: ws.blockPixels, allowsPackedIm2col: packed,
                                                implicitB: implicitB))
        return ws.path.description
    }

    /// Every distinct conv shape of the four reference models (`bench conv`'s list), batch 64:
    /// forward / backward-data / backward-weights.
    func testReferenceLayersTakeTheirPaths() throws {
        let table: [(String, Conv2DGeometry, String)] = [
            ("lenet5/0", try geometry(1, 28, 6, kernel: 5, padding: 2), "implicitB/flip:implicitB/packedIm2col"),
            ("lenet5/3", try geometry(6, 14, 16, kernel: 5), "packedIm2col/stride1RowGather/packedIm2col"),
            ("fashion-cnn/0", try geometry(1, 28, 25, kernel: 3, padding: 1), "packedIm2col/stride1RowGather/packedIm2col"),
            ("fashion-cnn/4", try geometry(25, 14, 50, kernel: 3, padding: 1), "packedIm2col/flip:implicitB/packedIm2col"),
            ("fashion-cnn/9", try geometry(50, 7, 75, kernel: 3, padding: 1), "packedIm2col/flip:packedIm2col/packedIm2col"),
            ("minivgg/0", try geometry(3, 32, 32, kernel: 3, padding: 1), "packedIm2col/flip:implicitB/packedIm2col"),
            ("minivgg/3", try geometry(32, 32, 32, kernel: 3, padding: 1), "packedIm2col/flip:packedIm2col/packedIm2col"),
            ("minivgg/8", try geometry(32, 16, 64, kernel: 3, padding: 1), "packedIm2col/flip:packedIm2col/packedIm2col"),
            ("minivgg/11", try geometry(64, 16, 64, kernel: 3, padding: 1), "packedIm2col/flip:packedIm2col/packedIm2col"),
            ("resnet20/0", try geometry(3, 32, 16, kernel: 3, padding: 1), "packedIm2col/flip:implicitB/packedIm2col"),
            ("resnet20/3.c1", try geometry(16, 32, 16, kernel: 3, padding: 1), "packedIm2col/flip:packedIm2col/packedIm2col"),
            ("resnet20/6.c1", try geometry(16, 32, 32, kernel: 3, stride: 2, padding: 1),
             "packedIm2col/stride2Kernel3Gather/packedIm2col"),
            ("resnet20/6.sc.0", try geometry(16, 32, 32, kernel: 1, stride: 2),
             "subsampledPointwise/stridedPointwiseTiles/gatheredPointwise"),
            ("resnet20/6.c2", try geometry(32, 16, 32, kernel: 3, padding: 1), "packedIm2col/flip:packedIm2col/packedIm2col"),
            ("resnet20/9.c1", try geometry(32, 16, 64, kernel: 3, stride: 2, padding: 1),
             "packedIm2col/stride2Kernel3Gather/packedIm2col"),
            ("resnet20/9.sc.0", try geometry(32, 16, 64, kernel: 1, stride: 2),
             "subsampledPointwise/stridedPointwiseTiles/gatheredPointwise"),
            ("resnet20/9.c2", try geometry(64, 8, 64, kernel: 3, padding: 1), "packedIm2col/flip:packedIm2col/packedIm2col"),
        ]
        for (name, g, expected) in table {
            XCTAssertEqual(path(g), expected, name)
        }
    }

    /// `bench conv --panel-only` and `--implicit-b on/off` choose through the same rules.
    func testOptionsChangeThePath() throws {
        let lenet0 = try geometry(1, 28, 6, kernel: 5, padding: 2)
        XCTAssertEqual(path(lenet0, packed: false), "panelImageSegments/stride1RowGather/panelImageSegments")
        XCTAssertEqual(path(lenet0, implicitB: false), "packedIm2col/stride1RowGather/packedIm2col")
        let vgg3 = try geometry(32, 32, 32, kernel: 3, padding: 1)
        XCTAssertEqual(path(vgg3, implicitB: true), "implicitB/flip:implicitB/packedIm2col")
        let shortcut = try geometry(16, 32, 32, kernel: 1, stride: 2)
        XCTAssertEqual(path(shortcut, implicitB: true), "subsampledPointwise/stridedPointwiseTiles/gatheredPointwise")
        XCTAssertEqual(path(shortcut, packed: false), "panelImageSegments/stridedPointwiseTiles/panelImageSegments")
    }
}

extension ConvolutionBlockedTests {
    /// Every case of every pass is chosen for some geometry, and computes the right answer
    /// there against the direct loops (`check`).
    func testEveryPathIsReachedAndCorrect() throws {
        func square(_ c: Int, _ h: Int, _ k: Int, kernel: Int, stride: Int = 1, padding: Int = 0,
                    mode: PaddingMode = .zeros) throws -> Conv2DGeometry {
            try geometry(c, h, h, k, kernel: (kernel, kernel), stride: (stride, stride),
                         padding: .explicit(top: padding, bottom: padding, left: padding, right: padding), mode: mode)
        }
        let cases: [(Conv2DGeometry, Int, Bool, ConvolutionPath)] = [
            (try square(16, 16, 32, kernel: 1), 3, true,
             ConvolutionPath(forward: .pointwise, backwardData: .pointwise, backwardWeights: .pointwise)),
            (try square(16, 7, 24, kernel: 1), 3, true,
             ConvolutionPath(forward: .packedIm2col, backwardData: .flippedForward(.packedIm2col),
                             backwardWeights: .pointwise)),
            (try square(16, 32, 16, kernel: 3, padding: 1, mode: .reflect), 2, true,
             ConvolutionPath(forward: .panel, backwardData: .col2im, backwardWeights: .panel)),
            (try square(3, 8, 8, kernel: 3, padding: 1, mode: .reflect), 3, true,
             ConvolutionPath(forward: .panelImageSegments, backwardData: .col2imImageSegments,
                             backwardWeights: .panelImageSegments)),
            (try square(8, 8, 400, kernel: 1, stride: 2), 2, true,
             ConvolutionPath(forward: .subsampledPointwise, backwardData: .stridedPointwise,
                             backwardWeights: .gatheredPointwise)),
            (try square(16, 12, 8, kernel: 1, stride: 2), 2, true,
             ConvolutionPath(forward: .subsampledPointwise, backwardData: .stridedPointwiseTiles,
                             backwardWeights: .gatheredPointwise)),
            (try square(6, 12, 8, kernel: 3, stride: 2, padding: 1), 2, true,
             ConvolutionPath(forward: .packedIm2col, backwardData: .stride2Kernel3Gather, backwardWeights: .packedIm2col)),
            (try square(6, 14, 16, kernel: 5), 2, true,
             ConvolutionPath(forward: .packedIm2col, backwardData: .stride1RowGather, backwardWeights: .packedIm2col)),
            (try square(1, 28, 6, kernel: 5, padding: 2), 2, true,
             ConvolutionPath(forward: .implicitB, backwardData: .flippedForward(.implicitB), backwardWeights: .packedIm2col)),
            (try square(24, 8, 16, kernel: 3, padding: 1), 2, true,
             ConvolutionPath(forward: .packedIm2col, backwardData: .flippedForward(.packedIm2col),
                             backwardWeights: .packedIm2col)),
        ]
        var forward = Set<String>(), data = Set<String>(), weights = Set<String>()
        for (g, batch, packed, expected) in cases {
            check(g, batch: batch, budget: convolutionPanelBudgetBytes, packed: packed, manyBlocks: false,
                          path: expected)
            forward.insert(expected.forward.rawValue)
            data.insert(expected.backwardData.name.hasPrefix("flip:") ? "flip" : expected.backwardData.name)
            weights.insert(expected.backwardWeights.rawValue)
        }
        XCTAssertEqual(forward, Set(ConvolutionPath.Forward.allCases.map(\.rawValue)))
        XCTAssertEqual(weights, Set(ConvolutionPath.BackwardWeights.allCases.map(\.rawValue)))
        XCTAssertEqual(data, ["flip", "pointwise", "stridedPointwiseTiles", "stridedPointwise", "stride2Kernel3Gather",
                              "stride1RowGather", "col2im", "col2imImageSegments"])
    }
}

extension ConvolutionBlockedTests {
    /// 1×1 stride-1 convolutions on planes under 256 pixels (`pointwiseUsesPackedPlan`): forward
    /// through packed im2col with several images per block, backward-data as the forward of the
    /// transposed weights, both against the direct loops; on 256 pixels and more, the per-image GEMMs.
    func testPointwiseOnSmallPlanesTakesPackedIm2col() throws {
        for (c, h, w, k, batch) in [(32, 7, 7, 40, 5), (24, 11, 11, 8, 3), (8, 3, 5, 20, 9), (16, 1, 1, 16, 4)] {
            let g = try geometry(c, h, w, k, kernel: (1, 1))
            check(g, batch: batch, budget: convolutionPanelBudgetBytes, packed: true, manyBlocks: false,
                  path: ConvolutionPath(forward: .packedIm2col, backwardData: .flippedForward(.packedIm2col),
                                        backwardWeights: .pointwise))
            check(g, batch: batch, budget: convolutionPanelBudgetBytes, packed: false, manyBlocks: false,
                  path: ConvolutionPath(forward: .pointwise, backwardData: .pointwise, backwardWeights: .pointwise))
        }
        // Grouped, and 1 or 3 input channels (no flip: too few rows for a packed M).
        check(try geometry(8, 5, 5, 12, kernel: (1, 1), groups: 2), batch: 3, budget: convolutionPanelBudgetBytes,
              packed: true, manyBlocks: false)
        check(try geometry(3, 6, 6, 16, kernel: (1, 1)), batch: 3, budget: convolutionPanelBudgetBytes, packed: true,
              manyBlocks: false, path: ConvolutionPath(forward: .packedIm2col, backwardData: .pointwise, backwardWeights: .pointwise))
        for large in [try geometry(16, 16, 16, 8, kernel: (1, 1)), try geometry(24, 14, 14, 8, kernel: (1, 1))] {
            let ws = ConvolutionWorkspace()
            ws.prepare(for: large, batch: 2)
            XCTAssertEqual(ws.path, ConvolutionPath(forward: .pointwise, backwardData: .pointwise, backwardWeights: .pointwise))
        }
    }

    /// A batch smaller than the plan's images per block (1×1 on 2×2 planes: 8 images per block,
    /// batch 2) reads only its own images: the input ends right before a page that faults on
    /// any read, and forward and backward-data (a forward of the transposed weights) finish.
    func testPointwiseBlockOfFewerImagesReadsOnlyItsInput() throws {
        let g = try geometry(32, 2, 2, 24, kernel: (1, 1)), batch = 2
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        let inCount = batch * g.inChannels * g.height * g.width, gradCount = batch * g.outChannels * g.outPixels
        let bytes = (max(inCount, gradCount) * 4 + page - 1) / page * page + page
        guard let raw = mmap(nil, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0), raw != MAP_FAILED else {
            throw XCTSkip("mmap failed")
        }
        defer { munmap(raw, bytes) }
        XCTAssertEqual(mprotect(raw + bytes - page, page, PROT_NONE), 0)
        // x (then dY) placed so that its last float ends at the guard page.
        func atGuard(_ count: Int) -> UnsafeMutablePointer<Float> {
            (raw + bytes - page - count * 4).bindMemory(to: Float.self, capacity: count)
        }
        let w = (0..<(g.outChannels * g.inChannels)).map { Float($0 % 7) - 3 }
        let ws = ConvolutionWorkspace()
        ws.prepare(for: g, batch: batch)
        XCTAssertEqual(ws.path.forward, .packedIm2col)
        let x = atGuard(inCount)
        for i in 0..<inCount { x[i] = Float(i % 5) - 2 }
        var y = [Float](repeating: .nan, count: gradCount)
        convolution2DForward(input: x, weight: w, bias: nil, output: &y, batch: batch, geometry: g, workspace: ws)
        // y[n, k, p] = Σ_c w[k, c]·x[n, c, p], by hand.
        for n in 0..<batch { for k in 0..<g.outChannels { for p in 0..<g.outPixels {
            var sum: Float = 0
            for c in 0..<g.inChannels { sum += w[k * g.inChannels + c] * x[(n * g.inChannels + c) * g.outPixels + p] }
            XCTAssertEqual(y[(n * g.outChannels + k) * g.outPixels + p], sum, accuracy: 1e-4)
        } } }
        let dy = atGuard(gradCount)
        for i in 0..<gradCount { dy[i] = Float(i % 3) - 1 }
        var dx = [Float](repeating: .nan, count: inCount)
        convolution2DBackwardData(gradOutput: dy, weight: w, gradInput: &dx, batch: batch, geometry: g, workspace: ws)
        XCTAssertFalse(dx.contains { $0.isNaN })
    }

    /// VGG's 112×112 and 224×224 layers: the 224×224 forward's phase planes are over its limit
    /// (stored panel), the 128×112×112 one's within it; the flipped backward-data's (a padded
    /// copy of dY) within its larger one.
    func testLargePlanesFlipTheirBackwardData() throws {
        for (c, h, k) in [(64, 224, 64), (64, 112, 128), (128, 112, 128)] {
            let g = try geometry(c, h, h, k, kernel: (3, 3), padding: .explicit(top: 1, bottom: 1, left: 1, right: 1))
            let ws = ConvolutionWorkspace()
            ws.prepare(for: g, batch: 16)
            XCTAssertEqual(ws.path.backwardData, .flippedForward(.packedIm2col), "\(c)x\(h)->\(k)")
        }
        let ws = ConvolutionWorkspace()
        ws.prepare(for: try geometry(64, 224, 224, 64, kernel: (3, 3), padding: .explicit(top: 1, bottom: 1, left: 1, right: 1)),
                   batch: 16)
        XCTAssertEqual(ws.path.forward, .panel)
        let vgg112 = ConvolutionWorkspace()
        vgg112.prepare(for: try geometry(128, 112, 112, 128, kernel: (3, 3), padding: .explicit(top: 1, bottom: 1, left: 1, right: 1)),
                       batch: 16)
        XCTAssertEqual(vgg112.path.forward, .packedIm2col)
        // A 3-channel first layer keeps col2im (its flip would be an M = 3 GEMM over a 13 MB plane).
        let first = ConvolutionWorkspace()
        first.prepare(for: try geometry(3, 224, 224, 64, kernel: (3, 3), padding: .explicit(top: 1, bottom: 1, left: 1, right: 1)),
                      batch: 16)
        XCTAssertEqual(first.path.backwardData, .col2im)
    }

    /// 3×3 stride-2 and strided 1×1 backward-data with long reductions (≥ 256 rows from ≥ 64
    /// channels) gather from wider dcol blocks (`wideBackwardDataBlock`): whole images, or whole
    /// output rows of large planes, odd input sizes included; the small models' layers keep theirs.
    func testWideBackwardDataBlocks() throws {
        func square(_ c: Int, _ h: Int, _ k: Int, kernel: Int, stride: Int, padding: Int) throws -> Conv2DGeometry {
            try geometry(c, h, h, k, kernel: (kernel, kernel), stride: (stride, stride),
                         padding: .explicit(top: padding, bottom: padding, left: padding, right: padding))
        }
        let stride2 = ConvolutionPath(forward: .packedIm2col, backwardData: .stride2Kernel3Gather, backwardWeights: .packedIm2col)
        let strided1x1 = ConvolutionPath(forward: .subsampledPointwise, backwardData: .stridedPointwise,
                                         backwardWeights: .gatheredPointwise)
        let cases: [(Conv2DGeometry, Int, ConvolutionPath)] = [
            (try square(64, 8, 40, kernel: 3, stride: 2, padding: 1), 12, stride2),    // 4×4 outputs: whole images
            (try square(64, 15, 40, kernel: 3, stride: 2, padding: 1), 3, stride2),    // 8×8, odd input
            (try square(64, 39, 40, kernel: 3, stride: 2, padding: 1), 2, stride2),    // 20×20: rows of one image
            (try square(256, 6, 392, kernel: 1, stride: 2, padding: 0), 5, strided1x1),  // Kg > KC: no tile scatter
            (try square(256, 7, 392, kernel: 1, stride: 2, padding: 0), 3, strided1x1),
        ]
        for (g, batch, expected) in cases {
            let ws = ConvolutionWorkspace()
            ws.prepare(for: g, batch: batch)
            // At least 256 columns, or the whole batch.
            XCTAssertGreaterThanOrEqual(ws.backwardDataBlockPixels, min(256, batch * g.outPixels), "\(g.height) C\(g.inChannels)")
            check(g, batch: batch, budget: convolutionPanelBudgetBytes, packed: true, manyBlocks: false, path: expected)
        }
        // The reference models' stride-2 layers keep the default blocks.
        for g in [try square(16, 32, 32, kernel: 3, stride: 2, padding: 1), try square(32, 16, 64, kernel: 3, stride: 2, padding: 1)] {
            let ws = ConvolutionWorkspace()
            ws.prepare(for: g, batch: 64)
            XCTAssertEqual(ws.backwardDataBlockPixels, ws.blockPixels)
        }
    }
}

extension ConvolutionBlockedTests {
    /// Strided 1×1 backward-data scatters GEMM tiles for reductions up to `sgemmTilesDepthLimit`
    /// on planes of ≥ 128 output pixels (one K step deeper than KC), keeps dcol past it and on
    /// smaller planes; 3×3 stride-1 layers with ≤ 16 input channels on planes under 256 output
    /// pixels gather dx rows instead of flipping. Each against the direct loops.
    func testDeepTileScatterAndNarrowSmallPlanes() throws {
        func square(_ c: Int, _ h: Int, _ k: Int, kernel: Int, stride: Int = 1, padding: Int = 0) throws -> Conv2DGeometry {
            try geometry(c, h, h, k, kernel: (kernel, kernel), stride: (stride, stride),
                         padding: .explicit(top: padding, bottom: padding, left: padding, right: padding))
        }
        let tiles = ConvolutionPath(forward: .subsampledPointwise, backwardData: .stridedPointwiseTiles, backwardWeights: .gatheredPointwise)
        let dcol = ConvolutionPath(forward: .subsampledPointwise, backwardData: .stridedPointwise, backwardWeights: .gatheredPointwise)
        let gather = ConvolutionPath(forward: .packedIm2col, backwardData: .stride1RowGather, backwardWeights: .packedIm2col)
        let cases: [(Conv2DGeometry, Int, ConvolutionPath)] = [
            (try square(24, 32, 400, kernel: 1, stride: 2), 2, tiles),     // 16×16 outputs, K = 400 > KC in one step
            (try square(20, 30, 1030, kernel: 1, stride: 2), 2, dcol),     // K past the tiles' depth
            (try square(24, 22, 400, kernel: 1, stride: 2), 2, dcol),      // 11×11 outputs: blocks of images
            (try square(16, 14, 48, kernel: 3, padding: 1), 3, gather),    // GoogLeNet 4a.branch3.1's shape
            (try square(12, 9, 20, kernel: 3, padding: 1), 2, gather),
            (try square(16, 16, 48, kernel: 3, padding: 1), 2,            // 256 pixels: the flip
             ConvolutionPath(forward: .packedIm2col, backwardData: .flippedForward(.packedIm2col), backwardWeights: .packedIm2col)),
            (try square(24, 14, 48, kernel: 3, padding: 1), 2,            // 24 channels: the flip
             ConvolutionPath(forward: .packedIm2col, backwardData: .flippedForward(.implicitB), backwardWeights: .packedIm2col)),
        ]
        for (g, batch, expected) in cases {
            check(g, batch: batch, budget: convolutionPanelBudgetBytes, packed: true, manyBlocks: false, path: expected)
        }
    }
}
