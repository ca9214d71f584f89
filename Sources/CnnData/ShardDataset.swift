// `dataset: shards`: WebDataset-style tar shards (see TarShards.swift) streamed
// from disk, decoded on the fly, never held whole in memory.
//
// Layout. DIR/manifest.tsv (written by `cnn-dist pack`) names the classes, each
// shard of the train and val splits with its sample count, and the training
// images' channel statistics; DIR/train-NNNNNN.tar and DIR/val-NNNNNN.tar hold
// KEY.jpg|png + KEY.cls members.
//
// Which rank reads what. Rank r of R reads train shards r, r+R, r+2R, ... (of the
// manifest's order) in every epoch, and val shards the same way; it never opens
// another rank's shards, and it knows every rank's sample count from the manifest
// alone, so no communication is needed to agree on the epoch length.
//
// Equal steps on every rank. Rank r's share of a global batch of B is
// b_r = evenShare(B, r, R) samples (as for in-memory data). The epoch has
//     steps = min over ranks r of floor(n_r / b_r)
// global batches, n_r being the samples of rank r's shards; every rank computes
// the same number from the manifest. Rank r trains on the first steps·b_r samples
// of its epoch stream and drops the rest of that epoch (a different rest each
// epoch, since the stream is reshuffled). `trainPlan` refuses fewer train shards
// than ranks, and the opening line of a run says how many samples an epoch drops.
//
// Ordering guarantee. Rank r's epoch stream is: its shards in an order shuffled
// by (seed, epoch, r), read sequentially, passed through a shuffle buffer of
// `shuffleBuffer` samples (emit a uniformly chosen buffered sample, refill its
// place with the next one read; drain in random order at the end) driven by the
// same key. So the order is a deterministic function of (seed, epoch, rank count,
// rank), the same on every run, not of timing or of data_threads; it is not the
// global permutation of in-memory datasets, and the batch composition depends on
// the rank count (each rank draws from its own shards), as with WebDataset.
// Within a shard, samples further apart than the buffer keep their relative
// order, which is why `pack` shuffles the samples before writing them.
//
// Per-sample randomness. A sample's global index is its position in the manifest's
// order (the samples of the shards before it, plus its position in its shard),
// whatever rank reads it: augmentation keyed by (seed, epoch, global index) is the
// same for a sample on 1 or on 4 ranks and with any number of data threads.
//
// Transform. Training: with augment.random_resized_crop, torchvision's
// RandomResizedCrop on the stored image (the box drawn on the full size, a JPEG
// decoded at the smallest DCT scale keeping the box at least the input size);
// otherwise the evaluation transform (shorter side resized, centre crop). Then the
// other augmentations, as for in-memory data. Evaluation: the evaluation transform.
//
// Memory. A rank holds its shuffle buffer of encoded samples, plus the prefetched
// batches of decoded images (prefetch depth + 1 slots of B/R images): bounded by
// configuration, never by the dataset size.
//
// Bad images. on_bad_image: error stops with the decoder's error, naming the shard
// and the member ("DIR/train-000003.tar:000001234.jpg: ..."). skip replaces an
// unreadable training sample by the nearest readable sample before it in the same
// rank batch (else the nearest after it): the batch keeps its size, so every rank
// still runs the same steps with the same batch sizes, and the replacement depends
// only on the batch's contents. Evaluation leaves a skipped sample out. Skips are
// counted, summed over the ranks and reported at the end of the epoch.
import CnnCore
#if canImport(Glibc)
import Glibc
#else
import Darwin
#endif

/// What to do with an image that cannot be decoded.
public enum BadImageAction: String, ConfigChoice {
    /// Stop with an error naming the file (or the shard and member).
    case error
    /// Skip it, count it, and report the count at the end of the epoch (see ShardDataset.swift).
    case skip
}

/// A folder of shards with its manifest, as one rank uses it.
public struct ShardSet: Sendable {
    /// The folder holding manifest.tsv and the shards.
    public let directory: String
    public let manifest: ShardManifest
    /// [C, H, W] of the images as the model takes them.
    public let imageShape: [Int]

