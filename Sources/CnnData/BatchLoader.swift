// A prefetching batch loader: one producer thread assembles the batches of a
// fixed list of steps, in order, into a ring of reusable slots while the
// compute thread trains on the previous one.
//
// Ring. prefetchDepth + 1 slots: up to prefetchDepth filled and waiting, one
// held by the consumer. A slot handed out by next() stays valid until the
// following next() or close(), then goes back to the producer. After the
// first lap no tensor or array is allocated.
//
// Determinism. One producer, steps in order, and filling a slot is a pure
// function of the request and the epoch (of the shard stream's position, for
// shards): the batches are the same whatever the timing and the number of
// data threads the filler spreads a batch over.
//
// Errors. A filler that throws (an unreadable shard, a bad image with
// on_bad_image: error) stops the producer; next() then returns nil and
// `failure` holds the error, naming the file.
//
// Shutdown. close() (also run by deinit) sets a cancel flag, wakes the
// producer and joins its thread; it is safe when the consumer stops early,
// when the producer has finished, and when called twice.
import CnnCore
#if canImport(Glibc)
import Glibc
#else
import Darwin
#endif

/// One assembled batch, owned by the loader's ring (valid until the next `next()` or `close()`).
public final class LoadedBatch {
    /// Images, [n, C, H, W], normalised and augmented.
    public let images: Tensor
    /// Labels, n entries.
    public internal(set) var labels: [Int32] = []
    /// Dataset indices of the samples.
    public internal(set) var indices: [Int] = []
    /// Step number within the epoch.
    public internal(set) var step = 0
    /// Position of the first sample in the epoch order (see `EpochSampler`).
    public internal(set) var sampleOffset = 0
    /// Samples in the global batch across all ranks.
    public internal(set) var globalBatchSize = 0
    /// Samples in this batch (may be 0 on some ranks for a last partial batch).
    public var count: Int { labels.count }

    init(imageShape: [Int]) { images = Tensor(shape: [0] + imageShape) }
}

/// What a loader's producer thread calls to fill one slot, in step order.
public protocol BatchFilling: AnyObject {
    /// The [C, H, W] of the images it writes.
    var imageShape: [Int] { get }
    /// Fills the images, labels and indices of `batch` for `request` of `epoch`
    /// (the loader sets the step, offset and global batch size).
    func fill(_ batch: LoadedBatch, request: RankBatch, epoch: Int) throws
}

/// Fills slots from an in-memory dataset through a `BatchAssembler`, spreading
/// each batch over `threads` threads.
public final class AssemblerFilling: BatchFilling {
    public let assembler: BatchAssembler
    public let threads: Int
    public init(assembler: BatchAssembler, threads: Int = 1) {
        self.assembler = assembler
        self.threads = max(1, threads)
    }
    public var imageShape: [Int] { assembler.dataset.imageShape }
    public func fill(_ batch: LoadedBatch, request: RankBatch, epoch: Int) throws {
        assembler.assemble(indices: request.indices, epoch: epoch, images: batch.images, labels: &batch.labels, threads: threads)
        batch.indices.removeAll(keepingCapacity: true)
        batch.indices.append(contentsOf: request.indices)
    }
}

/// Assembles a fixed sequence of batches on a background thread, `prefetchDepth` ahead.
public final class BatchLoader {
    /// Number of batches the loader will produce.
    public let stepCount: Int
    /// Total seconds `next()` spent blocked waiting for the producer.
    public private(set) var waitSeconds: Double = 0
    /// Seconds the last `next()` spent blocked.
    public private(set) var lastWaitSeconds: Double = 0

    private let shared: LoaderShared
    private var thread: pthread_t?
    private var held: Int?
    private var delivered = 0

    /// A loader for the given rank batches of `epoch` (e.g. from `EpochSampler.rankBatches`).
    public convenience init(assembler: BatchAssembler, epoch: Int, batches: [RankBatch], prefetchDepth: Int = 2,
                            threads: Int = 1) {
        self.init(filling: AssemblerFilling(assembler: assembler, threads: threads), epoch: epoch, batches: batches,
                  prefetchDepth: prefetchDepth)
    }

    /// A loader whose producer fills each of `batches` through `filling`.
    public init(filling: BatchFilling, epoch: Int, batches: [RankBatch], prefetchDepth: Int = 2) {
        precondition(prefetchDepth >= 1, "prefetch depth must be at least 1")
        stepCount = batches.count
        let slots = (0...prefetchDepth).map { _ in LoadedBatch(imageShape: filling.imageShape) }
        shared = LoaderShared(filling: filling, epoch: epoch, batches: batches, slots: slots)
        guard !batches.isEmpty else { return }
        let context = Unmanaged.passRetained(shared).toOpaque()
        #if canImport(Glibc)
        var tid = pthread_t()
        #else
        var tid: pthread_t?
        #endif
        let status = pthread_create(&tid, nil, { raw in
            let shared = Unmanaged<LoaderShared>.fromOpaque(raw!).takeRetainedValue()
            shared.produce()
            return nil
        }, context)
        precondition(status == 0, "pthread_create failed (\(status))")
        thread = tid
    }

