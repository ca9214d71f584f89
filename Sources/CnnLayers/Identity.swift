import CnnCore

/// Passes its input through unchanged (PyTorch's nn.Identity).
///
/// Forward returns the input tensor itself and backward the incoming gradient
/// itself: no copy, since no layer writes into a tensor it was given.
public final class Identity: Layer {
    public var typeName: String { "Identity" }

    /// An identity layer.
    public init() {}

    public func outputShape(for input: [Int]) throws -> [Int] {
        guard !input.isEmpty, input.allSatisfy({ $0 > 0 }) else {
            throw CnnError.shapeMismatch(layer: typeName, expected: "a non-empty shape with positive sizes",
                                         got: formatShape(input))
        }
        return input
    }

    public func forward(_ input: Tensor, context: ExecutionContext) -> Tensor { input }
    public func backward(_ gradOutput: Tensor, context: ExecutionContext) -> Tensor { gradOutput }
}

// MARK: - Helpers shared by the layers in this module.

/// Resizes `tensor` to `shape` only when it differs, so the steady state neither
/// allocates nor rewrites the shape array.
@inline(__always)
func ensureShape(_ tensor: Tensor, _ shape: [Int]) {
    if tensor.shape != shape { tensor.resize(to: shape) }
}

/// A growable scratch buffer of integers owned by a layer: Int32 (max-pool argmax, labels)
/// or UInt16 (bf16 bit patterns).
final class ScratchBuffer<Element: FixedWidthInteger> {
    private(set) var data: UnsafeMutablePointer<Element>
    private(set) var capacity: Int

    init() {
        capacity = 1
        data = .allocate(capacity: 1)
        data.initialize(to: 0)
    }

    deinit { data.deallocate() }

    /// Makes room for `count` elements; contents are unspecified after growing.
    func reserve(_ count: Int) {
        guard count > capacity else { return }
        data.deallocate()
        capacity = count
        data = .allocate(capacity: count)
        data.initialize(repeating: 0, count: count)
    }
}

typealias IndexBuffer = ScratchBuffer<Int32>

/// Throws `invalidArgument` unless `value` > 0.
func requirePositive(_ value: Int, layer: String, argument: String) throws {
    guard value > 0 else {
        throw CnnError.invalidArgument(layer: layer, argument: argument, value: String(value), reason: "must be positive")
    }
}

/// Throws `shapeMismatch` unless every size in `shape` is positive and there is at least one.
func requireNonEmpty(_ shape: [Int], layer: String) throws {
    guard !shape.isEmpty, shape.allSatisfy({ $0 > 0 }) else {
        throw CnnError.shapeMismatch(layer: layer, expected: "a non-empty shape with positive sizes", got: formatShape(shape))
    }
}