    /// Reads DIR/manifest.tsv; the images will be brought to `shape` (C is 1 or 3).
    public init(directory: String, shape: [Int]) throws {
        precondition(shape.count == 3, "shape is C x H x W")
        let base = directory.hasSuffix("/") ? String(directory.dropLast()) : directory
        let path = "\(base)/\(ShardManifest.fileName)"
        guard FileBytes.exists(path) else {
            throw CnnError.invalidConfig(field: "data", value: directory, allowed:
                "a shard folder holding \(ShardManifest.fileName) (write one with: cnn-dist pack IMAGE_FOLDER OUT)")
        }
        guard shape[0] == 1 || shape[0] == 3 else {
            throw CnnError.invalidConfig(field: "input", value: formatShape(shape), allowed: "1 or 3 channels for image shards")
        }
        manifest = try ShardManifest.read(path)
        self.directory = base
        imageShape = shape
        for split in ["train", "val"] {
            guard let shards = manifest.splits[split], shards.contains(where: { $0.samples > 0 }) else {
                throw CnnError.invalidData(file: path, reason: "no \(split) shard with samples (expected '\(split)-NNNNNN.tar' records)")
            }
        }
        guard manifest.statistics[shape[0]] != nil else {
            throw CnnError.invalidData(file: path, reason:
                "no 'statistics \(shape[0])' record (the training images' normalisation); repack with cnn-dist pack")
        }
    }

    public var classNames: [String] { manifest.classes }
    /// Classes of the model (at least 2).
    public var classCount: Int { max(2, manifest.classes.count) }
    /// The training images' normalisation for the configured channel count.
    public var statistics: ChannelStatistics { manifest.statistics[imageShape[0]]! }

    static func splitName(_ split: DatasetSplit) -> String { split == .train ? "train" : "val" }

    /// The shards of a split, in the manifest's order.
    public func shards(_ split: DatasetSplit) -> [ShardInfo] { manifest.splits[Self.splitName(split)] ?? [] }

    /// Samples in a split.
    public func count(_ split: DatasetSplit) -> Int { shards(split).reduce(0) { $0 + $1.samples } }

    /// The global index of each shard's first sample (manifest order).
    public func starts(_ split: DatasetSplit) -> [Int] {
        var start = 0
        return shards(split).map { info in
            defer { start += info.samples }
            return start
        }
    }

    /// The indices (into `shards(split)`) of rank `rank`'s shards.
    public func rankShards(_ split: DatasetSplit, rank: Int, worldSize: Int) -> [Int] {
        ShardAssignment.shards(Array(shards(split).indices), rank: rank, worldSize: worldSize)
    }

    /// Samples in rank `rank`'s shards of `split`.
    public func rankCount(_ split: DatasetSplit, rank: Int, worldSize: Int) -> Int {
        let all = shards(split)
        return rankShards(split, rank: rank, worldSize: worldSize).reduce(0) { $0 + all[$1].samples }
    }

    /// Global batches per epoch (the same on every rank; see the file comment).
    /// Throws when a rank would get no shard or no full share of one batch.
    public func stepsPerEpoch(globalBatchSize: Int, worldSize: Int) throws -> Int {
        let trainShards = shards(.train).count
        guard trainShards >= worldSize else {
            throw CnnError.invalidConfig(field: "data", value: directory, allowed:
                "at least one train shard per rank: \(trainShards) shard(s) for \(worldSize) ranks "
                + "(repack with a smaller --shard-size)")
        }
        var steps = Int.max
        for r in 0..<worldSize {
            let share = evenShare(count: globalBatchSize, rank: r, size: worldSize).count
            steps = min(steps, rankCount(.train, rank: r, worldSize: worldSize) / max(1, share))
        }
        guard steps > 0 else {
            throw CnnError.invalidConfig(field: "batch_size", value: String(globalBatchSize), allowed:
                "a global batch whose share fits every rank's shards (the smallest rank's shards hold "
                + "\((0..<worldSize).map { rankCount(.train, rank: $0, worldSize: worldSize) }.min()!) samples)")
        }
        return steps
    }

