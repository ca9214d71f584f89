import CnnCore

/// A world of one rank: every collective leaves its buffer as it is.
///
/// Used when the program runs without an MPI launcher, so plain
/// `cnn-dist train` works on a laptop without MPI being initialised.
public final class SingleProcessCommunicator: Communicator {
    /// Always 0.
    public let rank = 0
    /// Always 1.
    public let size = 1
    /// This machine's host name.
    public let processorName: String

    /// A one-rank world on this host.
    public init() { processorName = hostNameForReports() }

    /// The sum over one rank is the buffer itself.
    public func allreduceSum(_ buffer: UnsafeMutableBufferPointer<Float>) throws {}
    /// The sum over one rank is the buffer itself.
    public func allreduceSum(_ buffer: UnsafeMutableBufferPointer<Double>) throws {}
    /// Returns a request that has already completed.
    public func startAllreduceSum(_ buffer: UnsafeMutableBufferPointer<Float>) throws -> CollectiveRequest {
        CompletedRequest()
    }
    /// The sum over one rank is the buffer rounded to bf16, as with more ranks.
    public func startAllreduceSumBF16(_ buffer: UnsafeMutableBufferPointer<Float>) throws -> CollectiveRequest {
        for i in buffer.indices { buffer[i] = bf16Rounded(buffer[i]) }
        return CompletedRequest()
    }
    /// Checks `root` is 0; the buffer is already the sum.
    public func reduceSum(_ buffer: UnsafeMutableBufferPointer<Float>, root: Int) throws {
        try checkRoot(root, size: 1, rank: 0, call: "reduceSum")
    }
    /// Checks `root` is 0; the buffer is already the sum.
    public func reduceSum(_ buffer: UnsafeMutableBufferPointer<Double>, root: Int) throws {
        try checkRoot(root, size: 1, rank: 0, call: "reduceSum")
    }
    /// Checks `root` is 0; there is no one to send to.
    public func broadcast(_ bytes: UnsafeMutableRawBufferPointer, root: Int) throws {
        try checkRoot(root, size: 1, rank: 0, call: "broadcast")
    }
    /// Returns at once.
    public func barrier() throws {}
    /// `[value]`.
    public func allgather(_ value: Int64) throws -> [Int64] { [value] }
    /// Copies `bytes` into `gathered`.
    public func allgather(_ bytes: UnsafeRawBufferPointer, into gathered: UnsafeMutableRawBufferPointer) throws {
        try checkAllgatherBuffers(bytes, gathered, size: 1, rank: 0, call: "allgather")
        if let src = bytes.baseAddress, let dst = gathered.baseAddress { dst.copyMemory(from: src, byteCount: bytes.count) }
    }
    /// `value`.
    public func allreduceMax(_ value: Double) throws -> Double { value }
    /// `value`.
    public func allreduceMin(_ value: Double) throws -> Double { value }
}

/// A request that completed when it was started.
final class CompletedRequest: CollectiveRequest {
    func wait() throws {}
    func test() throws -> Bool { true }
}
