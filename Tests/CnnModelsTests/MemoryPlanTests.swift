import XCTest
import CnnCore
import CnnLayers
import CnnModels

/// One training step's results, bitwise: logits, dL/dx of the input, parameter gradients,
/// and the BatchNorm running statistics.
private struct StepBits: Equatable {
    var logits: [UInt32]
    var inputGradient: [UInt32]
    var gradients: [UInt32]
    var buffers: [UInt32]
}

/// Runs `steps` training steps (forward, backward from a fixed dL/dy, no update) of `root`
/// on a fixed input and returns the last step's results. Several steps, so that shared
/// buffers hold the previous step's leftovers when a layer writes into them.
private func trainingSteps(_ root: Layer, input: [Int], classes: Int, steps: Int = 2) -> StepBits {
    let store = ParameterStore(root: root)
    store.initialize(seed: 17)
    var rng = SplitMix64(seed: 3)
    for i in 0..<store.parameters.count { store.parameters[i] += 0.05 * (rng.nextUnitFloat() - 0.5) }
    let x = Tensor(shape: input)
    for i in 0..<x.count { x[i] = rng.nextUnitFloat() * 2 - 1 }
    let dy = Tensor(shape: [input[0], classes])
    for i in 0..<dy.count { dy[i] = rng.nextUnitFloat() - 0.5 }
    var result = StepBits(logits: [], inputGradient: [], gradients: [], buffers: [])
    for step in 0..<steps {
        let context = ExecutionContext(training: true, seed: 9, step: step)
        store.zeroGradients()
        let logits = root.forward(x, context: context)
        result.logits = logits.toArray().map(\.bitPattern)
        let dx = root.backward(dy, context: context)
        result.inputGradient = dx.toArray().map(\.bitPattern)
        result.gradients = store.gradients.toArray().map(\.bitPattern)
        result.buffers = store.buffers.toArray().map(\.bitPattern)
    }
    return result
}

/// A backward memory plan (shared dL/dx slots, in-place ReLU) changes no bit of any result,
/// and holds fewer bytes than the tensors it replaces.
final class MemoryPlanTests: XCTestCase {
    /// Builds `model` twice at `input`, plans one, and compares a training step bitwise.
    private func assertPlanChangesNothing(_ build: () throws -> Layer, input: [Int], classes: Int,
                                          file: StaticString = #filePath, line: UInt = #line) throws -> MemoryPlan {
        let plain = try build(), planned = try build()
        let plan = MemoryPlan.apply(to: planned, inputShape: input)
        XCTAssertGreaterThan(plan.plannedTensors, 0, file: file, line: line)
        let a = trainingSteps(plain, input: input, classes: classes)
        let b = trainingSteps(planned, input: input, classes: classes)
        XCTAssertTrue(a.inputGradient.contains { Float(bitPattern: $0) != 0 }, "dL/dx is all zero: the check would be vacuous",
                      file: file, line: line)
        XCTAssertEqual(a.logits, b.logits, "logits", file: file, line: line)
        XCTAssertEqual(a.inputGradient, b.inputGradient, "dL/dx", file: file, line: line)
        XCTAssertEqual(a.gradients, b.gradients, "parameter gradients", file: file, line: line)
        XCTAssertEqual(a.buffers, b.buffers, "running statistics", file: file, line: line)
        XCTAssertLessThan(plan.plannedBytes, plan.unplannedBytes, file: file, line: line)
        return plan
    }

    func testResidualModelBitwise() throws {
        // resnet20: identity and 1x1 stride-2 convolution shortcuts, block ReLUs on the sum.
        let plan = try assertPlanChangesNothing({ try ZooModel.resnet20.build(input: [3, 32, 32], classes: 10) },
                                                input: [2, 3, 32, 32], classes: 10)
        // The stem's and every block's first BatchNorm take their ReLU; the block ReLUs (on the sum) run in place.
        XCTAssertEqual(plan.fusedReLUs, 10)
        XCTAssertEqual(plan.inPlaceReLUs, 9)
        // Its convolutions of one geometry (e.g. the 16-channel 3x3 ones) share a workspace.
        XCTAssertGreaterThan(plan.sharedWorkspaces, 0)
    }