    /// A whole split decoded into memory with the evaluation transform (for eval and
    /// doctor; training streams instead).
    public func loadInMemory(_ split: DatasetSplit, threads: Int = 1) throws -> ImageDataset {
        let reader = ShardEvaluationReader(set: self, rank: 0, worldSize: 1, split: split, threads: threads, onBadImage: .error)
        var pixels = [UInt8](), labels = [Int32]()
        while let (p, l) = try reader.next(256) {
            pixels += p
            labels += l
        }
        var dataset = ImageDataset(name: "shards \(Self.splitName(split))", source: directory, pixels: pixels, labels: labels,
                                   channels: imageShape[0], height: imageShape[1], width: imageShape[2], classCount: classCount)
        dataset.classNames = classNames
        return dataset
    }

    /// Path of a shard.
    func path(_ info: ShardInfo) -> String { "\(directory)/\(info.file)" }
}

/// One encoded sample read from a shard, with its global index.
public struct StreamedSample: Sendable {
    public var bytes: [UInt8]
    public var label: Int
    /// Position in the manifest's order of the split (the key of its augmentation).
    public var globalIndex: Int
    /// "<shard path>:<member>", naming it in errors.
    public var source: String
}

/// Reads a list of shards in order, sample by sample, checking each shard's
/// sample count against the manifest and each label against the classes.
final class ShardSequence {
    private let set: ShardSet
    private let split: DatasetSplit
    private let order: [Int]
    private let starts: [Int]
    private var position = 0
    private var reader: ShardSampleReader?
    private var inShard = 0

    init(set: ShardSet, split: DatasetSplit, order: [Int]) {
        self.set = set
        self.split = split
        self.order = order
        starts = set.starts(split)
    }

    func next() throws -> StreamedSample? {
        let shards = set.shards(split)
        while position < order.count {
            let info = shards[order[position]]
            if reader == nil {
                reader = try ShardSampleReader(path: set.path(info))
                inShard = 0
            }
            if let sample = try reader!.next() {
                guard inShard < info.samples else {
                    throw CnnError.invalidData(file: set.path(info), reason:
                        "holds more than the \(info.samples) samples its manifest record says")
                }
                guard sample.label < set.manifest.classes.count else {
                    throw CnnError.invalidData(file: sample.source, reason:
                        "class \(sample.label) but the manifest lists \(set.manifest.classes.count) classes")
                }
                defer { inShard += 1 }
                return StreamedSample(bytes: sample.image, label: sample.label,
                                      globalIndex: starts[order[position]] + inShard, source: sample.source)
            }
            guard inShard == info.samples else {
                throw CnnError.invalidData(file: set.path(info), reason:
                    "holds \(inShard) samples but its manifest record says \(info.samples)")
            }
            reader = nil
            position += 1
        }
        return nil
    }
}

/// Rank `rank`'s training samples of one epoch in the order of the file comment:
/// its shards shuffled by (seed, epoch, rank), then a shuffle buffer.
public final class ShardTrainingStream {
    private let sequence: ShardSequence
    private var rng: SplitMix64
    private var buffer: [StreamedSample] = []
    private let capacity: Int
    private var exhausted = false

    public init(set: ShardSet, rank: Int, worldSize: Int, seed: UInt64, epoch: Int, shuffleBuffer: Int) {
        precondition(shuffleBuffer >= 1, "shuffle buffer of at least 1 sample")
        rng = SplitMix64(seed: counterHash(counterHash(seed ^ 0x5EA4_D000_0000_0007, UInt64(truncatingIfNeeded: epoch)),
                                           UInt64(truncatingIfNeeded: rank)))
        var order = set.rankShards(.train, rank: rank, worldSize: worldSize)
        for i in stride(from: order.count - 1, to: 0, by: -1) { order.swapAt(i, Int(uniformBelow(UInt64(i + 1), &rng))) }
        sequence = ShardSequence(set: set, split: .train, order: order)
        capacity = shuffleBuffer
        buffer.reserveCapacity(shuffleBuffer)
    }

    /// The next sample of the epoch stream, or nil when the rank's shards are done.
    public func next() throws -> StreamedSample? {
        while !exhausted && buffer.count < capacity {
            guard let sample = try sequence.next() else {
                exhausted = true
                break
            }
            buffer.append(sample)
        }
        guard !buffer.isEmpty else { return nil }
        let j = Int(uniformBelow(UInt64(buffer.count), &rng))
        buffer.swapAt(j, buffer.count - 1)
        return buffer.removeLast()
    }
}

