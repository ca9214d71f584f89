import CnnCore

/// What a dataset needs beyond its kind: the folder (nil: the kind's default),
/// and for generated data the shape, class count, size and seed.
public struct DatasetRequest: Sendable {
    public var directory: String?
    /// C, H, W the caller wants; generated data takes it, files must match it.
    public var imageShape: [Int]?
    public var classes: Int?
    public var syntheticCount: Int
    public var seed: UInt64
    /// Image folders: an undecodable file stops the load (error) or is left out and listed (skip).
    public var onBadImage = BadImageAction.error

    public init(directory: String? = nil, imageShape: [Int]? = nil, classes: Int? = nil,
                syntheticCount: Int = 2048, seed: UInt64 = 1) {
        self.directory = directory
        self.imageShape = imageShape
        self.classes = classes
        self.syntheticCount = syntheticCount
        self.seed = seed
    }
}

/// The datasets cnn-dist reads. Each case owns its name, default folder, image
/// shape, files and reader; train, eval, predict, preflight and doctor all go
/// through it. A new format is its reader, a case here and its test.
public enum DatasetKind: String, ConfigChoice {
    case fashionMNIST = "fashion-mnist"
    case mnist
    case cifar10
    /// Learnable generated images (no files), for tests and benchmarks.
    case synthetic
    /// JPEG / PNG images in DIR/train/<class>/* and DIR/val/<class>/* (torchvision's ImageFolder).
    case folder
    /// CSV pixel files DIR/train.csv and DIR/test.csv: a header, then label,pixel1,...,pixelN
    /// (Sign-Language-MNIST's sign_mnist_train.csv / sign_mnist_test.csv too).
    case csv
    /// WebDataset-style tar shards DIR/train-NNNNNN.tar and DIR/val-NNNNNN.tar with DIR/manifest.tsv
    /// (`cnn-dist pack` writes them), streamed by training (see ShardDataset.swift).
    case shards

    /// Where the data is looked for when no folder is given; nil: no files.
    public var defaultDirectory: String? {
        switch self {
        case .fashionMNIST: return "/usr/share/datasets/fashion-mnist"
        case .mnist: return "/usr/share/datasets/mnist"
        case .cifar10: return "data/cifar-10-batches-bin"
        case .synthetic, .folder, .csv, .shards: return nil
        }
    }

    /// Whether training streams this dataset from disk instead of holding it in memory.
    public var isStreamed: Bool { self == .shards }

    /// Whether the dataset is read from files (all but synthetic).
    public var hasFiles: Bool { self != .synthetic }

    /// One sentence on how to get the files.
    public var howToGet: String {
        switch self {
        case .fashionMNIST:
            return "install Debian's dataset-fashion-mnist package (launch/setup.sh install does), or pass --data DIR"
        case .mnist:
            return "download the four MNIST IDX files (train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
                + "t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz) into that folder, or pass --data DIR"
        case .cifar10:
            return "download the CIFAR-10 binary version (cifar-10-binary.tar.gz) and extract it there, or pass --data DIR"
        case .synthetic:
            return "nothing to get: the images are generated"
        case .folder:
            return "give --data DIR with DIR/train/<class>/*.jpg|png and DIR/val/<class>/*.jpg|png (class folders sorted by name)"
        case .csv:
            return "give --data DIR with train.csv and test.csv (label,pixel1,...,pixelN with a header), "
                + "e.g. Sign-Language-MNIST's files"
        case .shards:
            return "give --data DIR with manifest.tsv, train-NNNNNN.tar and val-NNNNNN.tar; "
                + "write them from an image folder with: cnn-dist pack FOLDER DIR --shard-size 10000"
        }
    }

    /// The image shape the files hold (nil: generated in the requested shape).
    public var imageShape: [Int]? {
        switch self {
        case .fashionMNIST, .mnist: return [1, 28, 28]
        case .cifar10: return [3, 32, 32]
        case .synthetic, .folder, .csv, .shards: return nil
        }
    }

    /// The shape used when neither the files nor the config fix one.
    public var defaultShape: [Int] {
        switch self {
        case .folder, .shards: return [3, 224, 224]
        default: return imageShape ?? [1, 28, 28]
        }
    }

    /// The files a folder must hold, each as its accepted spellings.
    public var requiredFiles: [[String]] {
        switch self {
        case .fashionMNIST, .mnist:
            return [DatasetSplit.train, .test].flatMap { split -> [[String]] in
                let stems = ImageDataset.idxFileStems(split)
                return [stems.images, stems.labels].map(ImageDataset.idxSpellings)
            }
        case .cifar10:
            return (ImageDataset.cifar10FileNames(.train) + ImageDataset.cifar10FileNames(.test)).map { [$0] }
        case .synthetic:
            return []
        case .folder:
            return [["train"], ["val"]]
        case .csv:
            return [["train.csv", "sign_mnist_train.csv", "train.csv.gz"], ["test.csv", "sign_mnist_test.csv", "test.csv.gz"]]
        case .shards:
            return [[ShardManifest.fileName]]
        }
    }

