// Dimension letters used across the project:
//   N batch, C channels, H height, W width, K output channels (convolution);
//   inside GEMM: M rows of C, N columns of C, K the reduction length.

/// A contiguous, 64-byte aligned Float32 tensor in NCHW order.
///
/// A reference type: layers own their output and gradient tensors and reuse
/// them from step to step, so the steady-state training step allocates nothing.
/// `resize(to:)` reallocates only when the new shape needs more room.
public final class Tensor {
    /// Extent of each dimension, outermost first (N, C, H, W for images).
    public private(set) var shape: [Int]
    /// Number of elements, the product of `shape`.
    public private(set) var count: Int
    /// Elements the allocation can hold without growing.
    public private(set) var capacity: Int
    /// Start of the storage; valid for `count` elements.
    public private(set) var data: UnsafeMutablePointer<Float>

    /// Alignment of every tensor's storage in bytes (one cache line, two AVX registers).
    public static let alignment = 64

    /// A tensor of the given shape, zero-filled.
    public init(shape: [Int]) {
        precondition(shape.allSatisfy { $0 >= 0 }, "negative tensor dimension in \(shape)")
        self.shape = shape
        self.count = shape.reduce(1, *)
        self.capacity = Swift.max(count, 1)
        self.data = Tensor.allocate(capacity)
        data.initialize(repeating: 0, count: capacity)
    }

    /// A tensor of the given shape holding `values` (row-major).
    public convenience init(shape: [Int], values: [Float]) {
        self.init(shape: shape)
        precondition(values.count == count, "\(values.count) values for shape \(shape)")
        values.withUnsafeBufferPointer { data.update(from: $0.baseAddress!, count: count) }
    }

    deinit { UnsafeMutableRawPointer(data).deallocate() }

    private static func allocate(_ elements: Int) -> UnsafeMutablePointer<Float> {
        UnsafeMutableRawPointer.allocate(byteCount: elements * MemoryLayout<Float>.stride, alignment: alignment)
            .bindMemory(to: Float.self, capacity: elements)
    }

    /// Gives the tensor a new shape, growing the allocation only if needed.
    /// Contents are unspecified afterwards unless the count is unchanged.
    public func resize(to newShape: [Int]) {
        precondition(newShape.allSatisfy { $0 >= 0 }, "negative tensor dimension in \(newShape)")
        let newCount = newShape.reduce(1, *)
        if newCount > capacity {
            UnsafeMutableRawPointer(data).deallocate()
            capacity = newCount
            data = Tensor.allocate(capacity)
            data.initialize(repeating: 0, count: capacity)
        }
        shape = newShape
        count = newCount
    }

    /// Reinterprets the same elements with another shape of equal count.
    public func reshape(to newShape: [Int]) {
        precondition(newShape.reduce(1, *) == count, "cannot reshape \(shape) to \(newShape)")
        shape = newShape
    }

    /// The elements as a buffer.
    public var buffer: UnsafeMutableBufferPointer<Float> { UnsafeMutableBufferPointer(start: data, count: count) }

    /// Element `i` in flat order.
    public subscript(i: Int) -> Float {
        get { data[i] }
        set { data[i] = newValue }
    }

    /// Sets every element to zero.
    public func zero() { data.update(repeating: 0, count: count) }

    /// Sets every element to `value`.
    public func fill(_ value: Float) { data.update(repeating: value, count: count) }

    /// Copies the elements (and shape) of `other`.
    public func copy(from other: Tensor) {
        resize(to: other.shape)
        data.update(from: other.data, count: count)
    }

    /// A new tensor with the same shape and contents.
    public func clone() -> Tensor {
        let t = Tensor(shape: shape)
        t.data.update(from: data, count: count)
        return t
    }

    /// The elements as an array (for tests and reports).
    public func toArray() -> [Float] { Array(buffer) }

    /// Batch size: the first dimension.
    public var n: Int { shape[0] }
    /// Elements per sample: the product of all but the first dimension.
    public var sampleCount: Int { shape.count > 1 ? shape.dropFirst().reduce(1, *) : 1 }
}

extension Tensor: CustomStringConvertible {
    public var description: String {
        let head = toArray().prefix(8).map { String($0) }.joined(separator: ", ")
        return "Tensor(\(shape): [\(head)\(count > 8 ? ", ..." : "")])"
    }
}

/// Formats a shape as `1x28x28`.
public func formatShape(_ shape: [Int]) -> String { shape.map(String.init).joined(separator: "x") }