    func testDenseNetBitwise() throws {
        // Concat with an Identity branch beside a BN-ReLU-conv chain, nested in Sequentials.
        let plan = try assertPlanChangesNothing({ try ZooModel.densenet121.build(input: [3, 32, 32], classes: 10) },
                                                input: [2, 3, 32, 32], classes: 10)
        // BN-ReLU-conv everywhere: every ReLU is fused into the BatchNorm before it.
        XCTAssertGreaterThan(plan.fusedReLUs, 100)
        XCTAssertEqual(plan.inPlaceReLUs, 0)
        // Without fusion the same ReLUs run in place instead.
        let unfused = MemoryPlan.apply(to: try ZooModel.densenet121.build(input: [3, 32, 32], classes: 10),
                                       inputShape: [2, 3, 32, 32], fuse: false)
        XCTAssertEqual(unfused.fusedReLUs, 0)
        XCTAssertEqual(unfused.inPlaceReLUs, plan.fusedReLUs)
    }

    func testGoogLeNetBitwise() throws {
        // Inception: Concat of four chains, max-pool branch, dropout before the classifier.
        let plan = try assertPlanChangesNothing({ try ZooModel.googlenet.build(input: [3, 64, 64], classes: 10) },
                                                input: [2, 3, 64, 64], classes: 10)
        XCTAssertGreaterThan(plan.fusedReLUs, 50)   // conv-BN-ReLU in every branch
    }

    /// ReLUs that must keep their own output: the first layer of a branch (its input is the
    /// block input, which the shortcut reads too), after an Identity (which hands on a tensor
    /// it does not own), and after a Sigmoid (whose backward reads its own output).
    func testReLUsWithOtherReadersStayOutOfPlace() throws {
        func build() throws -> Layer {
            let preActivation = Residual(branch: [("r", ReLU()), ("c", try Conv2D(4, 4, kernelSize: 3, padding: 1))],
                                         shortcut: nil, activation: nil)
            let identityThenReLU = Sequential([Identity(), ReLU()])
            let sigmoidThenReLU = Sequential([try Conv2D(4, 4, kernelSize: 1), Sigmoid(), ReLU()])
            let concat = Concat(branches: [("a", identityThenReLU), ("b", sigmoidThenReLU)])
            return Sequential([try Conv2D(3, 4, kernelSize: 3, padding: 1), preActivation, concat,
                               try Conv2D(8, 4, kernelSize: 1), try BatchNorm2d(4), ReLU(), GlobalAvgPool2d(), Flatten(),
                               try Linear(4, 5)])
        }
        let probe = try build()
        let plan = MemoryPlan.apply(to: probe, inputShape: [2, 3, 6, 6], fuse: false)
        // Only the ReLU after the last BatchNorm qualifies (the BatchNorm keeps half the
        // values positive, so every branch reaches the logits); with fusion that one is fused.
        XCTAssertEqual(plan.inPlaceReLUs, 1)
        let fused = MemoryPlan.apply(to: probe, inputShape: [2, 3, 6, 6])
        XCTAssertEqual(fused.inPlaceReLUs, 0)
        XCTAssertEqual(fused.fusedReLUs, 1)
        _ = try assertPlanChangesNothing(build, input: [2, 3, 6, 6], classes: 5)
    }

