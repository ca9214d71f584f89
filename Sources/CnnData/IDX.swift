// The IDX format of MNIST and Fashion-MNIST (http://yann.lecun.com/exdb/mnist/):
// a big-endian header — magic 00 00 08 nd (unsigned bytes, nd dimensions),
// then nd 32-bit sizes — followed by the data, row-major, nothing after it.
//   images: magic 0x00000803, sizes N, H, W   (one channel)
//   labels: magic 0x00000801, size  N
// Files may be gzipped; compression is detected by content (1f 8b).
// Extension: images with magic 0x00000804 and sizes N, C, H, W are read as C
// channels, so multi-channel datasets round-trip through `writeIDX`.
import CnnCore

extension ImageDataset {
    /// The four Fashion-MNIST (and MNIST) file stems, without the optional `.gz`.
    static func idxFileStems(_ split: DatasetSplit) -> (images: String, labels: String) {
        switch split {
        case .train: return ("train-images-idx3-ubyte", "train-labels-idx1-ubyte")
        case .test: return ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
        }
    }

    /// Loads a Fashion-MNIST (or MNIST) split from `directory`, which must hold
    /// `train-images-idx3-ubyte` and `train-labels-idx1-ubyte` (train) or the
    /// `t10k-` pair (test), each either raw or gzipped (`.gz`); the dotted
    /// spelling `train-images.idx3-ubyte` is accepted too. MNIST has the same
    /// files and format, so this loads MNIST as well (the name is taken from
    /// the directory).
    ///
    /// Throws `CnnError.io` naming the directory and the missing file, or any
    /// error of `loadIDX`.
    public static func loadFashionMNIST(directory: String,
                                        split: DatasetSplit) throws -> ImageDataset {
        let stems = idxFileStems(split)
        let imagesPath = try findIDXFile(directory: directory, stem: stems.images)
        let labelsPath = try findIDXFile(directory: directory, stem: stems.labels)
        var dataset = try loadIDX(imagesPath: imagesPath, labelsPath: labelsPath, classCount: 10)
        let base = directory.split(separator: "/").last.map(String.init) ?? "idx"
        dataset.name = "\(base) \(split.rawValue)"
        return dataset
    }

    static func findIDXFile(directory: String, stem: String) throws -> String {
        guard FileBytes.isDirectory(directory) else {
            throw CnnError.io(file: directory, reason: "dataset directory does not exist")
        }
        let dir = directory.hasSuffix("/") ? String(directory.dropLast()) : directory
        for name in idxSpellings(stem) where FileBytes.exists("\(dir)/\(name)") {
            return "\(dir)/\(name)"
        }
        throw CnnError.io(file: directory, reason: "missing \(stem) (or \(stem).gz) in dataset directory \(directory)")
    }

    /// Loads an IDX images file and its labels file (each raw or gzipped).
    ///
    /// Validates the magic numbers, the dimensions, the exact data length
    /// (a truncated file or trailing bytes are errors), that both files hold
    /// the same number of items, and that every label is in `0..<classCount`.
    /// Every error is a `CnnError.invalidData` naming the offending file.
    public static func loadIDX(imagesPath: String, labelsPath: String, classCount: Int = 10) throws -> ImageDataset {
        precondition(classCount > 0, "classCount must be positive, not \(classCount)")
        let imageBytes = try FileBytes.readDecompressing(imagesPath, expectedSize: idxFileSize)
        let images = try parseIDXImages(imageBytes.bytes, file: imagesPath, compressed: imageBytes.wasCompressed)
        let labelBytes = try FileBytes.readDecompressing(labelsPath, expectedSize: idxFileSize)
        let labels = try parseIDXLabels(labelBytes.bytes, file: labelsPath, compressed: labelBytes.wasCompressed,
                                        classCount: classCount)
        guard images.count == labels.count else {
            throw CnnError.invalidData(file: imagesPath, reason:
                "holds \(images.count) images but the labels file \(labelsPath) holds \(labels.count) labels")
        }
        return ImageDataset(name: "idx", source: imagesPath, pixels: images.pixels, labels: labels,
                            channels: images.channels, height: images.height, width: images.width,
                            classCount: classCount)
    }