/// Decodes encoded samples into C×H×W bytes on a pool of threads, one decoder each.
final class SampleDecoders {
    let shape: [Int]
    let threads: Int
    private let decoders: [ImageDecoder]

    init(shape: [Int], threads: Int) {
        self.shape = shape
        self.threads = max(1, threads)
        decoders = (0..<self.threads).map { _ in ImageDecoder() }
    }

    /// The images of `samples` as CHW bytes, or the error that refused each: a random
    /// resized crop of area range `cropScale` keyed by (seed, epoch, global index), else
    /// the evaluation transform. Each from its own bytes and key, so the result does
    /// not depend on `threads`.
    func decode(_ samples: [StreamedSample], cropScale: [Double]?, seed: UInt64, epoch: Int) -> [Result<[UInt8], Error>] {
        var results = [Result<[UInt8], Error>](repeating: .success([]), count: samples.count)
        let (c, h, w) = (shape[0], shape[1], shape[2])
        let workers = max(1, min(threads, samples.count))
        results.withUnsafeMutableBufferPointer { out in
            let base = out.baseAddress!
            SampleWriter.forEach(workers, threads: workers) { worker in
                let decoder = decoders[worker]
                for j in stride(from: worker, to: samples.count, by: workers) {
                    let sample = samples[j]
                    let result: Result<[UInt8], Error> = Result {
                        if let scale = cropScale {
                            var rng = sampleGenerator(seed: seed, epoch: epoch, sampleIndex: sample.globalIndex, stream: 0x5C0B)
                            return try decoder.decodeRandomResizedCrop(sample.bytes, file: sample.source, channels: c,
                                                                       outHeight: h, outWidth: w, scale: (scale[0], scale[1]),
                                                                       rng: &rng).chw()
                        }
                        return try decoder.decodeInput(sample.bytes, file: sample.source, shape: shape)
                    }
                    base[j] = result
                }
            }
        }
        return results
    }
}

/// Fills training batches from a rank's shard stream (see the file comment):
/// reads b samples sequentially, decodes and augments them on `threads` threads.
public final class ShardBatchFilling: BatchFilling {
    public let imageShape: [Int]
    private let directory: String
    private let stream: ShardTrainingStream
    private let decoders: SampleDecoders
    private let writer: SampleWriter
    private let cropScale: [Double]?
    private let onBadImage: BadImageAction
    private let lock = ConditionLock()
    private var skippedCount = 0
    private var firstSkip: String?

    /// - augmentation: as for in-memory data; its random resized crop is taken on the stored image.
    /// - skipSamples: samples of the stream to pass over first (resuming inside an epoch).
    public init(set: ShardSet, rank: Int, worldSize: Int, statistics: ChannelStatistics, augmentation: Augmentation,
                seed: UInt64, epoch: Int, shuffleBuffer: Int, threads: Int, onBadImage: BadImageAction,
                skipSamples: Int = 0) throws {
        imageShape = set.imageShape
        directory = set.directory
        stream = ShardTrainingStream(set: set, rank: rank, worldSize: worldSize, seed: seed, epoch: epoch,
                                     shuffleBuffer: shuffleBuffer)
        for _ in 0..<skipSamples { _ = try stream.next() }
        decoders = SampleDecoders(shape: set.imageShape, threads: threads)
        cropScale = augmentation.photometric.resizedCropScale
        var rest = augmentation
        rest.photometric.resizedCropScale = nil
        writer = SampleWriter(shape: set.imageShape, statistics: statistics, augmentation: rest, seed: seed)
        self.onBadImage = onBadImage
    }

    /// Training samples skipped so far, and the first one's error.
    public var skipped: (count: Int, first: String?) {
        lock.lock()
        defer { lock.unlock() }
        return (skippedCount, firstSkip)
    }

