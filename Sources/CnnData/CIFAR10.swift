// The CIFAR-10 binary format (https://www.cs.toronto.edu/~kriz/cifar.html):
// records of 3073 bytes, one label byte (0…9) then 3072 pixel bytes — the
// 32×32 red plane, then green, then blue, each row-major. That is already
// CHW, so pixels are copied as they are.
//   train: data_batch_1.bin … data_batch_5.bin (10 000 records each)
//   test:  test_batch.bin
import CnnCore

extension ImageDataset {
    /// Bytes per CIFAR-10 record: 1 label + 3×32×32 pixels.
    public static let cifar10RecordSize = 1 + 3 * 32 * 32

    /// The batch file names of a CIFAR-10 split, in load order.
    public static func cifar10FileNames(_ split: DatasetSplit) -> [String] {
        switch split {
        case .train: return (1...5).map { "data_batch_\($0).bin" }
        case .test: return ["test_batch.bin"]
        }
    }

    /// Loads a CIFAR-10 split from `directory` (or its `cifar-10-batches-bin`
    /// subdirectory, as the archive unpacks).
    ///
    /// With `requireAll` (the default) every batch file of the split must be
    /// present, else `CnnError.io` names the directory and the missing files.
    /// Without it, whichever batches exist are read in order (at least one).
    public static func loadCIFAR10(directory: String, split: DatasetSplit, requireAll: Bool = true) throws -> ImageDataset {
        var dir = directory.hasSuffix("/") ? String(directory.dropLast()) : directory
        guard FileBytes.isDirectory(dir) else {
            throw CnnError.io(file: directory, reason: "dataset directory does not exist")
        }
        let names = cifar10FileNames(split)
        if !names.contains(where: { FileBytes.exists("\(dir)/\($0)") }),
           FileBytes.isDirectory("\(dir)/cifar-10-batches-bin") {
            dir += "/cifar-10-batches-bin"
        }
        let present = names.filter { FileBytes.exists("\(dir)/\($0)") }
        let missing = names.filter { !present.contains($0) }
        if present.isEmpty || (requireAll && !missing.isEmpty) {
            throw CnnError.io(file: dir, reason:
                "missing CIFAR-10 \(split.rawValue) batch file\(missing.count == 1 ? "" : "s") \(missing.joined(separator: ", ")) in dataset directory \(dir)")
        }
        var pixels: [UInt8] = []
        var labels: [Int32] = []
        for name in present {
            let batch = try loadCIFAR10Batch(path: "\(dir)/\(name)")
            pixels.append(contentsOf: batch.pixels)
            labels.append(contentsOf: batch.labels)
        }
        return ImageDataset(name: "cifar-10 \(split.rawValue)", source: dir, pixels: pixels, labels: labels,
                            channels: 3, height: 32, width: 32, classCount: 10)
    }

    /// Loads one CIFAR-10 binary batch file (raw or gzipped).
    ///
    /// Throws `CnnError.invalidData` naming the file if its size is not a
    /// multiple of 3073 bytes or a label is outside 0…9.
    public static func loadCIFAR10Batch(path: String) throws -> ImageDataset {
        // No header to size it: a batch file holds at most the whole 60,000-image set.
        let (bytes, compressed) = try FileBytes.readDecompressing(path, maxBytes: 60_000 * cifar10RecordSize)
        let record = cifar10RecordSize
        guard bytes.count % record == 0, !bytes.isEmpty else {
            throw CnnError.invalidData(file: path, reason:
                "size \(bytes.count)\(compressed ? " (decompressed)" : "") bytes is not a positive multiple of the CIFAR-10 record size \(record) (\(bytes.count / record) whole records and \(bytes.count % record) bytes left over)")
        }
        let count = bytes.count / record
        var labels = [Int32](repeating: 0, count: count)
        var pixels = [UInt8](repeating: 0, count: count * (record - 1))
        try bytes.withUnsafeBufferPointer { src in
            try pixels.withUnsafeMutableBufferPointer { dst in
                for i in 0..<count {
                    let label = src[i * record]
                    guard label < 10 else {
                        throw CnnError.invalidData(file: path, reason:
                            "label of record \(i) (byte offset \(i * record)) is \(label), outside 0..<10")
                    }
                    labels[i] = Int32(label)
                    dst.baseAddress!.advanced(by: i * (record - 1))
                        .update(from: src.baseAddress!.advanced(by: i * record + 1), count: record - 1)
                }
            }
        }
        return ImageDataset(name: "cifar-10 \(path.split(separator: "/").last.map(String.init) ?? path)", source: path,
                            pixels: pixels, labels: labels, channels: 3, height: 32, width: 32, classCount: 10)
    }

    /// Writes the dataset as one CIFAR-10 binary batch file (gzipped if
    /// `compressed`). The dataset must be 3×32×32 with labels below 256.
    public func writeCIFAR10Batch(path: String, compressed: Bool = false) throws {
        precondition(channels == 3 && height == 32 && width == 32,
                     "CIFAR-10 records are 3x32x32, not \(channels)x\(height)x\(width)")
        precondition(labels.allSatisfy { $0 < 256 }, "CIFAR-10 labels are bytes; a label of \(name) does not fit")
        try FileBytes.write(maybeCompress(cifar10Bytes(), compressed), to: path)
    }

    /// The CIFAR-10 binary records for this dataset.
    public func cifar10Bytes() -> [UInt8] {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(count * ImageDataset.cifar10RecordSize)
        for i in 0..<count {
            bytes.append(UInt8(truncatingIfNeeded: labels[i]))
            bytes.append(contentsOf: image(i))
        }
        return bytes
    }
}
