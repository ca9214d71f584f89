// CnnData: dataset readers (IDX, CIFAR-10 binary), a synthetic dataset,
// per-channel normalisation, seeded augmentation, the data-parallel epoch
// sampler and a prefetching batch loader.
//
// Dimension letters: N images, C channels, H height, W width. Pixels stay
// UInt8 in memory (N×C×H×W, CHW per image); they become normalised Float32
// NCHW tensors only when a batch is assembled.
import CnnCore

/// Which part of a dataset to load.
public enum DatasetSplit: String, CaseIterable, Sendable {
    /// The training images (Fashion-MNIST `train-*`, CIFAR-10 `data_batch_1…5`).
    case train
    /// The held-out test images (Fashion-MNIST `t10k-*`, CIFAR-10 `test_batch`).
    case test
}

/// An in-memory labelled image dataset with 8-bit pixels.
///
/// `pixels` holds `count` images back to back, each `channels × height × width`
/// bytes in CHW order (all of channel 0, then channel 1, …), so image `i`
/// starts at `i * imageSize`. `labels[i]` is the class of image `i`, in
/// `0..<classCount`. Loaders validate these invariants and throw
/// `CnnError.invalidData`; `init` checks them with preconditions.
public struct ImageDataset: Sendable {
    /// A short description, e.g. `fashion-mnist train` or `synthetic(seed 1)`.
    public var name: String
    /// Where the data came from: the images file, the directory, or empty for synthetic data.
    public var source: String
    /// Pixels, N×C×H×W bytes.
    public var pixels: [UInt8]
    /// One class index per image.
    public var labels: [Int32]
    /// Channels per image (1 for Fashion-MNIST, 3 for CIFAR-10).
    public var channels: Int
    /// Image height in pixels.
    public var height: Int
    /// Image width in pixels.
    public var width: Int
    /// Number of classes; every label is in `0..<classCount`.
    public var classCount: Int
    /// The classes' names, label i is classNames[i] (folder datasets); nil: unnamed.
    public var classNames: [String]? = nil
    /// Files left out because they could not be decoded (on_bad_image: skip), each its error.
    public var skippedFiles: [String] = []

    /// A dataset from its parts; the pixel count must be `labels.count × channels × height × width`.
    public init(name: String, source: String = "", pixels: [UInt8], labels: [Int32],
                channels: Int, height: Int, width: Int, classCount: Int) {
        precondition(channels > 0 && height > 0 && width > 0 && classCount > 0,
                     "dataset dimensions must be positive: C=\(channels) H=\(height) W=\(width) classes=\(classCount)")
        precondition(pixels.count == labels.count * channels * height * width,
                     "\(pixels.count) pixels for \(labels.count) images of \(channels)x\(height)x\(width)")
        precondition(labels.allSatisfy { $0 >= 0 && Int($0) < classCount }, "label outside 0..<\(classCount)")
        self.name = name
        self.source = source
        self.pixels = pixels
        self.labels = labels
        self.channels = channels
        self.height = height
        self.width = width
        self.classCount = classCount
    }

    /// Number of images.
    public var count: Int { labels.count }
    /// Bytes (and floats in a batch) per image: C×H×W.
    public var imageSize: Int { channels * height * width }
    /// The per-image shape `[C, H, W]`.
    public var imageShape: [Int] { [channels, height, width] }

    /// The pixels of image `index`, CHW.
    public func image(_ index: Int) -> ArraySlice<UInt8> {
        pixels[index * imageSize ..< (index + 1) * imageSize]
    }

    /// A dataset of the given images, in the given order (for quick runs on a part of the data).
    public func subset<S: Sequence>(_ indices: S, name: String? = nil) -> ImageDataset where S.Element == Int {
        var newPixels: [UInt8] = []
        var newLabels: [Int32] = []
        for i in indices {
            precondition(i >= 0 && i < count, "subset index \(i) outside 0..<\(count)")
            newPixels.append(contentsOf: image(i))
            newLabels.append(labels[i])
        }
        var part = ImageDataset(name: name ?? "\(self.name) subset", source: source, pixels: newPixels,
                                labels: newLabels, channels: channels, height: height, width: width,
                                classCount: classCount)
        part.classNames = classNames
        return part
    }

    /// How many images carry each label, indexed by class.
    public func classHistogram() -> [Int] {
        var histogram = [Int](repeating: 0, count: classCount)
        for label in labels { histogram[Int(label)] += 1 }
        return histogram
    }
}