    public func fill(_ batch: LoadedBatch, request: RankBatch, epoch: Int) throws {
        let n = request.indices.count
        var samples = [StreamedSample]()
        samples.reserveCapacity(n)
        for _ in 0..<n {
            guard let sample = try stream.next() else {
                throw CnnError.invalidData(file: directory, reason: "this rank's shards ran out at step \(request.step) "
                                           + "(fewer samples than the manifest records)")
            }
            samples.append(sample)
        }
        let decoded = decoders.decode(samples, cropScale: cropScale, seed: writer.seed, epoch: epoch)
        var images = [[UInt8]](repeating: [], count: n)
        var chosen = [Int](repeating: -1, count: n)
        for j in 0..<n {
            if case .success(let bytes) = decoded[j] {
                images[j] = bytes
                chosen[j] = j
            }
        }
        for j in 0..<n where chosen[j] < 0 {
            guard case .failure(let error) = decoded[j] else { continue }
            if onBadImage == .error { throw error }
            let before = (0..<j).reversed().first { chosen[$0] == $0 }
            guard let replacement = before ?? (j + 1..<n).first(where: { chosen[$0] == $0 }) else {
                throw CnnError.invalidData(file: samples[j].source, reason:
                    "every sample of this rank's batch at step \(request.step) is unreadable (on_bad_image: skip); first: \(error)")
            }
            chosen[j] = replacement
            lock.lock()
            skippedCount += 1
            if firstSkip == nil { firstSkip = "\(error)" }
            lock.unlock()
        }
        let size = writer.imageSize
        batch.images.resize(to: [n] + imageShape)
        batch.labels.removeAll(keepingCapacity: true)
        batch.indices.removeAll(keepingCapacity: true)
        for j in 0..<n {
            batch.labels.append(Int32(samples[chosen[j]].label))
            batch.indices.append(samples[chosen[j]].globalIndex)
        }
        let out = batch.images.data
        let indices = batch.indices
        SampleWriter.forEach(n, threads: decoders.threads) { j in
            images[chosen[j]].withUnsafeBufferPointer { src in
                writer.write(src.baseAddress!, sampleIndex: indices[j], epoch: epoch, to: out + j * size)
            }
        }
    }
}

/// Reads a rank's validation shards in order, in batches decoded with the
/// evaluation transform on a pool of threads. Every val sample is read by
/// exactly one rank; with on_bad_image: skip an unreadable one is left out and counted.
public final class ShardEvaluationReader {
    private let sequence: ShardSequence
    private let decoders: SampleDecoders
    private let onBadImage: BadImageAction
    public private(set) var skipped = 0
    public private(set) var firstSkip: String?

    public init(set: ShardSet, rank: Int, worldSize: Int, split: DatasetSplit = .test, threads: Int,
                onBadImage: BadImageAction) {
        sequence = ShardSequence(set: set, split: split, order: set.rankShards(split, rank: rank, worldSize: worldSize))
        decoders = SampleDecoders(shape: set.imageShape, threads: threads)
        self.onBadImage = onBadImage
    }

    /// The next up to `count` images (CHW bytes back to back) and labels; nil at the end.
    public func next(_ count: Int) throws -> (pixels: [UInt8], labels: [Int32])? {
        var samples = [StreamedSample]()
        while samples.count < count, let sample = try sequence.next() { samples.append(sample) }
        guard !samples.isEmpty else { return nil }
        var pixels = [UInt8](), labels = [Int32]()
        for (sample, result) in zip(samples, decoders.decode(samples, cropScale: nil, seed: 0, epoch: 0)) {
            switch result {
            case .success(let bytes):
                pixels += bytes
                labels.append(Int32(sample.label))
            case .failure(let error):
                if onBadImage == .error { throw error }
                skipped += 1
                if firstSkip == nil { firstSkip = "\(error)" }
            }
        }
        return (pixels, labels)
    }
}

extension ImageDecoder {
    /// An encoded image as a model input of `shape` (C, H, W), CHW bytes (see `decodeInput(_:shape:)`).
    public func decodeInput(_ bytes: [UInt8], file: String, shape: [Int]) throws -> [UInt8] {
        let (channels, height, width) = (shape[0], shape[1], shape[2])
        let image = try decode(bytes, file: file, channels: channels, atLeast: (height, width))
        return ImageTransforms.resizeShorterSideThenCenterCrop(image, shorter: max(height, width),
                                                               cropHeight: height, cropWidth: width).chw()
    }
}
