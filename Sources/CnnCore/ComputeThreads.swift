// Threads inside one rank: the process-wide setting and the fork-join helper
// the GEMM and convolution kernels split their work with.
//
// Work is always split by task index, never by which thread picks a task up,
// and every task writes its own output range (or its own partial sum, reduced
// in task order afterwards), so results do not depend on timing.

import Dispatch
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Threads the compute kernels (GEMM, convolution) may use inside this rank.
///
/// Default 1 (single-threaded kernels). With `count > 1`, `sgemm` splits large
/// products over column (or row) ranges of C, and the convolution passes split
/// the batch into `count` contiguous image ranges, each with its own im2col
/// panel (and, for backward-weights, its own partial dW, summed in range order).
/// Kernels called from inside such a split run single-threaded. The threads
/// are Dispatch's persistent worker pool (`concurrentPerform`), so a split
/// costs a wake-up, not a thread creation.
public enum ComputeThreads {
    nonisolated(unsafe) private static var stored = 1

    /// Threads the kernels may use; at least 1. Set it once at start-up
    /// (e.g. from `--threads`), not while kernels run.
    public static var count: Int {
        get { stored }
        set {
            precondition(newValue >= 1, "ComputeThreads.count must be at least 1, got \(newValue)")
            stored = newValue
        }
    }
}

/// Threads a kernel called from this thread may use: `ComputeThreads.count`,
/// or 1 inside a `parallelTasks` split (no nested splitting).
@inline(__always)
func availableComputeThreads() -> Int {
    let n = ComputeThreads.count
    if n == 1 { return 1 }
    return pthread_getspecific(parallelRegionKey) == nil ? n : 1
}

/// Runs `body(0)`, …, `body(tasks − 1)` concurrently and returns when all have
/// finished. The calling thread takes part. Inside `body`,
/// `availableComputeThreads()` is 1.
func parallelTasks(_ tasks: Int, _ body: (Int) -> Void) {
    if tasks <= 0 { return }
    DispatchQueue.concurrentPerform(iterations: tasks) { t in
        let outer = pthread_getspecific(parallelRegionKey)
        pthread_setspecific(parallelRegionKey, parallelRegionMarker)
        body(t)
        pthread_setspecific(parallelRegionKey, outer)
    }
}

/// Runs `body` over contiguous ranges of `items` independent items (planes, channels, elements):
/// one range, or one per compute thread when there are several and the items hold enough work
/// (`work` element visits each, `minimum` in all) to pay for waking them. Each item is handled
/// whole by one range, in the order the single range would use, so the split does not change
/// any result.
@inline(__always)
public func forEachRange(_ items: Int, work: Int, minimum: Int = 1 << 16, _ body: (Range<Int>) -> Void) {
    let tasks = min(availableComputeThreads(), items)
    if tasks > 1 && items * work >= minimum {
        parallelTasks(tasks) { t in body(taskRange(t, of: items, tasks: tasks)) }
    } else {
        body(0..<items)
    }
}

/// Streaming kernels (BatchNorm, ReLU, sums) split only from this many elements: below it the
/// second thread's wake-up and cold cache cost more than it saves (measured on resnet20 and
/// fashion-cnn at batch 64; densenet121 at 224 gains).
public let streamingSplitMinimum = 1 << 21

/// Range `t` of `count` items split into `tasks` contiguous ranges whose
/// lengths differ by at most one (earlier ranges take the remainder).
@inline(__always)
func taskRange(_ t: Int, of count: Int, tasks: Int) -> Range<Int> {
    let q = count / tasks, r = count % tasks
    let lo = t * q + min(t, r)
    return lo ..< lo + q + (t < r ? 1 : 0)
}

/// Non-nil value of `parallelRegionKey` while a thread runs a task.
private let parallelRegionMarker = UnsafeMutableRawPointer(bitPattern: 1)!

/// Thread-specific flag: set while the thread runs a `parallelTasks` body.
private let parallelRegionKey: pthread_key_t = {
    var key = pthread_key_t()
    let rc = pthread_key_create(&key, nil)
    precondition(rc == 0, "ComputeThreads: pthread_key_create failed (\(rc))")
    return key
}()
