import XCTest
import CnnCore

/// Runs the blocked forward kernel on one (N, C, H, W) input.
func runConvolution(_ x: [Float], batch: Int = 1, weight: [Float], bias: [Float]? = nil,
                    geometry g: Conv2DGeometry, budget: Int = convolutionPanelBudgetBytes) -> [Float] {
    let ws = ConvolutionWorkspace(panelBudgetBytes: budget)
    var y = [Float](repeating: .nan, count: batch * g.outChannels * g.outPixels)
    x.withUnsafeBufferPointer { xp in
        weight.withUnsafeBufferPointer { wp in
            y.withUnsafeMutableBufferPointer { yp in
                if let bias {
                    bias.withUnsafeBufferPointer { bp in
                        convolution2DForward(input: xp.baseAddress!, weight: wp.baseAddress!, bias: bp.baseAddress!,
                                             output: yp.baseAddress!, batch: batch, geometry: g, workspace: ws)
                    }
                } else {
                    convolution2DForward(input: xp.baseAddress!, weight: wp.baseAddress!, bias: nil,
                                         output: yp.baseAddress!, batch: batch, geometry: g, workspace: ws)
                }
            }
        }
    }
    return y
}

/// Known answers from the seed lecture notes; every expected value is worked by hand below.
final class ConvolutionKnownAnswerTests: XCTestCase {

    // Seed 000: 7×7 input, 3×3 kernel of ones, stride 2, zero padding 1 → 4×4
    // (W_o = floor((7 + 2 − 3) / 2) + 1 = 4). Output (i, j) sums the padded rows
    // 2i…2i+2 and columns 2j…2j+2 (padded index 0 is the zero border):
    //  (0,0) 0+0+0 + 0+1−2 + 0+1+3      =  3    (0,1) 0+0+0 −2−1+5 + 3−1+4   =  8
    //  (0,2) 0+0+0 + 5+3+2 + 4+3+3      = 20    (0,3) 0+0+0 + 2+1+0 + 3+1+0  =  7
    //  (1,0) 0+1+3 + 0+1−2 + 0+2−2      =  3    (1,1) 3−1+4 −2+1+6 −2+2+5    = 16
    //  (1,2) 4+3+3 + 6+3+3 + 5+2+1      = 30    (1,3) 3+1+0 + 3+2+0 + 1+0+0  = 10
    //  (2,0) 0+2−2 + 0+0+3 + 0+1+2      =  6    (2,1) −2+2+5 + 3−2+5 + 2−3+1 = 11
    //  (2,2) 5+2+1 + 5+4+1 + 1+1+2      = 22    (2,3) 1+0+0 + 1+2+0 + 2−1+0  =  5
    //  (3,0) 0+1+2 + 0+1−2 + 0+0+0      =  2    (3,1) 2−3+1 −2−1+1 + 0       = −2
    //  (3,2) 1+1+2 + 1+2+1 + 0          =  8    (3,3) 2−1+0 + 1+1+0 + 0      =  3
    // None of the three slide versions is fully right:
    //  - slide 1 ("feature map 3 8 19 7 …") differs only at (0,2): 19, true 20;
    //  - slide 2 ("3 8 19 7 / 3 15 30 10 / … / 2 −2 9 3") differs at (0,2) 19 vs 20,
    //    (1,1) 15 vs 16 and (3,2) 9 vs 8;
    //  - slide 3 ("3 8 20 7 / 3 16 30 10 / 6 13 22 7 / 2 −2 7 3") differs at
    //    (2,1) 13 vs 11, (2,3) 7 vs 5 and (3,2) 7 vs 8.
    func testSevenBySevenOnesStrideTwoPadOne() throws {
        let x: [Float] = [1, -2, -1, 5, 3, 2, 1,
                          1, 3, -1, 4, 3, 3, 1,
                          1, -2, 1, 6, 3, 3, 2,
                          2, -2, 2, 5, 2, 1, 0,
                          0, 3, -2, 5, 4, 1, 2,
                          1, 2, -3, 1, 1, 2, -1,
                          1, -2, -1, 1, 2, 1, 1]
        let g = try Conv2DGeometry(inChannels: 1, height: 7, width: 7, outChannels: 1, kernelHeight: 3,
                                   kernelWidth: 3, strideHeight: 2, strideWidth: 2,
                                   padding: .explicit(top: 1, bottom: 1, left: 1, right: 1))
        XCTAssertEqual(g.outHeight, 4); XCTAssertEqual(g.outWidth, 4)
        let y = runConvolution(x, weight: [Float](repeating: 1, count: 9), geometry: g)
        let truth: [Float] = [3, 8, 20, 7, 3, 16, 30, 10, 6, 11, 22, 5, 2, -2, 8, 3]
        XCTAssertEqual(y, truth)
        let slides: [[Float]] = [[3, 8, 19, 7, 3, 16, 30, 10, 6, 11, 22, 5, 2, -2, 8, 3],
                                 [3, 8, 19, 7, 3, 15, 30, 10, 6, 11, 22, 5, 2, -2, 9, 3],
                                 [3, 8, 20, 7, 3, 16, 30, 10, 6, 13, 22, 7, 2, -2, 7, 3]]
        let wrongAt = slides.map { s in (0..<16).filter { s[$0] != y[$0] }.map { ($0 / 4, $0 % 4) } }
        XCTAssertEqual(wrongAt[0].map { "\($0)" }, ["(0, 2)"])
        XCTAssertEqual(wrongAt[1].map { "\($0)" }, ["(0, 2)", "(1, 1)", "(3, 2)"])
        XCTAssertEqual(wrongAt[2].map { "\($0)" }, ["(2, 1)", "(2, 3)", "(3, 2)"])
    }