    /// At the ImageNet shapes the slots hold a small fraction of the per-layer dL/dx bytes
    /// (those of every layer, fused ReLUs included, as without a plan; planned only: no step
    /// is run). Fusing BatchNorm and ReLU takes no more slot bytes than keeping them apart.
    func testPlannedBytesAt224() throws {
        for (model, most) in [(ZooModel.resnet18, 0.25), (.densenet121, 0.1)] {
            let root = try model.build(input: [3, 224, 224], classes: 1000)
            let unfused = MemoryPlan.apply(to: root, inputShape: [1, 3, 224, 224], fuse: false)
            let plan = MemoryPlan.apply(to: root, inputShape: [1, 3, 224, 224])
            let ratio = Double(plan.plannedBytes) / Double(unfused.unplannedBytes)
            print("memory plan \(model.rawValue): \(plan.slots.count) slots, \(plan.plannedBytes >> 10) KiB for "
                  + "\(plan.plannedTensors) dL/dx tensors of \(plan.unplannedBytes >> 10) KiB; "
                  + "\(plan.fusedReLUs) ReLUs fused into BatchNorm; "
                  + "\(plan.inPlaceReLUs) in-place ReLUs save \((plan.inPlaceElements * 4) >> 10) KiB; unfused: "
                  + "\(unfused.slots.count) slots, \(unfused.plannedBytes >> 10) KiB for \(unfused.plannedTensors) tensors of "
                  + "\(unfused.unplannedBytes >> 10) KiB")
            XCTAssertLessThan(ratio, most, model.rawValue)
            XCTAssertGreaterThan(plan.fusedReLUs, 0, model.rawValue)
            XCTAssertLessThanOrEqual(plan.plannedBytes, unfused.plannedBytes, model.rawValue)
        }
    }

    /// Planning again with `inPlace: false` undoes the previous plan's in-place ReLUs, and the
    /// memory account counts the outputs they hold again.
    func testReplanningWithoutInPlaceRestoresReLUOutputs() throws {
        let root = try ZooModel.resnet20.build(input: [3, 32, 32], classes: 10)
        func inPlaceCount(_ layer: Layer) -> Int {
            var n = (layer as? ReLU)?.inPlace == true ? 1 : 0
            if let residual = layer as? Residual, let activation = residual.activation { n += inPlaceCount(activation) }
            return layer.children.reduce(n) { $0 + inPlaceCount($1.layer) }
        }
        let first = MemoryPlan.apply(to: root, inputShape: [2, 3, 32, 32])
        XCTAssertEqual(inPlaceCount(root), first.inPlaceReLUs)
        let inPlaceActivations = MemoryAccount(root: root, inputShape: [2, 3, 32, 32], plan: first).activations
        let second = MemoryPlan.apply(to: root, inputShape: [2, 3, 32, 32], inPlace: false)
        XCTAssertEqual(second.inPlaceReLUs, 0)
        XCTAssertEqual(inPlaceCount(root), 0)
        let ownActivations = MemoryAccount(root: root, inputShape: [2, 3, 32, 32], plan: second).activations
        XCTAssertEqual(ownActivations - inPlaceActivations, first.inPlaceElements * MemoryLayout<Float>.stride)
    }

    /// Recomputing the BatchNorm + ReLU outputs that feed convolutions (one buffer shared by
    /// all of them, written again before each reader's backward) changes no bit, and the
    /// account drops their outputs but the shared buffer.
    /// bf16 arithmetic: the BatchNorms fed by a convolution (minivgg through its fused ReLUs)
    /// keep 2 bytes an element of their input instead of the convolution's 4, plus one shared
    /// buffer; in fp32 the account is what it was.
    func testBF16InputsInTheAccount() throws {
        for (model, input, count) in [(ZooModel.resnet20, [2, 3, 32, 32], 21), (.minivgg, [2, 3, 32, 32], 4)] {
            let root = try model.build(input: Array(input.dropFirst()), classes: 10)
            let plan = MemoryPlan.apply(to: root, inputShape: input)
            let without = MemoryPlan.apply(to: try model.build(input: Array(input.dropFirst()), classes: 10), inputShape: input,
                                           bf16Inputs: false)
            XCTAssertEqual(plan.bf16InputBatchNorms, count, model.rawValue)
            XCTAssertEqual(without.bf16InputBatchNorms, 0)
            let fp32 = MemoryAccount(root: root, inputShape: input, plan: plan).activations
            let bf16 = MemoryAccount(root: root, inputShape: input, plan: plan, arithmetic: GemmArithmetic(.bf16)).activations
            XCTAssertEqual(fp32 - bf16, 2 * plan.bf16InputElements - 4 * plan.bf16ProducerBufferElements, model.rawValue)
            XCTAssertGreaterThan(fp32, bf16, model.rawValue)
        }
    }

