import XCTest
import CnnCore
import CnnLayers

/// A tensor of the given shape with values uniform in ±scale around `offset`.
func randomTensor(_ shape: [Int], seed: UInt64, scale: Float = 1, offset: Float = 0) -> Tensor {
    var rng = SplitMix64(seed: seed)
    let t = Tensor(shape: shape)
    for i in 0..<t.count { t[i] = offset + (rng.nextUnitFloat() * 2 - 1) * scale }
    return t
}

/// Values at least `gap` apart and at least `gap / 2` from zero, in a shuffled
/// order: no ties for max pooling, no kinks within a finite-difference step.
func distinctTensor(_ shape: [Int], seed: UInt64, gap: Float = 0.05) -> Tensor {
    let t = Tensor(shape: shape)
    var rng = SplitMix64(seed: seed)
    var values = (0..<t.count).map { (Float($0) - Float(t.count) / 2 + 0.5) * gap }
    values.shuffle(using: &rng)
    for i in 0..<t.count { t[i] = values[i] }
    return t
}

/// Binds `layer` through a fresh, initialised ParameterStore, then runs the
/// finite-difference check and asserts the worst relative error is below `tolerance`.
@discardableResult
func assertGradients(_ layer: Layer, input: Tensor, training: Bool = true, tolerance: Double = 1e-3,
                     maxChecks: Int = 60, seed: UInt64 = 11, storeSetup: ((ParameterStore) -> Void)? = nil,
                     file: StaticString = #filePath, line: UInt = #line) -> ParameterStore {
    let store = ParameterStore(root: layer)
    store.initialize(seed: seed)
    storeSetup?(store)
    let context = ExecutionContext(training: training, seed: 5, step: 3, sampleOffset: 0)
    let result = checkGradients(layer: layer, store: store, input: input, context: context, maxChecks: maxChecks)
    print("gradient check \(layer.typeName): \(result)")
    XCTAssertGreaterThan(result.checked, 0, file: file, line: line)
    XCTAssertLessThan(result.worstError, tolerance, "\(layer.typeName): \(result)", file: file, line: line)
    return store
}

/// Randomises every parameter (so BatchNorm's γ, β are not 1 and 0).
func randomizeParameters(_ store: ParameterStore, seed: UInt64) {
    var rng = SplitMix64(seed: seed)
    for i in 0..<store.parameters.count { store.parameters[i] = 0.5 + rng.nextUnitFloat() }
}

func assertClose(_ a: [Float], _ b: [Float], accuracy: Float, _ message: String = "",
                 file: StaticString = #filePath, line: UInt = #line) {
    XCTAssertEqual(a.count, b.count, "count \(message)", file: file, line: line)
    for i in 0..<min(a.count, b.count) where abs(a[i] - b[i]) > accuracy {
        XCTFail("\(message) element \(i): \(a[i]) vs \(b[i])", file: file, line: line)
        return
    }
}