    // Seed 003: 6×6 binary image, two 3×3 filters, stride 1, no padding → two 4×4 maps.
    // Filter 1 (+1 on the diagonal, −1 elsewhere): output = 2·(diagonal hits) − (ones in window).
    //  (0,0) window diag 1,1,1, ones 3 → 2·3−3 = 3;  (0,1) diag 0,0,1, ones 3 → 2−3 = −1;
    //  (0,2) diag 0,0,0, ones 3 → −3;               (0,3) diag 0,1,0, ones 3 → −1;
    //  (1,0) 0,0,0 of 3 → −3; (1,1) 1,1,0 of 3 → 1; (1,2) 0,1,1 of 4 → 0; (1,3) 0,0,0 of 3 → −3;
    //  (2,0) 0,0,0 of 3 → −3; (2,1) 0,0,0 of 3 → −3; (2,2) 1,0,1 of 4 → 0; (2,3) 1,1,0 of 3 → 1;
    //  (3,0) 1,1,1 of 3 → 3;  (3,1) 0,0,0 of 2 → −2; (3,2) 0,0,1 of 4 → −2; (3,3) 0,1,0 of 3 → −1.
    // Filter 2 (+1 on the middle column): output = 2·(middle-column ones) − (ones in window).
    //  (0,0) mid 0,1,0 of 3 → −1; (0,1) 0,0,1 of 3 → −1; (0,2) 0,0,1 of 3 → −1; (0,3) 0,1,0 of 3 → −1;
    //  (1,0) 1,0,0 of 3 → −1;     (1,1) 0,1,0 of 3 → −1; (1,2) 0,1,0 of 4 → −2; (1,3) 1,0,1 of 3 → 1;
    //  (2,0) 0,0,1 of 3 → −1;     (2,1) 1,0,0 of 3 → −1; (2,2) 1,0,0 of 4 → −2; (2,3) 0,1,1 of 3 → 1;
    //  (3,0) 0,1,0 of 3 → −1;     (3,1) 0,0,1 of 2 → 0;  (3,2) 0,0,0 of 4 → −4; (3,3) 1,1,1 of 3 → 3
    // (the seed's second map, [[−1,−1,−1,−1],[−1,−1,−2,1],[−1,−1,−2,1],[−1,0,−4,3]], agrees).
    func testSixBySixImageTwoFilters() throws {
        let image: [Float] = [1, 0, 0, 0, 0, 1,
                              0, 1, 0, 0, 1, 0,
                              0, 0, 1, 1, 0, 0,
                              1, 0, 0, 0, 1, 0,
                              0, 1, 0, 0, 1, 0,
                              0, 0, 1, 0, 1, 0]
        let filters: [Float] = [1, -1, -1, -1, 1, -1, -1, -1, 1,
                                -1, 1, -1, -1, 1, -1, -1, 1, -1]
        let g = try Conv2DGeometry(inChannels: 1, height: 6, width: 6, outChannels: 2,
                                   kernelHeight: 3, kernelWidth: 3)
        let y = runConvolution(image, weight: filters, geometry: g)
        XCTAssertEqual(Array(y[0..<16]), [3, -1, -3, -1, -3, 1, 0, -3, -3, -3, 0, 1, 3, -2, -2, -1])
        XCTAssertEqual(Array(y[16..<32]), [-1, -1, -1, -1, -1, -1, -2, 1, -1, -1, -2, 1, -1, 0, -4, 3])
    }