    func testRecomputeBitwiseAndSmaller() throws {
        for (model, input, least) in [(ZooModel.resnet20, [2, 3, 32, 32], 9), (.densenet121, [2, 3, 32, 32], 100)] {
            // (googlenet has none: its BatchNorm + ReLU outputs go to another block, not a convolution.)
            let shape = Array(input.dropFirst())
            let plain = try model.build(input: shape, classes: 10)
            let fused = try model.build(input: shape, classes: 10), recomputed = try model.build(input: shape, classes: 10)
            let fusedPlan = MemoryPlan.apply(to: fused, inputShape: input)
            let plan = MemoryPlan.apply(to: recomputed, inputShape: input, recompute: true)
            XCTAssertGreaterThanOrEqual(plan.recomputedBatchNorms, least, model.rawValue)
            XCTAssertEqual(fusedPlan.recomputedBatchNorms, 0)
            let a = trainingSteps(plain, input: input, classes: 10)
            XCTAssertTrue(a.inputGradient.contains { Float(bitPattern: $0) != 0 })
            XCTAssertEqual(a, trainingSteps(recomputed, input: input, classes: 10), model.rawValue)
            let held = MemoryAccount(root: fused, inputShape: input, plan: fusedPlan).activations
            let less = MemoryAccount(root: recomputed, inputShape: input, plan: plan).activations
            XCTAssertEqual(held - less, (plan.recomputedElements - plan.recomputeBufferElements) * MemoryLayout<Float>.stride,
                           model.rawValue)
            XCTAssertGreaterThan(plan.recomputedElements, 2 * plan.recomputeBufferElements, model.rawValue)
            // Planning again without recompute gives every BatchNorm its own output back.
            let again = MemoryPlan.apply(to: recomputed, inputShape: input)
            XCTAssertEqual(MemoryAccount(root: recomputed, inputShape: input, plan: again).activations, held, model.rawValue)
            XCTAssertEqual(a, trainingSteps(recomputed, input: input, classes: 10), model.rawValue)
        }
        // At 224 (planned only), what densenet121 no longer holds.
        let root = try ZooModel.densenet121.build(input: [3, 224, 224], classes: 1000)
        let plan = MemoryPlan.apply(to: root, inputShape: [16, 3, 224, 224], recompute: true)
        print("recompute densenet121 batch 16: \(plan.recomputedBatchNorms) BatchNorms, outputs of "
              + "\((plan.recomputedElements * 4) >> 20) MiB in a shared buffer of \((plan.recomputeBufferElements * 4) >> 20) MiB")
    }

