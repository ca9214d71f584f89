import CnnCore
import CnnLayers
import CnnDistributed

/// Splits the flat gradient buffer into buckets of whole layers and starts a
/// non-blocking allreduce of each as soon as backward has finished every layer
/// in it, so communication overlaps the rest of backward (PyTorch DDP's
/// "gradient bucketing", Li et al., VLDB 2020).
///
/// Backward visits layers roughly from the last parameter to the first, so
/// buckets are cut from the end of the buffer backwards.
final class GradientBucketer {
    struct Bucket {
        var range: Range<Int>
        var layers: Set<ObjectIdentifier>
    }

    private let communicator: Communicator
    private let gradients: Tensor
    private(set) var buckets: [Bucket] = []
    private var bucketOfLayer: [ObjectIdentifier: Int] = [:]
    private var remaining: [Int] = []
    private var requests: [CollectiveRequest?] = []
    private var firstError: Error?
    /// When false, nothing starts during backward: everything is reduced at `finish`.
    let overlap: Bool
    /// What the allreduce sends: bf16 halves the bytes (see `Communicator.startAllreduceSumBF16`).
    let dtype: AllreduceDType

    init(store: ParameterStore, communicator: Communicator, bucketElements: Int, overlap: Bool,
         dtype: AllreduceDType = .fp32) {
        self.communicator = communicator
        self.gradients = store.gradients
        self.overlap = overlap
        self.dtype = dtype
        // Layers sorted by offset, grouped from the end into buckets of at least bucketElements.
        let layers = store.layerRanges.sorted { $0.value.lowerBound > $1.value.lowerBound }
        var current: Bucket? = nil
        for (id, range) in layers {
            if var b = current {
                b.range = range.lowerBound ..< b.range.upperBound
                b.layers.insert(id)
                current = b
            } else {
                current = Bucket(range: range, layers: [id])
            }
            if current!.range.count >= bucketElements {
                buckets.append(current!)
                current = nil
            }
        }
        if let b = current { buckets.append(b) }
        for (i, b) in buckets.enumerated() { for id in b.layers { bucketOfLayer[id] = i } }
        remaining = buckets.map { $0.layers.count }
        requests = Array(repeating: nil, count: buckets.count)
    }

    /// Resets per-step state; call before backward.
    func beginStep() {
        remaining = buckets.map { $0.layers.count }
        for i in requests.indices { requests[i] = nil }
        firstError = nil
    }

    /// The hook for `ExecutionContext.gradientsReady`.
    func layerReady(_ layer: Layer) {
        guard overlap, let index = bucketOfLayer[ObjectIdentifier(layer)], remaining[index] > 0 else { return }
        remaining[index] -= 1
        if remaining[index] == 0 { start(index) }
    }

    private func start(_ index: Int) {
        guard requests[index] == nil, firstError == nil else { return }
        let range = buckets[index].range
        do {
            let bucket = UnsafeMutableBufferPointer(start: gradients.data + range.lowerBound, count: range.count)
            switch dtype {
            case .fp32: requests[index] = try communicator.startAllreduceSum(bucket)
            case .bf16: requests[index] = try communicator.startAllreduceSumBF16(bucket)
            }
        } catch { firstError = error }
    }

    /// Starts whatever has not started and waits for all; returns the seconds spent waiting.
    func finish() throws -> Double {
        let t0 = monotonicSeconds()
        for i in buckets.indices where requests[i] == nil { start(i) }
        if let firstError { throw firstError }
        for request in requests { try request?.wait() }
        return monotonicSeconds() - t0
    }
}

