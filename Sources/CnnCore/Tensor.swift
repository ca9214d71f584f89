// Dimension letters used across the project:
//   N batch, C channels, H height, W width, K output channels (convolution);
//   inside GEMM: M rows of C, N columns of C, K the reduction length.

/// A contiguous, 64-byte aligned Float32 tensor in NCHW order, or a view of a channel
/// prefix of another tensor (`viewChannelPrefix(of:channels:)`), whose images are
/// `imageStride` elements apart.
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

    /// Elements from one image (step of dimension 0) to the next: `sampleCount`, except for a
    /// channel-prefix view, whose images lie inside the wider images of its base. Only layers
    /// that read `imageStride` may be handed a view (a `MemoryPlan` sees to that).
    public var imageStride: Int { viewStride ?? sampleCount }
    /// Whether the elements are `count` consecutive floats from `data` (not a view of a prefix).
    public var isContiguous: Bool { viewStride == nil || viewStride == sampleCount }
    /// The tensor whose storage a view reads (kept alive by the view), and its image stride.
    private var viewBase: Tensor?
    private var viewStride: Int?

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

    deinit { if viewBase == nil { UnsafeMutableRawPointer(data).deallocate() } }

    /// Makes this tensor a view of channels 0..<`channels` of `base` (a contiguous tensor of
    /// rank >= 2): same storage, shape `base.shape` with dimension 1 = `channels`, and
    /// `imageStride` = `base.sampleCount`. Its own storage, if any, is released. Call again
    /// after `base` is resized. A view cannot be resized.
    public func viewChannelPrefix(of base: Tensor, channels: Int) {
        precondition(base.viewBase == nil && base !== self, "a view's base must own its storage")
        precondition(base.shape.count >= 2 && channels >= 0 && channels <= base.shape[1],
                     "cannot view \(channels) channels of \(base.shape)")
        if viewBase == nil { UnsafeMutableRawPointer(data).deallocate() }
        viewBase = base
        data = base.data
        var s = base.shape
        s[1] = channels
        shape = s
        count = s.reduce(1, *)
        capacity = count
        viewStride = base.sampleCount
    }

    private static func allocate(_ elements: Int) -> UnsafeMutablePointer<Float> {
        UnsafeMutableRawPointer.allocate(byteCount: elements * MemoryLayout<Float>.stride, alignment: alignment)
            .bindMemory(to: Float.self, capacity: elements)
    }

    /// Gives the tensor a new shape, growing the allocation only if needed.
    /// Contents are unspecified afterwards unless the count is unchanged.
    public func resize(to newShape: [Int]) {
        precondition(newShape.allSatisfy { $0 >= 0 }, "negative tensor dimension in \(newShape)")
        let newCount = newShape.reduce(1, *)
        precondition(viewBase == nil || newShape == shape, "cannot resize a view of a tensor")
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
        precondition(viewBase == nil, "cannot reshape a view of a tensor")
        precondition(newShape.reduce(1, *) == count, "cannot reshape \(shape) to \(newShape)")
        shape = newShape
    }

    /// The elements as a buffer (of a contiguous tensor: a view's elements are not consecutive).
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
        other.gather(into: data)
    }

    /// A new tensor with the same shape and contents (contiguous, also for a view).
    public func clone() -> Tensor {
        let t = Tensor(shape: shape)
        gather(into: t.data)
        return t
    }

    /// The elements as an array (for tests and reports; a view's in logical order).
    public func toArray() -> [Float] {
        if isContiguous { return Array(buffer) }
        return [Float](unsafeUninitializedCapacity: count) { out, initialized in
            gather(into: out.baseAddress!)
            initialized = count
        }
    }

    /// Writes the `count` elements in logical (NCHW) order to `destination`.
    private func gather(into destination: UnsafeMutablePointer<Float>) {
        guard !isContiguous, count > 0 else { destination.update(from: data, count: count); return }
        let n = shape[0], per = sampleCount, stride = imageStride
        for i in 0..<n { (destination + i * per).update(from: data + i * stride, count: per) }
    }

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