    /// A loader for plain index lists, one per step (step numbers 0, 1, …; sampleOffset counts samples).
    public convenience init(assembler: BatchAssembler, epoch: Int, indexLists: [[Int]], prefetchDepth: Int = 2,
                            threads: Int = 1) {
        var offset = 0
        var batches: [RankBatch] = []
        for (step, list) in indexLists.enumerated() {
            batches.append(RankBatch(step: step, indices: list, sampleOffset: offset, globalBatchSize: list.count))
            offset += list.count
        }
        self.init(assembler: assembler, epoch: epoch, batches: batches, prefetchDepth: prefetchDepth, threads: threads)
    }

    /// A loader for this rank's slices of every step of `sampler`'s epoch.
    public convenience init(assembler: BatchAssembler, sampler: EpochSampler, globalBatchSize: Int,
                            rank: Int, worldSize: Int, dropLast: Bool, prefetchDepth: Int = 2) {
        precondition(sampler.datasetCount == assembler.dataset.count,
                     "sampler for \(sampler.datasetCount) samples, dataset has \(assembler.dataset.count)")
        self.init(assembler: assembler, epoch: sampler.epoch,
                  batches: sampler.rankBatches(globalBatchSize: globalBatchSize, rank: rank,
                                               worldSize: worldSize, dropLast: dropLast),
                  prefetchDepth: prefetchDepth)
    }

    deinit { close() }

    /// The error that stopped the producer (the next batch could not be filled), if any.
    public var failure: Error? {
        shared.lock.lock()
        defer { shared.lock.unlock() }
        return shared.failure
    }

    /// The next batch in step order, or nil after the last one (or after `close()`,
    /// or when the producer failed: see `failure`).
    /// Returns the previous batch's slot to the producer first, so do not keep
    /// a batch (or a copy of its tensor's pointer) across calls. Call from one
    /// thread only (the compute thread); the time spent blocked here is added
    /// to `waitSeconds` and reported in `lastWaitSeconds`.
    public func next() -> LoadedBatch? {
        let s = shared
        s.lock.lock()
        if let slot = held {
            s.free.append(slot)
            held = nil
            s.lock.broadcast()
        }
        guard delivered < stepCount, !s.cancelled else {
            s.lock.unlock()
            return nil
        }
        let start = monotonicSeconds()
        while s.ready.isEmpty && !s.cancelled && s.failure == nil { s.lock.wait() }
        lastWaitSeconds = monotonicSeconds() - start
        waitSeconds += lastWaitSeconds
        guard !s.ready.isEmpty else {
            s.lock.unlock()
            return nil
        }
        let slot = s.ready.removeFirst()
        held = slot
        delivered += 1
        s.lock.unlock()
        return s.slots[slot]
    }

    /// Stops the producer and joins its thread. Idempotent; no batch may be used afterwards.
    public func close() {
        shared.lock.lock()
        shared.cancelled = true
        shared.lock.broadcast()
        shared.lock.unlock()
        if let tid = thread {
            pthread_join(tid, nil)
            thread = nil
        }
    }

    /// Seconds the producer thread spent assembling batches so far.
    public var assemblySeconds: Double {
        shared.lock.lock()
        defer { shared.lock.unlock() }
        return shared.assemblySeconds
    }
}

/// State shared by the consumer and the producer thread, guarded by `lock`.
final class LoaderShared {
    let filling: BatchFilling
    let epoch: Int
    let batches: [RankBatch]
    let slots: [LoadedBatch]
    let lock = ConditionLock()
    var free: [Int]
    var ready: [Int] = []
    var cancelled = false
    var assemblySeconds: Double = 0
    var failure: Error?

    init(filling: BatchFilling, epoch: Int, batches: [RankBatch], slots: [LoadedBatch]) {
        self.filling = filling
        self.epoch = epoch
        self.batches = batches
        self.slots = slots
        free = Array(slots.indices)
        ready.reserveCapacity(slots.count)
        free.reserveCapacity(slots.count)
    }

    /// The producer thread's body: fill free slots in step order until done or cancelled.
    func produce() {
        for request in batches {
            lock.lock()
            while free.isEmpty && !cancelled { lock.wait() }
            if cancelled {
                lock.unlock()
                return
            }
            let slot = free.removeFirst()
            lock.unlock()

            let start = monotonicSeconds()
            let batch = slots[slot]
            do {
                try filling.fill(batch, request: request, epoch: epoch)
            } catch {
                lock.lock()
                failure = error
                lock.broadcast()
                lock.unlock()
                return
            }
            batch.step = request.step
            batch.sampleOffset = request.sampleOffset
            batch.globalBatchSize = request.globalBatchSize
            let elapsed = monotonicSeconds() - start

            lock.lock()
            assemblySeconds += elapsed
            ready.append(slot)
            lock.broadcast()
            lock.unlock()
        }
    }
}

/// A pthread mutex with one condition variable.
final class ConditionLock {
    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private let condition = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)

    init() {
        pthread_mutex_init(mutex, nil)
        pthread_cond_init(condition, nil)
    }

    deinit {
        pthread_cond_destroy(condition)
        pthread_mutex_destroy(mutex)
        condition.deallocate()
        mutex.deallocate()
    }

    func lock() { pthread_mutex_lock(mutex) }
    func unlock() { pthread_mutex_unlock(mutex) }
    /// Waits for a broadcast; call with the lock held.
    func wait() { pthread_cond_wait(condition, mutex) }
    func broadcast() { pthread_cond_broadcast(condition) }
}

