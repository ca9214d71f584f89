// Batch assembly: gathers the images of a list of dataset indices into an
// NCHW Float32 tensor, normalising through a 256-entry table per channel and
// applying the sample's augmentation on the fly. Output depends only on
// (dataset, statistics, augmentation, seed, epoch, indices), not on the
// number of threads that assemble it: each sample is written by one thread
// from its own bytes and its own (seed, epoch, index) randomness.
import CnnCore
import Dispatch

/// Normalises and augments one C×H×W byte image into floats. Shared by the
/// in-memory assembler and the shard loader, so both apply the same transform.
public struct SampleWriter: Sendable {
    public let channels: Int
    public let height: Int
    public let width: Int
    /// Normalisation, normally computed on the training split.
    public let statistics: ChannelStatistics
    /// Augmentation applied to every sample (use `.none` for evaluation).
    public let augmentation: Augmentation
    /// Seed of the augmentation stream.
    public let seed: UInt64
    /// table[c * 256 + p]: normalised value of pixel p in channel c.
    let table: [Float]

    /// A writer for images of `shape` (C, H, W); `statistics` must have C channels.
    public init(shape: [Int], statistics: ChannelStatistics, augmentation: Augmentation = .none, seed: UInt64 = 0) {
        precondition(shape.count == 3 && statistics.channels == shape[0],
                     "statistics for \(statistics.channels) channels, images are \(shape)")
        (channels, height, width) = (shape[0], shape[1], shape[2])
        self.statistics = statistics
        self.augmentation = augmentation
        self.seed = seed
        table = statistics.lookupTable()
    }

    /// Bytes (and floats) per image.
    public var imageSize: Int { channels * height * width }

    /// Writes image `src` (CHW bytes) to `dst` (CHW floats), augmented with the
    /// parameters of (seed, epoch, sampleIndex) and normalised.
    public func write(_ src: UnsafePointer<UInt8>, sampleIndex index: Int, epoch: Int, to dst: UnsafeMutablePointer<Float>) {
        let c = channels, h = height, w = width
        let plane = h * w
        table.withUnsafeBufferPointer { lut in
            if augmentation.isIdentity {
                for ch in 0..<c {
                    let t = lut.baseAddress! + ch * 256
                    let s = src + ch * plane, d = dst + ch * plane
                    for k in 0..<plane { d[k] = t[Int(s[k])] }
                }
                return
            }
            let p = augmentation.parameters(seed: seed, epoch: epoch, sampleIndex: index)
            if !augmentation.photometric.isIdentity {
                // Crop and flip in bytes, the torchvision transforms in [0, 1], then normalise.
                let shifted = p.apply(to: Array(UnsafeBufferPointer(start: src, count: c * plane))[...],
                                      channels: c, height: h, width: w)
                var unit = shifted.map { Float($0) * (1 / 255) }
                augmentation.photometric.apply(&unit, channels: c, height: h, width: w,
                                               seed: seed, epoch: epoch, sampleIndex: index)
                for ch in 0..<c {
                    let mean = statistics.mean[ch], std = statistics.std[ch]
                    let d = dst + ch * plane
                    for k in 0..<plane { d[k] = Float((Double(unit[ch * plane + k]) - mean) / std) }
                }
                return
            }
            for ch in 0..<c {
                let t = lut.baseAddress! + ch * 256
                let black = t[0]
                for y in 0..<h {
                    let d = dst + ch * plane + y * w
                    let sy = y + p.shiftY
                    guard sy >= 0 && sy < h else {
                        d.update(repeating: black, count: w)
                        continue
                    }
                    let row = src + ch * plane + sy * w
                    for x in 0..<w {
                        let mx = x + p.shiftX
                        d[x] = mx >= 0 && mx < w ? t[Int(row[p.flip ? w - 1 - mx : mx])] : black
                    }
                }
            }
        }
    }

    /// Runs `body(j)` for j in 0..<count on up to `threads` threads (1: on the caller's),
    /// each j exactly once.
    static func forEach(_ count: Int, threads: Int, _ body: (Int) -> Void) {
        let workers = max(1, min(threads, count))
        if workers == 1 {
            for j in 0..<count { body(j) }
            return
        }
        DispatchQueue.concurrentPerform(iterations: workers) { worker in
            for j in stride(from: worker, to: count, by: workers) { body(j) }
        }
    }
}

/// Turns index lists into normalised, augmented (images, labels) batches.
public struct BatchAssembler: Sendable {
    /// The images and labels.
    public let dataset: ImageDataset
    /// The per-sample transform.
    public let writer: SampleWriter
    public var statistics: ChannelStatistics { writer.statistics }
    public var augmentation: Augmentation { writer.augmentation }
    public var seed: UInt64 { writer.seed }

    /// An assembler; `statistics` must have one entry per dataset channel.
    public init(dataset: ImageDataset, statistics: ChannelStatistics,
                augmentation: Augmentation = .none, seed: UInt64 = 0) {
        precondition(statistics.channels == dataset.channels,
                     "statistics for \(statistics.channels) channels, dataset has \(dataset.channels)")
        self.dataset = dataset
        writer = SampleWriter(shape: dataset.imageShape, statistics: statistics, augmentation: augmentation, seed: seed)
    }

    /// Fills `images` (resized to [n, C, H, W]) and `labels` (n entries) with
    /// the samples `indices`, augmented with the parameters of
    /// (seed, epoch, dataset index), on up to `threads` threads (the result
    /// does not depend on their number). Allocates nothing (without photometric
    /// augmentation) once `images` and `labels` have grown to the batch size.
    public func assemble<Indices: Collection>(indices: Indices, epoch: Int, images: Tensor, labels: inout [Int32],
                                              threads: Int = 1) where Indices.Element == Int {
        let size = dataset.imageSize
        images.resize(to: [indices.count] + dataset.imageShape)
        labels.removeAll(keepingCapacity: true)
        for index in indices {
            precondition(index >= 0 && index < dataset.count, "sample index \(index) outside 0..<\(dataset.count)")
            labels.append(dataset.labels[index])
        }
        let list = Array(indices)
        let out = images.data
        dataset.pixels.withUnsafeBufferPointer { px in
            let base = px.baseAddress!
            SampleWriter.forEach(list.count, threads: threads) { j in
                writer.write(base + list[j] * size, sampleIndex: list[j], epoch: epoch, to: out + j * size)
            }
        }
    }

    /// A new (images, labels) pair for `indices` (convenience for tests and evaluation).
    public func batch<Indices: Collection>(indices: Indices, epoch: Int) -> (images: Tensor, labels: [Int32])
        where Indices.Element == Int {
        let images = Tensor(shape: [0, dataset.channels, dataset.height, dataset.width])
        var labels: [Int32] = []
        assemble(indices: indices, epoch: epoch, images: images, labels: &labels)
        return (images, labels)
    }
}
