import XCTest
import CnnCore
import CnnLayers

/// Conv2D / Conv1D as layers: finite-difference gradients over the option
/// space, parameter specs, shapes, and argument errors.
final class ConvLayerTests: XCTestCase {

    struct Case {
        var c = 2, k = 3, h = 7, w = 5, batch = 1
        var kernel = (3, 2), stride = (1, 1), dilation = (1, 1)
        var padding: ConvPadding = .valid
        var groups = 1, bias = true
        var mode: PaddingMode = .zeros
        var budget = convolutionPanelBudgetBytes
    }

    func gradientCheck(_ t: Case, file: StaticString = #filePath, line: UInt = #line) throws {
        let layer = try Conv2D(inChannels: t.c, outChannels: t.k, kernelSize: t.kernel, stride: t.stride,
                               padding: t.padding, dilation: t.dilation, groups: t.groups, bias: t.bias,
                               paddingMode: t.mode, panelBudgetBytes: t.budget)
        let store = ParameterStore(root: layer)
        store.initialize(seed: 11)
        var rng = SplitMix64(seed: 5)
        let x = Tensor(shape: [t.batch, t.c, t.h, t.w])
        for i in 0..<x.count { x[i] = rng.nextUnitFloat() * 2 - 1 }
        let result = checkGradients(layer: layer, store: store, input: x, context: ExecutionContext(), step: 1e-2)
        XCTAssertLessThan(result.worstError, 1e-2, "\(t): \(result)", file: file, line: line)
        XCTAssertGreaterThan(result.checked, 0, file: file, line: line)
    }

    func testGradientsStrideAndPadding() throws {
        try gradientCheck(Case())
        try gradientCheck(Case(batch: 3, stride: (2, 2), padding: .explicit(top: 1, bottom: 0, left: 2, right: 1)))
        try gradientCheck(Case(h: 8, w: 7, stride: (3, 2), padding: .same))
        try gradientCheck(Case(stride: (3, 3), padding: .valid, bias: false))
        try gradientCheck(Case(batch: 3, kernel: (3, 3), padding: .same))
    }

    func testGradientsPaddingModes() throws {
        for mode in PaddingMode.allCases {
            try gradientCheck(Case(batch: 3, kernel: (3, 2), stride: (2, 1),
                                   padding: .explicit(top: 2, bottom: 1, left: 1, right: 2), mode: mode))
            try gradientCheck(Case(kernel: (3, 3), dilation: (2, 2), padding: .same, mode: mode))
        }
    }

    func testGradientsGroupsDilationBias() throws {
        try gradientCheck(Case(c: 4, k: 6, dilation: (2, 1), padding: .same, groups: 2))
        try gradientCheck(Case(c: 4, k: 4, batch: 3, kernel: (3, 3), padding: .explicit(top: 1, bottom: 1, left: 1, right: 1),
                               groups: 4, bias: false, mode: .replicate))                      // depthwise
        try gradientCheck(Case(c: 3, k: 6, kernel: (2, 3), stride: (2, 2), dilation: (2, 2),
                               padding: .explicit(top: 0, bottom: 3, left: 1, right: 0), groups: 3, mode: .circular))
        try gradientCheck(Case(c: 4, k: 2, h: 16, w: 16, kernel: (1, 1), groups: 2))          // pointwise path
        try gradientCheck(Case(c: 4, k: 2, kernel: (1, 1), groups: 2))       // 1×1 on a small plane: packed im2col
        try gradientCheck(Case(c: 9, k: 10, h: 3, w: 5, batch: 3, kernel: (1, 1)))  // ... and its flipped backward-data
        try gradientCheck(Case(c: 4, k: 2, batch: 3, kernel: (1, 1), stride: (2, 2), bias: false))  // strided 1×1
    }

