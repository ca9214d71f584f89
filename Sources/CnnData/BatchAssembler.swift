// Batch assembly: gathers the images of a list of dataset indices into an
// NCHW Float32 tensor, normalising through a 256-entry table per channel and
// applying the sample's augmentation on the fly. Output depends only on
// (dataset, statistics, augmentation, seed, epoch, indices).
import CnnCore

/// Turns index lists into normalised, augmented (images, labels) batches.
public struct BatchAssembler: Sendable {
    /// The images and labels.
    public let dataset: ImageDataset
    /// Normalisation, normally computed on the training split.
    public let statistics: ChannelStatistics
    /// Augmentation applied to every sample (use `.none` for evaluation).
    public let augmentation: Augmentation
    /// Seed of the augmentation stream.
    public let seed: UInt64
    /// table[c * 256 + p]: normalised value of pixel p in channel c.
    let table: [Float]

    /// An assembler; `statistics` must have one entry per dataset channel.
    public init(dataset: ImageDataset, statistics: ChannelStatistics,
                augmentation: Augmentation = .none, seed: UInt64 = 0) {
        precondition(statistics.channels == dataset.channels,
                     "statistics for \(statistics.channels) channels, dataset has \(dataset.channels)")
        self.dataset = dataset
        self.statistics = statistics
        self.augmentation = augmentation
        self.seed = seed
        self.table = statistics.lookupTable()
    }

    /// Fills `images` (resized to [n, C, H, W]) and `labels` (n entries) with
    /// the samples `indices`, augmented with the parameters of
    /// (seed, epoch, dataset index). Allocates nothing once `images` and
    /// `labels` have grown to the batch size.
    public func assemble<Indices: Collection>(indices: Indices, epoch: Int, images: Tensor, labels: inout [Int32])
        where Indices.Element == Int {
        let c = dataset.channels, h = dataset.height, w = dataset.width
        let plane = h * w, size = c * plane
        images.resize(to: [indices.count, c, h, w])
        labels.removeAll(keepingCapacity: true)
        let identity = augmentation.isIdentity
        dataset.pixels.withUnsafeBufferPointer { px in
            table.withUnsafeBufferPointer { lut in
                for (j, index) in indices.enumerated() {
                    precondition(index >= 0 && index < dataset.count, "sample index \(index) outside 0..<\(dataset.count)")
                    labels.append(dataset.labels[index])
                    let src = px.baseAddress! + index * size
                    let dst = images.data + j * size
                    if identity {
                        for ch in 0..<c {
                            let t = lut.baseAddress! + ch * 256
                            let s = src + ch * plane, d = dst + ch * plane
                            for k in 0..<plane { d[k] = t[Int(s[k])] }
                        }
                        continue
                    }
                    let p = augmentation.parameters(seed: seed, epoch: epoch, sampleIndex: index)
                    if !augmentation.photometric.isIdentity {
                        // Crop and flip in bytes, the torchvision transforms in [0, 1], then normalise.
                        let shifted = p.apply(to: dataset.image(index), channels: c, height: h, width: w)
                        var unit = shifted.map { Float($0) * (1 / 255) }
                        augmentation.photometric.apply(&unit, channels: c, height: h, width: w,
                                                       seed: seed, epoch: epoch, sampleIndex: index)
                        for ch in 0..<c {
                            let mean = statistics.mean[ch], std = statistics.std[ch]
                            let d = dst + ch * plane
                            for k in 0..<plane { d[k] = Float((Double(unit[ch * plane + k]) - mean) / std) }
                        }
                        continue
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