    // Seed 003 (d2l corr2d): X = [[0,1,2],[3,4,5],[6,7,8]], K = [[0,1],[2,3]]:
    //  0·0+1·1+3·2+4·3 = 19, 1·0+2·1+4·2+5·3 = 25, 3·0+4·1+6·2+7·3 = 37, 4·0+5·1+7·2+8·3 = 43.
    func testCrossCorrelationNineteen() throws {
        let g = try Conv2DGeometry(inChannels: 1, height: 3, width: 3, outChannels: 1, kernelHeight: 2, kernelWidth: 2)
        XCTAssertEqual(runConvolution((0..<9).map(Float.init), weight: [0, 1, 2, 3], geometry: g), [19, 25, 37, 43])
        // With a bias of 1 every entry moves by 1.
        XCTAssertEqual(runConvolution((0..<9).map(Float.init), weight: [0, 1, 2, 3], bias: [1], geometry: g),
                       [20, 26, 38, 44])
    }

    // Seed 003: 6×8 image with ones in columns 0,1 and 6,7; K = [1, −1] gives
    // x[j] − x[j+1]: 1−1 = 0, 1−0 = 1, 0, 0, 0, 0−1 = −1, 1−1 = 0 on every row (6×7).
    func testEdgeDetection() throws {
        let row: [Float] = [1, 1, 0, 0, 0, 0, 1, 1]
        let x = Array([[Float]](repeating: row, count: 6).joined())
        let g = try Conv2DGeometry(inChannels: 1, height: 6, width: 8, outChannels: 1, kernelHeight: 1, kernelWidth: 2)
        let expected = Array([[Float]](repeating: [0, 1, 0, 0, 0, -1, 0], count: 6).joined())
        XCTAssertEqual(runConvolution(x, weight: [1, -1], geometry: g), expected)
    }

    // Seed 001, 1-D: x = [1, 0, 2, 2, 3, 1], w = [3, 2, 2] (the worked sums use
    // [3, 2, 2]; one figure shows [3, 2, 1], which contradicts its own sums).
    //  valid:     3·1+2·0+2·2 = 7, 3·0+2·2+2·2 = 8, 3·2+2·2+2·3 = 16, 3·2+2·3+2·1 = 14
    //  same:      total pad k−1 = 2, 1 before / 1 after: 3·0+2·1+2·0 = 2, then 7, 8, 16, 14,
    //             3·3+2·1+2·0 = 11 (6 outputs)
    //  p = 1 at the end ("manual padding"): 7, 8, 16, 14, 11
    //  stride 2, p = 1 at the end: windows at 0, 2, 4: 7, 3·2+2·2+2·3 = 16, 3·3+2·1+2·0 = 11;
    //             o = floor((6+1−3)/2)+1 = 3.
    func testOneDimensionalSeedExamples() throws {
        let x: [Float] = [1, 0, 2, 2, 3, 1], w: [Float] = [3, 2, 2]
        func conv1d(_ padding: ConvPadding, stride: Int = 1) throws -> [Float] {
            let g = try Conv2DGeometry(inChannels: 1, height: 1, width: 6, outChannels: 1, kernelHeight: 1,
                                       kernelWidth: 3, strideWidth: stride, padding: padding)
            return runConvolution(x, weight: w, geometry: g)
        }
        XCTAssertEqual(try conv1d(.valid), [7, 8, 16, 14])
        XCTAssertEqual(try conv1d(.same), [2, 7, 8, 16, 14, 11])
        XCTAssertEqual(try conv1d(.explicit(top: 0, bottom: 0, left: 0, right: 1)), [7, 8, 16, 14, 11])
        XCTAssertEqual(try conv1d(.explicit(top: 0, bottom: 0, left: 0, right: 1), stride: 2), [7, 16, 11])
    }