    /// The folder a request reads: its own, else the default.
    public func directory(_ request: DatasetRequest) -> String? { request.directory ?? defaultDirectory }

    /// Both splits.
    public func load(_ request: DatasetRequest) throws -> (train: ImageDataset, test: ImageDataset) {
        if self == .synthetic {
            return ImageDataset.syntheticSplits(count: request.syntheticCount, shape: request.imageShape ?? [1, 28, 28],
                                                classes: request.classes ?? 10, seed: request.seed)
        }
        var (train, test) = (try load(.train, request), try load(.test, request))
        // CSV files count classes by their largest label, and a class may be absent from one split.
        let classes = max(train.classCount, test.classCount)
        (train.classCount, test.classCount) = (classes, classes)
        return (train, test)
    }

    /// One split.
    public func load(_ split: DatasetSplit, _ request: DatasetRequest) throws -> ImageDataset {
        guard hasFiles else {
            let both = try load(request)
            return split == .train ? both.train : both.test
        }
        guard let dir = directory(request) else {
            throw CnnError.invalidConfig(field: "data", value: "(none)", allowed: "a folder for the \(rawValue) dataset: \(howToGet)")
        }
        try checkFiles(directory: dir)
        let base = dir.hasSuffix("/") ? String(dir.dropLast()) : dir
        var dataset: ImageDataset
        switch self {
        case .fashionMNIST, .mnist: dataset = try ImageDataset.loadFashionMNIST(directory: dir, split: split)
        case .cifar10: dataset = try ImageDataset.loadCIFAR10(directory: dir, split: split)
        case .folder:
            dataset = try ImageDataset.loadImageFolder(root: base, split: split, shape: request.imageShape ?? defaultShape,
                                                       onBadImage: request.onBadImage)
        case .csv:
            let names = requiredFiles[split == .train ? 0 : 1]
            let path = names.map { "\(base)/\($0)" }.first { FileBytes.exists($0) }!
            dataset = try CSVPixels.load(path: path, name: "csv \(split.rawValue)")
        case .shards:
            // Decoded whole: for eval, doctor and predict; training streams (ShardBatchFilling).
            dataset = try ShardSet(directory: base, shape: request.imageShape ?? defaultShape).loadInMemory(split)
        case .synthetic: fatalError("synthetic has no files")
        }
        if let shape = request.imageShape, shape != dataset.imageShape { dataset = dataset.converted(to: shape) }
        return dataset
    }

    /// Throws a config error on `data`, naming the dataset, the folder looked
    /// in, what is missing and how to get it, unless every required file is
    /// there and readable.
    public func checkFiles(directory dir: String) throws {
        guard self != .synthetic else { return }
        func missing(_ what: String) -> CnnError {
            .invalidConfig(field: "data", value: dir,
                           allowed: "a folder holding the \(rawValue) dataset; \(what). To get it: \(howToGet)")
        }
        guard FileBytes.isDirectory(dir) else { throw missing("no such folder on host \(hostNameForReports())") }
        let base = dir.hasSuffix("/") ? String(dir.dropLast()) : dir
        for names in requiredFiles {
            let present = names.filter { FileBytes.exists("\(base)/\($0)") }
            guard !present.isEmpty else {
                throw missing("\(names[0])" + (names.count > 1 ? " (or \(names.dropFirst().joined(separator: ", ")))" : "")
                              + " is not in it")
            }
            guard present.contains(where: { FileBytes.isReadable("\(base)/\($0)") }) else {
                throw CnnError.invalidConfig(field: "data", value: dir,
                                             allowed: "readable dataset files; \(base)/\(present[0]) cannot be read by this user")
            }
        }
    }
}

extension ImageDataset {
    /// The accepted spellings of an IDX file stem: raw, gzipped, and the dotted
    /// form some unpackers produce (train-images.idx3-ubyte).
    static func idxSpellings(_ stem: String) -> [String] {
        let dotted = stem.replacingFirst("-idx", with: ".idx")
        return [stem, "\(stem).gz", dotted, "\(dotted).gz"]
    }

    /// The synthetic dataset's splits: one stream of count + count / 4 images of
    /// `shape` with min(10, classes) classes; the last quarter is the test split.
    public static func syntheticSplits(count: Int, shape: [Int], classes: Int, seed: UInt64) -> (train: ImageDataset, test: ImageDataset) {
        let all = ImageDataset.synthetic(count: count + count / 4, channels: shape[0], height: shape[1], width: shape[2],
                                         classCount: max(2, min(10, classes)), seed: seed)
        return (all.subset(0..<count), all.subset(count..<all.count, name: "synthetic(seed \(seed)) test"))
    }
}
