import CnnCore

/// Sums small statistics vectors over all ranks for layers that cannot throw
/// (SyncBatchNorm's `StatisticsReducer`).
///
/// Its `allreduceSum(_:)` has the shape of CnnLayers' `StatisticsReducer`, so
/// the adapter is one line in a module that sees both:
///
///     extension StatisticsAllreducer: StatisticsReducer {}
///
/// A layer's forward cannot throw, so a communication failure is recorded:
/// the first error is kept in `failure`, later calls do nothing (the buffers
/// keep their local values), and the training loop calls `checkFailure()`
/// after each step to turn it into a thrown error.
public final class StatisticsAllreducer {
    /// The communicator the sums go through.
    public let communicator: Communicator
    /// The first error any call met, or nil.
    public private(set) var failure: Error?

    /// A reducer over `communicator`'s ranks.
    public init(communicator: Communicator) { self.communicator = communicator }

    /// Element-wise sum of `values` over all ranks, in place; records a failure instead of throwing.
    public func allreduceSum(_ values: UnsafeMutableBufferPointer<Float>) {
        guard failure == nil else { return }
        do { try communicator.allreduceSum(values) } catch { failure = error }
    }

    /// Throws the first recorded failure, if any.
    public func checkFailure() throws {
        if let failure { throw failure }
    }
}