    /// The whole file's size as an IDX header implies it (nil until the header
    /// is complete; just the magic's 4 bytes for a header that is not IDX,
    /// which the parser then names), so gzip inflation stops where the data should.
    static func idxFileSize(_ prefix: ArraySlice<UInt8>) -> Int? {
        guard prefix.count >= 4 else { return nil }
        let b = Array(prefix.prefix(4 + 4 * 4))
        let rank = Int(b[3])
        guard b[0] == 0, b[1] == 0, b[2] == 8, (1...4).contains(rank) else { return 4 }
        let header = 4 + 4 * rank
        guard b.count >= header else { return nil }
        var size = 1
        for d in 0..<rank {
            let (product, overflow) = size.multipliedReportingOverflow(by: bigEndianUInt32(b, 4 + 4 * d))
            guard !overflow, product < 1 << 40 else { return header }
            size = product
        }
        return header + size
    }

    /// Reads a big-endian UInt32 at `offset`.
    static func bigEndianUInt32(_ bytes: [UInt8], _ offset: Int) -> Int {
        Int(bytes[offset]) << 24 | Int(bytes[offset + 1]) << 16 | Int(bytes[offset + 2]) << 8 | Int(bytes[offset + 3])
    }

    static func parseIDXImages(_ bytes: [UInt8], file: String, compressed: Bool)
        throws -> (pixels: [UInt8], count: Int, channels: Int, height: Int, width: Int) {
        let what = compressed ? "decompressed bytes" : "bytes"
        guard bytes.count >= 4 else {
            throw CnnError.invalidData(file: file, reason: "too short for an IDX header: \(bytes.count) \(what)")
        }
        let magic = bigEndianUInt32(bytes, 0)
        guard magic == 0x0000_0803 || magic == 0x0000_0804 else {
            throw CnnError.invalidData(file: file, reason: "wrong magic number 0x\(hex(magic)) for an IDX images file, expected 0x00000803"
                + (magic == 0x0000_0801 ? " (this looks like a labels file)" : ""))
        }
        let rank = magic & 0xFF
        let headerSize = 4 + 4 * rank
        guard bytes.count >= headerSize else {
            throw CnnError.invalidData(file: file, reason:
                "truncated header: expected \(headerSize) bytes, found \(bytes.count) \(what)")
        }
        let dims = (0..<rank).map { bigEndianUInt32(bytes, 4 + 4 * $0) }
        let (count, channels, height, width) = rank == 3 ? (dims[0], 1, dims[1], dims[2]) : (dims[0], dims[1], dims[2], dims[3])
        guard channels > 0, height > 0, width > 0, channels <= 4096, height <= 65_536, width <= 65_536 else {
            throw CnnError.invalidData(file: file, reason: "invalid image dimensions \(dims.map(String.init).joined(separator: "x"))")
        }
        let imageSize = channels * height * width
        let (expected, overflow) = count.multipliedReportingOverflow(by: imageSize)
        guard !overflow else {
            throw CnnError.invalidData(file: file, reason: "image count \(count) × \(imageSize) bytes overflows")
        }
        let shape = channels == 1 ? "\(height)x\(width)" : "\(channels)x\(height)x\(width)"
        try checkDataLength(bytes, headerSize: headerSize, expected: expected, of: "pixels (\(count) images of \(shape))",
                            after: "\(count) images of \(shape)", what: what, file: file)
        return (Array(bytes[headerSize...]), count, channels, height, width)
    }

    /// Throws naming `file` if the data after the header is shorter (truncated)
    /// or longer (trailing bytes) than the header says.
    static func checkDataLength(_ bytes: [UInt8], headerSize: Int, expected: Int, of items: String, after: String,
                                what: String, file: String) throws {
        let actual = bytes.count - headerSize
        if actual < expected {
            throw CnnError.invalidData(file: file, reason:
                "truncated: expected \(expected) \(what) of \(items) after the \(headerSize)-byte header, found \(actual)")
        }
        if actual > expected {
            throw CnnError.invalidData(file: file, reason:
                "\(actual - expected) unexpected trailing \(what) after \(after) (expected \(headerSize + expected) \(what) in total, found \(bytes.count))")
        }
    }