    func testGradientsWithBlocksSpanningImages() throws {
        // 3·3·3 = 27 rows, budget for 16 columns; 4×4 maps of 16 pixels and 3×3
        // outputs (stride 2) so blocks of 16 cross image boundaries.
        try gradientCheck(Case(c: 3, k: 4, h: 5, w: 5, batch: 3, kernel: (3, 3), stride: (2, 2),
                               padding: .explicit(top: 1, bottom: 1, left: 1, right: 1), mode: .reflect,
                               budget: 27 * 4 * 16))
        try gradientCheck(Case(c: 3, k: 4, h: 4, w: 4, batch: 3, kernel: (3, 3), padding: .same, budget: 27 * 4 * 16))
    }

    func testConv1DGradientsAndShapes() throws {
        for (stride, padding, mode) in [(1, ConvPadding.valid, PaddingMode.zeros), (2, .same, .reflect),
                                         (3, .explicit(top: 0, bottom: 0, left: 2, right: 1), .circular)] {
            let layer = try Conv1D(inChannels: 2, outChannels: 3, kernelSize: 3, stride: stride, padding: padding,
                                   paddingMode: mode)
            let store = ParameterStore(root: layer)
            store.initialize(seed: 3)
            XCTAssertEqual(store.parameterEntries.map(\.shape), [[3, 2, 3], [3]])
            let x = Tensor(shape: [2, 2, 11])
            var rng = SplitMix64(seed: 9)
            for i in 0..<x.count { x[i] = rng.nextUnitFloat() * 2 - 1 }
            let result = checkGradients(layer: layer, store: store, input: x, context: ExecutionContext())
            XCTAssertLessThan(result.worstError, 1e-2, "stride \(stride) \(padding) \(mode): \(result)")
            XCTAssertEqual(layer.forward(x, context: ExecutionContext()).shape,
                           try layer.outputShape(for: [2, 2, 11]))
        }
        // Seed 001 quiz through the layer: n = 13, s = 5, k = 6, "same" → 3 outputs.
        let quiz = try Conv1D(inChannels: 1, outChannels: 1, kernelSize: 6, stride: 5, padding: .same)
        XCTAssertEqual(try quiz.outputShape(for: [1, 1, 13]), [1, 1, 3])
        XCTAssertEqual(quiz.typeName, "Conv1d")
        XCTAssertEqual(quiz.multiplyAccumulates(for: [1, 1, 13]), 3 * 6)
    }

    func testParameterSpecsShapesAndMACs() throws {
        let conv = try Conv2D(inChannels: 6, outChannels: 16, kernelSize: (5, 3), groups: 2)
        XCTAssertEqual(conv.typeName, "Conv2d")
        XCTAssertEqual(conv.parameterSpecs, [
            TensorSpec("weight", shape: [16, 3, 5, 3], role: .weight(fanIn: 45, fanOut: 240)),
            TensorSpec("bias", shape: [16], role: .bias(fanIn: 45)),
        ])
        XCTAssertEqual(try conv.outputShape(for: [4, 6, 14, 14]), [4, 16, 10, 12])
        XCTAssertEqual(conv.multiplyAccumulates(for: [1, 6, 14, 14]), 16 * 10 * 12 * 3 * 5 * 3)
        let noBias = try Conv2D(3, 16, kernelSize: 3, padding: 1, bias: false)
        XCTAssertEqual(noBias.parameterSpecs.map(\.name), ["weight"])
        XCTAssertEqual(try noBias.outputShape(for: [2, 3, 32, 32]), [2, 16, 32, 32])
        // The layer reuses its output and workspace between steps.
        let store = ParameterStore(root: noBias)
        store.initialize(seed: 1)
        let x = Tensor(shape: [2, 3, 32, 32])
        let y1 = noBias.forward(x, context: ExecutionContext())
        let bytes = noBias.workspace.bytes
        XCTAssertGreaterThan(bytes, 0)
        let y2 = noBias.forward(x, context: ExecutionContext())
        XCTAssertTrue(y1 === y2)
        XCTAssertEqual(noBias.workspace.bytes, bytes)
    }