    // Seed 001 quiz: n = 13, s = 5, k = 6. ceil(13/5) = 3 outputs;
    // p = max(5·(3−1) + 6 − 13, 0) = 3, placed 1 before and 2 after (TensorFlow).
    // With x = 1…13 and w = ones(6) the padded input is [0, 1, …, 13, 0, 0]; windows
    // start at 0, 5, 10: 0+1+2+3+4+5 = 15, 5+…+10 = 45, 10+11+12+13+0+0 = 46.
    // "valid" drops 12 and 13: o = floor((13−6)/5)+1 = 2, windows 1…6 = 21 and 6…11 = 51.
    func testSamePaddingQuiz() throws {
        let p = sameConvolutionPadding(inputSize: 13, kernelSize: 6, stride: 5)
        XCTAssertEqual(p.before, 1); XCTAssertEqual(p.after, 2)
        let x = (1...13).map(Float.init), w = [Float](repeating: 1, count: 6)
        let same = try Conv2DGeometry(inChannels: 1, height: 1, width: 13, outChannels: 1, kernelHeight: 1,
                                      kernelWidth: 6, strideWidth: 5, padding: .same)
        XCTAssertEqual(same.outWidth, 3)
        XCTAssertEqual(same.padLeft, 1); XCTAssertEqual(same.padRight, 2)
        XCTAssertEqual(runConvolution(x, weight: w, geometry: same), [15, 45, 46])
        let valid = try Conv2DGeometry(inChannels: 1, height: 1, width: 13, outChannels: 1, kernelHeight: 1,
                                       kernelWidth: 6, strideWidth: 5, padding: .valid)
        XCTAssertEqual(runConvolution(x, weight: w, geometry: valid), [21, 51])
    }

    // TensorFlow 'same' elsewhere: stride 1 → total k_eff − 1 with the odd one after;
    // n=7,s=2,k=3: max(3·2+3−7, 0) = 2 → (1,1); n=8,s=2,k=3: max(3·2+3−8, 0) = 1 → (0,1);
    // dilation 2 with k=3 → k_eff 5, stride 1 → 4 → (2,2); n=4,s=4,k=2 → max(0+2−4,0) = 0.
    func testSamePaddingRule() {
        func p(_ n: Int, _ k: Int, _ s: Int, _ d: Int = 1) -> [Int] {
            let r = sameConvolutionPadding(inputSize: n, kernelSize: k, stride: s, dilation: d); return [r.before, r.after]
        }
        XCTAssertEqual(p(10, 3, 1), [1, 1]); XCTAssertEqual(p(10, 4, 1), [1, 2])
        XCTAssertEqual(p(7, 3, 2), [1, 1]); XCTAssertEqual(p(8, 3, 2), [0, 1])
        XCTAssertEqual(p(9, 3, 1, 2), [2, 2]); XCTAssertEqual(p(4, 2, 4), [0, 0])
    }