    static func parseIDXLabels(_ bytes: [UInt8], file: String, compressed: Bool, classCount: Int) throws -> [Int32] {
        let what = compressed ? "decompressed bytes" : "bytes"
        guard bytes.count >= 8 else {
            throw CnnError.invalidData(file: file, reason: "too short for an IDX labels header: \(bytes.count) \(what), expected at least 8")
        }
        let magic = bigEndianUInt32(bytes, 0)
        guard magic == 0x0000_0801 else {
            throw CnnError.invalidData(file: file, reason: "wrong magic number 0x\(hex(magic)) for an IDX labels file, expected 0x00000801"
                + (magic == 0x0000_0803 ? " (this looks like an images file)" : ""))
        }
        let count = bigEndianUInt32(bytes, 4)
        try checkDataLength(bytes, headerSize: 8, expected: count, of: "labels", after: "\(count) labels", what: what, file: file)
        var labels = [Int32](repeating: 0, count: count)
        for i in 0..<count {
            let value = bytes[8 + i]
            guard Int(value) < classCount else {
                throw CnnError.invalidData(file: file, reason:
                    "label at index \(i) is \(value), outside 0..<\(classCount)")
            }
            labels[i] = Int32(value)
        }
        return labels
    }

    /// Writes the dataset as an IDX images file and an IDX labels file,
    /// gzipped if `compressed`. Single-channel images get magic 0x00000803
    /// (N, H, W); multi-channel ones 0x00000804 (N, C, H, W), which `loadIDX`
    /// also reads. Labels must fit a byte.
    public func writeIDX(imagesPath: String, labelsPath: String, compressed: Bool = false) throws {
        try FileBytes.write(maybeCompress(idxImageBytes(), compressed), to: imagesPath)
        try FileBytes.write(maybeCompress(idxLabelBytes(), compressed), to: labelsPath)
    }

    /// The uncompressed IDX images file for this dataset.
    public func idxImageBytes() -> [UInt8] {
        let dims = channels == 1 ? [count, height, width] : [count, channels, height, width]
        var bytes: [UInt8] = [0, 0, 0x08, UInt8(dims.count)]
        for d in dims { appendBigEndian(&bytes, d) }
        bytes.append(contentsOf: pixels)
        return bytes
    }

    /// The uncompressed IDX labels file for this dataset.
    public func idxLabelBytes() -> [UInt8] {
        precondition(labels.allSatisfy { $0 < 256 }, "IDX labels are bytes; a label of \(name) does not fit")
        var bytes: [UInt8] = [0, 0, 0x08, 0x01]
        appendBigEndian(&bytes, count)
        bytes.append(contentsOf: labels.map { UInt8(truncatingIfNeeded: $0) })
        return bytes
    }
}

func appendBigEndian(_ bytes: inout [UInt8], _ value: Int) {
    precondition(value >= 0 && value <= Int(UInt32.max), "IDX dimension \(value) does not fit 32 bits")
    bytes.append(contentsOf: [UInt8(value >> 24 & 0xFF), UInt8(value >> 16 & 0xFF), UInt8(value >> 8 & 0xFF), UInt8(value & 0xFF)])
}

func maybeCompress(_ bytes: [UInt8], _ compressed: Bool) -> [UInt8] {
    compressed ? Gzip.compress(bytes) : bytes
}

func hex(_ value: Int) -> String {
    let digits = String(value, radix: 16)
    return String(repeating: "0", count: max(0, 8 - digits.count)) + digits
}

extension String {
    /// The string with the first occurrence of `target` replaced (or unchanged).
    func replacingFirst(_ target: String, with replacement: String) -> String {
        guard let range = firstRange(of: target) else { return self }
        var result = self
        result.replaceSubrange(range, with: replacement)
        return result
    }
}