    func testBadArgumentsNameLayerAndValue() {
        func message(_ body: () throws -> Any) -> String {
            do { _ = try body(); return "no error" } catch { return "\(error)" }
        }
        let m1 = message { try Conv2D(inChannels: 3, outChannels: 8, kernelSize: (3, 3), groups: 2, name: "stem") }
        XCTAssertTrue(m1.contains("stem") && m1.contains("groups = 2") && m1.contains("in_channels 3"), m1)
        let m2 = message { try Conv2D(inChannels: 3, outChannels: 8, kernelSize: (0, 3), name: "c") }
        XCTAssertTrue(m2.contains("kernel_size = 0x3"), m2)
        let m3 = message { try Conv2D(inChannels: 3, outChannels: 8, kernelSize: (3, 3), stride: (1, -2), name: "c") }
        XCTAssertTrue(m3.contains("stride = 1x-2"), m3)
        let m4 = message { try Conv1D(inChannels: 1, outChannels: 1, kernelSize: 3,
                                      padding: .explicit(top: 1, bottom: 0, left: 0, right: 0), name: "seq") }
        XCTAssertTrue(m4.contains("seq") && m4.contains("padding"), m4)
        let m5 = message { try Conv2D(inChannels: 0, outChannels: 8, kernelSize: (3, 3), name: "c") }
        XCTAssertTrue(m5.contains("in_channels = 0"), m5)

        let conv = try! Conv2D(inChannels: 3, outChannels: 8, kernelSize: (5, 5), paddingMode: .zeros, name: "conv1")
        let s1 = message { try conv.outputShape(for: [2, 4, 28, 28]) }
        XCTAssertTrue(s1.contains("conv1") && s1.contains("2x4x28x28"), s1)
        let s2 = message { try conv.outputShape(for: [2, 3, 28]) }
        XCTAssertTrue(s2.contains("conv1") && s2.contains("2x3x28"), s2)
        let s3 = message { try conv.outputShape(for: [2, 3, 4, 28]) }
        XCTAssertTrue(s3.contains("conv1") && s3.contains("5x5") && s3.contains("4x28"), s3)
        let reflect = try! Conv2D(inChannels: 1, outChannels: 1, kernelSize: (3, 3),
                                  padding: .explicit(top: 2, bottom: 2, left: 2, right: 2), paddingMode: .reflect,
                                  name: "r")
        let s4 = message { try reflect.outputShape(for: [1, 1, 2, 8]) }
        XCTAssertTrue(s4.contains("r:") && s4.contains("reflect") && s4.contains("(2, 2, 2, 2)"), s4)
    }
}

final class InputGradientSkipTests: XCTestCase {
    /// Only the first conv of the outermost Sequential may skip dL/dx: the parameter gradients
    /// must not change (a nested first conv or a residual branch conv skipping would change them).
    func testSkippingModelInputGradientKeepsParameterGradients() throws {
        func build() throws -> Sequential {
            let block = Residual(branch: [("c", try Conv2D(4, 4, kernelSize: 3, padding: 1)), ("r", ReLU()),
                                          ("d", try Conv2D(4, 4, kernelSize: 3, padding: 1))], shortcut: nil, activation: ReLU())
            let inner = Sequential([try Conv2D(2, 4, kernelSize: 3, padding: 1), ReLU(), try Conv2D(4, 4, kernelSize: 2)])
            return Sequential([inner, ReLU(), block, try Conv2D(4, 3, kernelSize: 3, stride: 2)])
        }
        var gradients: [[Float]] = []
        for needsInputGradient in [true, false] {
            let root = try build()
            let store = ParameterStore(root: root)
            store.initialize(seed: 5)
            let context = ExecutionContext()
            let y = root.forward(randomTensor([2, 2, 7, 7], seed: 6), context: context)
            store.zeroGradients()
            context.needsInputGradient = needsInputGradient
            let dx = root.backward(randomTensor(y.shape, seed: 7), context: context)
            XCTAssertEqual(dx.shape, needsInputGradient ? [2, 2, 7, 7] : [0])
            XCTAssertEqual(context.needsInputGradient, needsInputGradient, "restored after backward")
            gradients.append(store.gradients.toArray())
        }
        XCTAssertEqual(gradients[0], gradients[1])
    }
}
