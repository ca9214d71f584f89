import ArgumentParser
import CnnCore
import CnnData
import CnnTraining
import Foundation

/// `cnn-dist pack DIR OUT --shard-size N`: an image folder (DIR/train/<class>,
/// DIR/val/<class>) as WebDataset-style shards OUT/train-NNNNNN.tar,
/// OUT/val-NNNNNN.tar and OUT/manifest.tsv (classes, sample counts, statistics).
public struct PackCommand: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "pack",
        abstract: "Write an image folder as tar shards for `dataset: shards`.",
        discussion: """
            Each split's samples are shuffled (--seed) and written as KEY.jpg|png + KEY.cls members,
            at most --shard-size samples and --shard-bytes bytes a shard. Every image is checked
            (and decoded once for the manifest's normalisation statistics) before it is written,
            so a damaged file is an error naming it. Train on the result with
            `dataset: shards` and `data: OUT`; each rank reads only its own shards, so give at
            least as many train shards as ranks.
            """)

    @Argument(help: "Image folder holding train/<class>/* and val/<class>/*.") var folder: String
    @Argument(help: "Output folder (created if missing; must not hold shards already).") var output: String
    @Option(name: .customLong("shard-size"), help: "Samples per shard.") var shardSize = 10_000
    @Option(name: .customLong("shard-bytes"), help: "Largest shard in bytes.") var shardBytes = 1 << 30
    @Option(help: "Store images as they are (keep), or re-encoded as png or jpeg.") var recode = "keep"
    @Option(help: "JPEG quality for --recode jpeg.") var quality = 95
    @Option(help: "Seed of the sample order inside the shards.") var seed: UInt64 = 0

    public init() {}

    public func validate() throws {
        if shardSize < 1 { throw ValidationError("--shard-size must be at least 1, got \(shardSize)") }
        if shardBytes < 4096 { throw ValidationError("--shard-bytes must be at least 4096, got \(shardBytes)") }
        if !["keep", "png", "jpeg"].contains(recode) { throw ValidationError("--recode must be keep, png or jpeg, got \(recode)") }
        if !(1...100).contains(quality) { throw ValidationError("--quality must lie in 1...100, got \(quality)") }
    }

    public func run() throws {
        let out = output.hasSuffix("/") && output.count > 1 ? String(output.dropLast()) : output
        try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
        if FileBytes.exists("\(out)/\(ShardManifest.fileName)") {
            throw CnnError.io(file: "\(out)/\(ShardManifest.fileName)", reason: "already exists: pack into an empty folder")
        }
        let format: ImageFileFormat? = recode == "png" ? .png : recode == "jpeg" ? .jpeg(quality: quality) : nil
        let start = Date()
        let manifest = try ShardWriter.pack(root: folder, to: out, maxSamples: shardSize, maxBytes: shardBytes,
                                            shuffleSeed: seed, recode: format)
        for split in ["train", "val"] {
            let shards = manifest.splits[split] ?? []
            print("pack: \(split): \(shards.reduce(0) { $0 + $1.samples }) samples in \(shards.count) shard(s)")
        }
        print(String(format: "pack: %d classes; wrote %@/%@ in %.1fs", manifest.classes.count, out,
                     ShardManifest.fileName, Date().timeIntervalSince(start)))
    }
}

/// `cnn-dist export DATASET OUT`: a dataset of the registry (e.g. fashion-mnist's IDX
/// files) written as an image folder OUT/train/<class>/*.png and OUT/val/<class>/*.png,
/// to train on it as `dataset: folder` or to pack it into shards.
public struct ExportCommand: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "export",
        abstract: "Write a dataset (train and test splits) as an image folder of PNG or JPEG files.")

    @Argument(help: "Dataset to export.") var dataset: DatasetKind
    @Argument(help: "Output folder (OUT/train/<class>, OUT/val/<class>).") var output: String
    @Option(help: "Dataset folder (default: the dataset's own).") var data: String?
    @Option(help: "png or jpeg.") var format = "png"
    @Option(help: "JPEG quality.") var quality = 95

    public init() {}

    public func validate() throws {
        if !["png", "jpeg"].contains(format) { throw ValidationError("--format must be png or jpeg, got \(format)") }
        if !(1...100).contains(quality) { throw ValidationError("--quality must lie in 1...100, got \(quality)") }
    }

    public func run() throws {
        try FileManager.default.createDirectory(atPath: output, withIntermediateDirectories: true)
        let (train, test) = try dataset.load(DatasetRequest(directory: data))
        let file: ImageFileFormat = format == "png" ? .png : .jpeg(quality: quality)
        let names = train.classNames
        let written = try ImageFolderWriter.write(train, root: output, split: "train", format: file, classNames: names)
            + ImageFolderWriter.write(test, root: output, split: "val", format: file, classNames: names)
        print("export: \(dataset.rawValue): \(train.count) train and \(test.count) val images as \(format) in \(output) (\(written) files)")
    }
}