    // Seed 001 img2col: two 4×6 feature maps, 2×2 kernel, stride 2 → o_h·o_w = 2·3 columns,
    // c_i·k_h·k_w = 8 rows. Column (oy, ox) holds map 0's window rows 2oy…2oy+1, columns
    // 2ox…2ox+1 read row by row, then map 1's; e.g. column 0 = 1,2,2,2 | 0,2,1,0 and
    // column 5 = 0,1,1,3 | 1,1,1,2 — the slide's 8×6 matrix below.
    func testIm2colMatchesSeedMatrix() throws {
        let maps: [Float] = [1, 2, 1, 2, 3, 4,
                             2, 2, 3, 1, 2, 0,
                             1, 1, 2, 1, 0, 1,
                             2, 1, 2, 1, 1, 3,
                             0, 2, 3, 2, 0, 1,
                             1, 0, 1, 1, 2, 0,
                             2, 0, 1, 1, 1, 1,
                             1, 1, 2, 1, 1, 2]
        let expected: [[Float]] = [[1, 1, 3, 1, 2, 0],
                                   [2, 2, 4, 1, 1, 1],
                                   [2, 3, 2, 2, 2, 1],
                                   [2, 1, 0, 1, 1, 3],
                                   [0, 3, 0, 2, 1, 1],
                                   [2, 2, 1, 0, 1, 1],
                                   [1, 1, 2, 1, 2, 1],
                                   [0, 1, 0, 1, 1, 2]]
        let g = try Conv2DGeometry(inChannels: 2, height: 4, width: 6, outChannels: 1, kernelHeight: 2,
                                   kernelWidth: 2, strideHeight: 2, strideWidth: 2)
        let ws = ConvolutionWorkspace()
        ws.prepare(for: g, batch: 1)
        // The whole panel, then a block of 4 columns starting mid-row (columns 1…4).
        for (start, count) in [(0, 6), (1, 4)] {
            var panel = [Float](repeating: .nan, count: 8 * count)
            maps.withUnsafeBufferPointer { x in
                panel.withUnsafeMutableBufferPointer { p in
                    im2col(input: x.baseAddress!, geometry: g, group: 0, pixelStart: start, pixelCount: count,
                           panel: p.baseAddress!, workspace: ws)
                }
            }
            for r in 0..<8 {
                XCTAssertEqual(Array(panel[r * count ..< (r + 1) * count]), Array(expected[r][start ..< start + count]),
                               "row \(r), block at \(start)")
            }
        }
    }

    // Seed 000, torch padding modules on 0…8 as a 3×3 plane. torch's tuple order is
    // (left, right, top, bottom). Reflection mirrors without the edge (index −1 → 1,
    // −2 → 2, 3 → 1, 4 → 0); replication clamps; circular wraps (−1 → 2, −2 → 1, 3 → 0).
    static let plane: [Float] = (0..<9).map(Float.init)
    static let circular2: [Float] = [4, 5, 3, 4, 5, 3, 4, 7, 8, 6, 7, 8, 6, 7, 1, 2, 0, 1, 2, 0, 1,
                                     4, 5, 3, 4, 5, 3, 4, 7, 8, 6, 7, 8, 6, 7, 1, 2, 0, 1, 2, 0, 1,
                                     4, 5, 3, 4, 5, 3, 4]
    static let circular1120: [Float] = [5, 3, 4, 5, 3, 8, 6, 7, 8, 6, 2, 0, 1, 2, 0, 5, 3, 4, 5, 3, 8, 6, 7, 8, 6]
    static let reflect2: [Float] = [8, 7, 6, 7, 8, 7, 6, 5, 4, 3, 4, 5, 4, 3, 2, 1, 0, 1, 2, 1, 0,
                                    5, 4, 3, 4, 5, 4, 3, 8, 7, 6, 7, 8, 7, 6, 5, 4, 3, 4, 5, 4, 3,
                                    2, 1, 0, 1, 2, 1, 0]
    static let reflect1120: [Float] = [7, 6, 7, 8, 7, 4, 3, 4, 5, 4, 1, 0, 1, 2, 1, 4, 3, 4, 5, 4, 7, 6, 7, 8, 7]
    static let replicate2: [Float] = [0, 0, 0, 1, 2, 2, 2, 0, 0, 0, 1, 2, 2, 2, 0, 0, 0, 1, 2, 2, 2,
                                      3, 3, 3, 4, 5, 5, 5, 6, 6, 6, 7, 8, 8, 8, 6, 6, 6, 7, 8, 8, 8,
                                      6, 6, 6, 7, 8, 8, 8]
    static let replicate1120: [Float] = [0, 0, 1, 2, 2, 0, 0, 1, 2, 2, 0, 0, 1, 2, 2, 3, 3, 4, 5, 5, 6, 6, 7, 8, 8]