    /// The BatchNorms that end a Residual's branch or shortcut write into the two sum scratch
    /// tensors: same bits as unplanned, and the account drops their outputs.
    func testResidualSumInputsInScratchBitwiseAndSmaller() throws {
        // resnet20: 9 blocks (9 branch BatchNorms), 2 projection shortcuts; resnet18: 8 and 3.
        for (model, input, count) in [(ZooModel.resnet20, [2, 3, 32, 32], 11), (.resnet18, [2, 3, 64, 64], 11)] {
            let shape = Array(input.dropFirst())
            let plain = try model.build(input: shape, classes: 10)
            let kept = try model.build(input: shape, classes: 10), scratch = try model.build(input: shape, classes: 10)
            let keptPlan = MemoryPlan.apply(to: kept, inputShape: input, scratchSumInputs: false)
            let plan = MemoryPlan.apply(to: scratch, inputShape: input)
            XCTAssertEqual(keptPlan.scratchBatchNorms, 0)
            XCTAssertEqual(plan.scratchBatchNorms, count, model.rawValue)
            let a = trainingSteps(plain, input: input, classes: 10)
            XCTAssertTrue(a.inputGradient.contains { Float(bitPattern: $0) != 0 })
            XCTAssertEqual(a, trainingSteps(scratch, input: input, classes: 10), model.rawValue)
            XCTAssertEqual(a, trainingSteps(kept, input: input, classes: 10), model.rawValue)
            let held = MemoryAccount(root: kept, inputShape: input, plan: keptPlan).activations
            let less = MemoryAccount(root: scratch, inputShape: input, plan: plan).activations
            let buffers = plan.sumBranchScratchElements + plan.sumShortcutScratchElements
            XCTAssertEqual(held - less, (plan.scratchElements - buffers) * MemoryLayout<Float>.stride, model.rawValue)
            XCTAssertGreaterThan(plan.scratchElements, 3 * buffers, model.rawValue)
            // With recompute as well (other BatchNorms, another buffer), and planned again without.
            let both = MemoryPlan.apply(to: scratch, inputShape: input, recompute: true)
            XCTAssertEqual(both.scratchBatchNorms, count)
            XCTAssertEqual(a, trainingSteps(scratch, input: input, classes: 10), model.rawValue)
            let again = MemoryPlan.apply(to: scratch, inputShape: input, scratchSumInputs: false)
            XCTAssertEqual(MemoryAccount(root: scratch, inputShape: input, plan: again).activations, held, model.rawValue)
            XCTAssertEqual(a, trainingSteps(scratch, input: input, classes: 10), model.rawValue)
        }
    }

    /// A shortcut that holds a Residual would write the branch scratch between the branch's
    /// BatchNorm and the sum: such a block keeps its BatchNorm outputs.
    func testShortcutWithAResidualKeepsItsOutputs() throws {
        func conv() throws -> Conv2D {
            try Conv2D(inChannels: 4, outChannels: 4, kernelSize: (3, 3), padding: .explicit(top: 1, bottom: 1, left: 1, right: 1))
        }
        func block() throws -> Residual {
            Residual(branch: [("c", try conv()), ("b", try BatchNorm2d(4))], shortcut: nil, activation: ReLU())
        }
        func build() throws -> Layer {
            let outer = Residual(branch: [("c", try conv()), ("b", try BatchNorm2d(4))],
                                 shortcut: ("s", Sequential([try block()], names: ["r"])), activation: ReLU())
            return Sequential([outer, try AdaptiveAvgPool2d(outputHeight: 1, outputWidth: 1), Flatten()], names: ["o", "p", "f"])
        }
        let plain = try build(), planned = try build()
        let plan = MemoryPlan.apply(to: planned, inputShape: [2, 4, 6, 6])
        XCTAssertEqual(plan.scratchBatchNorms, 1)   // the inner block's own branch only
        let a = trainingSteps(plain, input: [2, 4, 6, 6], classes: 4)
        XCTAssertTrue(a.inputGradient.contains { Float(bitPattern: $0) != 0 })
        XCTAssertEqual(a, trainingSteps(planned, input: [2, 4, 6, 6], classes: 4))
    }

    /// `Model` plans itself, and a model planned for one batch size runs another bitwise alike.
    func testModelPlansItselfAndOtherBatchSizesWork() throws {
        let model = try Model(name: "resnet20")
        XCTAssertGreaterThan(model.memoryPlan.plannedTensors, 0)
        model.planMemory(batch: 1)
        let plain = try ZooModel.resnet20.build(input: [3, 32, 32], classes: 10)
        let a = trainingSteps(plain, input: [3, 3, 32, 32], classes: 10)
        let b = trainingSteps(model.root, input: [3, 3, 32, 32], classes: 10)
        XCTAssertEqual(a, b)
    }
}