    /// (mode, (top, bottom, left, right), expected) for the seed's cases.
    static var paddingCases: [(PaddingMode, (Int, Int, Int, Int), [Float])] {
        [(.circular, (2, 2, 2, 2), circular2), (.circular, (2, 0, 1, 1), circular1120),
         (.reflect, (2, 2, 2, 2), reflect2), (.reflect, (2, 0, 1, 1), reflect1120),
         (.replicate, (2, 2, 2, 2), replicate2), (.replicate, (2, 0, 1, 1), replicate1120)]
    }

    func testPadPlaneMatchesTorch() {
        for (mode, p, expected) in Self.paddingCases {
            let outCount = (3 + p.0 + p.1) * (3 + p.2 + p.3)
            var out = [Float](repeating: .nan, count: outCount)
            Self.plane.withUnsafeBufferPointer { src in
                out.withUnsafeMutableBufferPointer { dst in
                    padPlane(src.baseAddress!, height: 3, width: 3, top: p.0, bottom: p.1, left: p.2, right: p.3,
                             mode: mode, into: dst.baseAddress!)
                }
            }
            XCTAssertEqual(out, expected, "\(mode) \(p)")
        }
        // ConstantPad2d((3, 0, 2, 1), 3.5) on [[1.6585, 0.4320], [−0.8701, −0.4649]]: 5×5 with
        // the 2×2 block at rows 2…3, columns 3…4.
        let small: [Float] = [1.6585, 0.4320, -0.8701, -0.4649]
        var out = [Float](repeating: .nan, count: 25)
        small.withUnsafeBufferPointer { src in
            out.withUnsafeMutableBufferPointer { dst in
                padPlane(src.baseAddress!, height: 2, width: 2, top: 2, bottom: 1, left: 3, right: 0,
                         mode: .zeros, value: 3.5, into: dst.baseAddress!)
            }
        }
        var expected = [Float](repeating: 3.5, count: 25)
        expected[13] = 1.6585; expected[14] = 0.4320; expected[18] = -0.8701; expected[19] = -0.4649
        XCTAssertEqual(out, expected)
    }

    /// The same cases through im2col's index mapping: a 1×1 identity kernel over the
    /// padded plane reproduces the padded plane.
    func testIdentityConvolutionReproducesPadding() throws {
        for (mode, p, expected) in Self.paddingCases {
            let g = try Conv2DGeometry(inChannels: 1, height: 3, width: 3, outChannels: 1, kernelHeight: 1,
                                       kernelWidth: 1, padding: .explicit(top: p.0, bottom: p.1, left: p.2, right: p.3),
                                       paddingMode: mode)
            XCTAssertEqual(runConvolution(Self.plane, weight: [1], geometry: g), expected, "\(mode) \(p)")
        }
        // Zero padding (1, 1, 1, 1) puts the plane inside a zero frame.
        let g = try Conv2DGeometry(inChannels: 1, height: 3, width: 3, outChannels: 1, kernelHeight: 1,
                                   kernelWidth: 1, padding: .explicit(top: 1, bottom: 1, left: 1, right: 1))
        XCTAssertEqual(runConvolution(Self.plane, weight: [1], geometry: g),
                       [0, 0, 0, 0, 0, 0, 0, 1, 2, 0, 0, 3, 4, 5, 0, 0, 6, 7, 8, 0, 0, 0, 0, 0, 0])
    }
}
