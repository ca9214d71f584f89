// WebDataset-style shards: plain POSIX ustar archives (train-000000.tar, train-000001.tar,
// ...) whose members come in groups sharing a key, here KEY.jpg or KEY.png (the image
// file's bytes as they were) followed by KEY.cls (the label in decimal). A key is the
// member name up to the first "." of its last path component, as WebDataset splits it.
//
// Reading is sequential, one member at a time, so a rank holds one sample of a shard in
// memory, never the shard. Ranks share shards round-robin (rank r of R reads shards r,
// r+R, r+2R, ...) and never open the others. The writer records the number of samples
// of each shard in a manifest beside the shards, so every rank knows the epoch length
// without opening any shard.
//
// The reader checks each header's checksum, that sizes are octal numbers, that a member
// is whole, and that the archive ends with its end-of-archive blocks: a shard cut short
// anywhere, or damaged in a header, is an error naming the shard, the member and the
// byte offset. Damage inside an image's bytes is the decoder's to find.
import CnnCore
#if canImport(Glibc)
import Glibc
#else
import Darwin
#endif

/// One member of a tar archive.
public struct TarEntry: Equatable, Sendable {
    public var name: String
    public var bytes: [UInt8]

    public init(name: String, bytes: [UInt8]) {
        self.name = name
        self.bytes = bytes
    }
}

/// Writes a ustar archive member by member.
public final class TarWriter {
    public let path: String
    private var file: UnsafeMutablePointer<FILE>?
    /// Bytes written so far (headers and padding included).
    public private(set) var bytesWritten = 0

    public init(path: String) throws {
        guard let file = fopen(path, "wb") else {
            throw CnnError.io(file: path, reason: "cannot open for writing: \(String(cString: strerror(errno)))")
        }
        self.path = path
        self.file = file
    }

    deinit { if let file { fclose(file) } }

    /// The archive size after adding a member of `size` bytes (header and padding included).
    public static func memberSize(_ size: Int) -> Int { 512 + (size + 511) / 512 * 512 }

    /// Appends a regular file member. Names longer than 100 bytes are split into ustar's
    /// prefix (up to 155) and name fields at a "/".
    public func add(name: String, bytes: [UInt8], mtime: Int = 0) throws {
        var header = [UInt8](repeating: 0, count: 512)
        let full = Array(name.utf8)
        var prefix = [UInt8](), base = full
        if full.count > 100 {
            guard let split = full.indices.last(where: { full[$0] == UInt8(ascii: "/") && $0 <= 155 && full.count - $0 - 1 <= 100 }),
                  split > 0 else {
                throw CnnError.invalidArgument(layer: "TarWriter", argument: "name", value: name,
                                               reason: "too long for a ustar header (100 bytes, or 155 + 100 split at a '/')")
            }
            prefix = Array(full[..<split])
            base = Array(full[(split + 1)...])
        }
        func put(_ bytes: [UInt8], at offset: Int) { for (i, b) in bytes.enumerated() { header[offset + i] = b } }
        func octal(_ value: Int, width: Int) -> [UInt8] {
            Array(String(value, radix: 8).leftPadded(to: width - 1).utf8) + [0]
        }
        guard bytes.count < 1 << 33 else {
            throw CnnError.invalidArgument(layer: "TarWriter", argument: "size", value: "\(bytes.count)", reason: "over 8 GiB")
        }
        put(base, at: 0)
        put(octal(0o644, width: 8), at: 100)
        put(octal(0, width: 8), at: 108)
        put(octal(0, width: 8), at: 116)
        put(octal(bytes.count, width: 12), at: 124)
        put(octal(mtime, width: 12), at: 136)
        put(Array(repeating: UInt8(ascii: " "), count: 8), at: 148)
        header[156] = UInt8(ascii: "0")
        put(Array("ustar".utf8) + [0], at: 257)
        put(Array("00".utf8), at: 263)
        put(prefix, at: 345)
        let sum = header.reduce(0) { $0 + Int($1) }
        put(Array(String(sum, radix: 8).leftPadded(to: 6).utf8) + [0, UInt8(ascii: " ")], at: 148)
        try write(header)
        try write(bytes)
        let padding = (512 - bytes.count % 512) % 512
        if padding > 0 { try write([UInt8](repeating: 0, count: padding)) }
    }

    /// Writes the end-of-archive marker (two zero blocks) and closes the file.
    public func finish() throws {
        try write([UInt8](repeating: 0, count: 1024))
        guard let file else { return }
        self.file = nil
        guard fclose(file) == 0 else {
            throw CnnError.io(file: path, reason: "cannot close: \(String(cString: strerror(errno)))")
        }
    }

    private func write(_ bytes: [UInt8]) throws {
        guard let file else { throw CnnError.io(file: path, reason: "write after finish") }
        let written = bytes.withUnsafeBufferPointer { $0.isEmpty ? 0 : fwrite($0.baseAddress!, 1, $0.count, file) }
        guard written == bytes.count else {
            throw CnnError.io(file: path, reason: "wrote \(written) of \(bytes.count) bytes: \(String(cString: strerror(errno)))")
        }
        bytesWritten += written
    }
}

/// Reads a ustar archive member by member, sequentially.
public final class TarReader {
    public let path: String
    /// Members larger than this are refused (a damaged size field must not allocate gigabytes).
    public let maxMemberSize: Int
    private var file: UnsafeMutablePointer<FILE>?
    private var offset = 0
    private var finished = false
    /// The name a GNU 'L' or pax 'x' member gave for the next member.
    private var longName: String?

    public init(path: String, maxMemberSize: Int = 1 << 30) throws {
        guard let file = fopen(path, "rb") else {
            throw CnnError.io(file: path, reason: "cannot open for reading: \(String(cString: strerror(errno)))")
        }
        self.path = path
        self.file = file
        self.maxMemberSize = maxMemberSize
    }

    deinit { if let file { fclose(file) } }

    /// The next regular-file member, or nil at the end-of-archive marker. Directories and
    /// links are skipped; GNU long-name ('L') and pax ('x') path records name the next member.
    public func next() throws -> TarEntry? {
        while !finished {
            let at = offset
            let header = try read(512, what: "a member header at byte \(at)")
            guard let header else {
                throw CnnError.invalidData(file: path, reason:
                    "tar archive is truncated: it ends at byte \(at) without the end-of-archive marker")
            }
            if header.allSatisfy({ $0 == 0 }) {
                finished = true
                return nil
            }
            let stored = try Self.octal(header[148..<156], path: path, field: "checksum", at: at)
            var unsigned = 0, signed = 0
            for (i, b) in header.enumerated() {
                let v = (148..<156).contains(i) ? 32 : b
                unsigned += Int(v)
                signed += Int(Int8(bitPattern: v))
            }
            guard stored == unsigned || stored == signed else {
                throw CnnError.invalidData(file: path, reason:
                    "damaged tar header at byte \(at): checksum \(stored) but the header sums to \(unsigned)")
            }
            let name = Self.string(header[0..<100])
            let prefix = header[257..<262].elementsEqual("ustar".utf8) ? Self.string(header[345..<500]) : ""
            let fullName = prefix.isEmpty ? name : prefix + "/" + name
            let size = try Self.octal(header[124..<136], path: path, field: "size of '\(fullName)'", at: at)
            guard size <= maxMemberSize else {
                throw CnnError.invalidData(file: path, reason:
                    "tar member '\(fullName)' at byte \(at) claims \(size) bytes, over the limit of \(maxMemberSize)")
            }
            let padded = (size + 511) / 512 * 512
            guard let body = try read(padded, what: "member '\(fullName)'") else {
                throw CnnError.invalidData(file: path, reason:
                    "tar archive is truncated inside member '\(fullName)' (header at byte \(at), \(size) bytes)")
            }
            let type = header[156]
            if type == UInt8(ascii: "0") || type == 0 || type == UInt8(ascii: "7") {
                let name = longName ?? fullName
                longName = nil
                return TarEntry(name: name, bytes: Array(body.prefix(size)))
            }
            if type == UInt8(ascii: "L") {
                // GNU long name: the body is the next member's name.
                longName = Self.string(body[0..<size])
            } else if type == UInt8(ascii: "x") {
                // pax extended header: "LEN key=value\n" records; "path" names the next member.
                if let path = Self.paxPath(Array(body.prefix(size))) { longName = path }
            } else {
                longName = nil
            }
        }
        return nil
    }

    /// Exactly `count` bytes, nil at a clean end of file before any byte, an error if the
    /// file ends part way.
    private func read(_ count: Int, what: String) throws -> [UInt8]? {
        guard let file else { return nil }
        if count == 0 { return [] }
        var got = 0
        let bytes = [UInt8](unsafeUninitializedCapacity: count) { buffer, initialized in
            got = fread(buffer.baseAddress!, 1, count, file)
            initialized = got
        }
        if got == count {
            offset += count
            return bytes
        }
        if ferror(file) != 0 {
            throw CnnError.io(file: path, reason: "read error in \(what): \(String(cString: strerror(errno)))")
        }
        if got == 0 { return nil }
        throw CnnError.invalidData(file: path, reason:
            "tar archive is truncated in \(what): \(got) of \(count) bytes at byte \(offset)")
    }

    /// The "path" record of a pax extended header, if any.
    static func paxPath(_ body: [UInt8]) -> String? {
        var i = 0
        while i < body.count {
            guard let space = body[i...].firstIndex(of: UInt8(ascii: " ")),
                  let length = Int(String(decoding: body[i..<space], as: UTF8.self)), length > 0, i + length <= body.count else { return nil }
            let record = body[(space + 1)..<(i + length - 1)]   // without the newline
            if let equals = record.firstIndex(of: UInt8(ascii: "=")),
               String(decoding: record[record.startIndex..<equals], as: UTF8.self) == "path" {
                return String(decoding: record[(equals + 1)...], as: UTF8.self)
            }
            i += length
        }
        return nil
    }

    static func string(_ field: ArraySlice<UInt8>) -> String {
        String(decoding: field.prefix { $0 != 0 }, as: UTF8.self)
    }

    /// A ustar octal field: optional leading spaces, octal digits, then NUL or space.
    static func octal(_ field: ArraySlice<UInt8>, path: String, field name: String, at offset: Int) throws -> Int {
        var value = 0, digits = 0
        var i = field.startIndex
        while i < field.endIndex && field[i] == UInt8(ascii: " ") { i += 1 }
        while i < field.endIndex, field[i] >= UInt8(ascii: "0"), field[i] <= UInt8(ascii: "7") {
            value = value * 8 + Int(field[i] - UInt8(ascii: "0"))
            digits += 1
            i += 1
        }
        let rest = field[i...]
        guard digits > 0, rest.allSatisfy({ $0 == 0 || $0 == UInt8(ascii: " ") }) else {
            throw CnnError.invalidData(file: path, reason: "damaged tar header at byte \(offset): \(name) is not an octal number")
        }
        return value
    }
}

/// One sample of a shard.
public struct ShardSample: Equatable, Sendable {
    /// The WebDataset key.
    public var key: String
    /// The image file's bytes (JPEG or PNG).
    public var image: [UInt8]
    /// "jpg", "jpeg" or "png", from the member name.
    public var imageExtension: String
    public var label: Int
    /// "<shard>:<key>.<ext>", to name the image in errors.
    public var source: String
}

/// Reads the samples of one shard in order.
public final class ShardSampleReader {
    private let reader: TarReader
    private var pending: TarEntry?

    public init(path: String) throws { reader = try TarReader(path: path) }

    public var path: String { reader.path }

    /// WebDataset's split of a member name into key and extension: the key ends at the
    /// first "." of the last path component.
    public static func split(_ name: String) -> (key: String, ext: String) {
        let slash = name.lastIndex(of: "/").map { name.index(after: $0) } ?? name.startIndex
        guard let dot = name[slash...].firstIndex(of: ".") else { return (name, "") }
        return (String(name[..<dot]), String(name[name.index(after: dot)...]).lowercased())
    }

    /// The next sample, or nil at the end of the shard. Members of other extensions are ignored.
    public func next() throws -> ShardSample? {
        guard let first = try pending ?? reader.next() else { return nil }
        pending = nil
        let key = Self.split(first.name).key
        var group = [first]
        while let entry = try reader.next() {
            if Self.split(entry.name).key == key {
                group.append(entry)
            } else {
                pending = entry
                break
            }
        }
        var image: TarEntry?, ext = "", label: Int?
        for entry in group {
            let e = Self.split(entry.name).ext
            if ImageFolderIndex.imageExtensions.contains(e) {
                guard image == nil else {
                    throw CnnError.invalidData(file: path, reason: "sample '\(key)' has two images (\(image!.name), \(entry.name))")
                }
                image = entry
                ext = e
            } else if e == "cls" {
                let text = String(decoding: entry.bytes, as: UTF8.self).trimmingWhitespace()
                guard let value = Int(text), value >= 0 else {
                    throw CnnError.invalidData(file: path, reason:
                        "sample '\(key)': \(entry.name) holds '\(text.prefix(40))', not a class index")
                }
                label = value
            }
        }
        guard let image else {
            throw CnnError.invalidData(file: path, reason: "sample '\(key)' has no .jpg, .jpeg or .png member")
        }
        guard let label else { throw CnnError.invalidData(file: path, reason: "sample '\(key)' has no .cls member") }
        return ShardSample(key: key, image: image.bytes, imageExtension: ext, label: label, source: "\(path):\(image.name)")
    }
}

/// Which shards a rank reads.
public enum ShardAssignment {
    /// Rank r of `worldSize` takes shards r, r + worldSize, r + 2·worldSize, ... of `shards`.
    public static func shards<T>(_ shards: [T], rank: Int, worldSize: Int) -> [T] {
        precondition(worldSize > 0 && rank >= 0 && rank < worldSize, "rank \(rank) of \(worldSize)")
        return stride(from: rank, to: shards.count, by: worldSize).map { shards[$0] }
    }
}

/// One shard as the manifest records it.
public struct ShardInfo: Equatable, Sendable {
    /// The file name, relative to the manifest's directory.
    public var file: String
    public var samples: Int

    public init(file: String, samples: Int) {
        self.file = file
        self.samples = samples
    }
}

/// The manifest written beside the shards (manifest.tsv): the classes, per split
/// every shard with its sample count, and the training images' channel statistics
/// as RGB (3) and as grey (1). Tab-separated lines:
///   cnn-dist-shards  1
///   classes  <name>  <name> ...
///   shard  <split>  <file>  <samples>
///   statistics  <channels>  <mean>,<mean>,...  <std>,<std>,...
public struct ShardManifest: Equatable, Sendable {
    public static let fileName = "manifest.tsv"
    public var classes: [String]
    /// Shards by split name ("train", "val").
    public var splits: [String: [ShardInfo]]
    /// Normalisation of the training images by channel count (1: luma, 3: RGB).
    public var statistics: [Int: ChannelStatistics]

    public init(classes: [String], splits: [String: [ShardInfo]], statistics: [Int: ChannelStatistics] = [:]) {
        self.classes = classes
        self.splits = splits
        self.statistics = statistics
    }

    public func write(to path: String) throws {
        var text = "cnn-dist-shards\t1\nclasses"
        for name in classes {
            guard !name.contains("\t") && !name.contains("\n") && !name.isEmpty else {
                throw CnnError.invalidData(file: path, reason: "class name '\(name)' cannot be written (empty, or a tab or newline in it)")
            }
            text += "\t" + name
        }
        text += "\n"
        for split in splits.keys.sorted() {
            for shard in splits[split]! { text += "shard\t\(split)\t\(shard.file)\t\(shard.samples)\n" }
        }
        for channels in statistics.keys.sorted() {
            let s = statistics[channels]!
            text += "statistics\t\(channels)\t" + s.mean.map { String($0) }.joined(separator: ",") + "\t"
                + s.std.map { String($0) }.joined(separator: ",") + "\n"
        }
        try FileBytes.write(Array(text.utf8), to: path)
    }

    public static func read(_ path: String) throws -> ShardManifest {
        let lines = String(decoding: try FileBytes.read(path), as: UTF8.self).split(separator: "\n", omittingEmptySubsequences: false)
        guard lines.first.map({ $0.split(separator: "\t").first == "cnn-dist-shards" }) == true else {
            throw CnnError.invalidData(file: path, reason: "line 1: not a cnn-dist shard manifest")
        }
        var classes: [String]?
        var splits = [String: [ShardInfo]]()
        var statistics = [Int: ChannelStatistics]()
        for (number, line) in lines.enumerated().dropFirst() where !line.isEmpty {
            let fields = line.split(separator: "\t", omittingEmptySubsequences: false).map(String.init)
            switch fields[0] {
            case "classes": classes = Array(fields.dropFirst())
            case "shard":
                guard fields.count == 4, let count = Int(fields[3]), count >= 0, !fields[2].contains("/") else {
                    throw CnnError.invalidData(file: path, reason: "line \(number + 1): expected 'shard<TAB>split<TAB>file<TAB>samples'")
                }
                splits[fields[1], default: []].append(ShardInfo(file: fields[2], samples: count))
            case "statistics":
                let numbers = fields.count == 4 ? fields[2...3].map { $0.split(separator: ",").compactMap { Double($0) } } : []
                guard let channels = fields.count == 4 ? Int(fields[1]) : nil, channels == 1 || channels == 3,
                      numbers.allSatisfy({ $0.count == channels && $0.allSatisfy(\.isFinite) }),
                      numbers[1].allSatisfy({ $0 > 0 }) else {
                    throw CnnError.invalidData(file: path, reason:
                        "line \(number + 1): expected 'statistics<TAB>1|3<TAB>mean,...<TAB>std,...' (std > 0)")
                }
                statistics[channels] = ChannelStatistics(mean: numbers[0], std: numbers[1])
            default:
                throw CnnError.invalidData(file: path, reason: "line \(number + 1): unknown record '\(fields[0].prefix(40))'")
            }
        }
        guard let classes, !classes.isEmpty else { throw CnnError.invalidData(file: path, reason: "no classes line") }
        return ShardManifest(classes: classes, splits: splits, statistics: statistics)
    }
}

/// Packs an image folder into shards.
public enum ShardWriter {
    /// Writes the samples of `index` as OUT/<split>-000000.tar, ... Each shard takes
    /// samples until adding one would pass `maxSamples` or `maxBytes` (a shard has at
    /// least one sample). The order is shuffled with `shuffleSeed` (nil keeps the index
    /// order, which groups classes, and is poor for sequential reading). Keys are the
    /// 9-digit positions in the written order; every image's header is checked first,
    /// so an unreadable file is an error naming it before it reaches a shard.
    /// `recode` nil stores each file's bytes as they are; .png or .jpeg(quality) decodes
    /// each image and stores it re-encoded (channels kept).
    public static func pack(_ index: ImageFolderIndex, split: String, to directory: String,
                            maxSamples: Int = 10_000, maxBytes: Int = 1 << 30, shuffleSeed: UInt64? = 0,
                            recode: ImageFileFormat? = nil, decoder: ImageDecoder = ImageDecoder(),
                            statistics: ShardStatisticsAccumulator? = nil) throws -> [ShardInfo] {
        precondition(maxSamples > 0 && maxBytes > 0, "shard limits must be positive")
        guard !split.isEmpty, !split.contains("/") else {
            throw CnnError.invalidArgument(layer: "ShardWriter", argument: "split", value: split, reason: "must be a plain name")
        }
        var order = Array(index.samples.indices)
        if let seed = shuffleSeed {
            var rng = SplitMix64(seed: seed)
            for i in stride(from: order.count - 1, to: 0, by: -1) {
                order.swapAt(i, Int(uniformBelow(UInt64(i + 1), &rng)))
            }
        }
        var shards = [ShardInfo]()
        var writer: TarWriter?
        var inShard = 0
        for (position, sampleIndex) in order.enumerated() {
            let sample = index.samples[sampleIndex]
            var bytes = try FileBytes.read(sample.path)
            var format = try decoder.header(bytes, file: sample.path).format
            switch recode {
            case nil: break
            case .png?:
                bytes = try ImageEncoder.png(try decoder.decode(bytes, file: sample.path))
                format = .png
            case .jpeg(let quality)?:
                bytes = try ImageEncoder.jpeg(try decoder.decode(bytes, file: sample.path), quality: quality)
                format = .jpeg
            }
            if let statistics {
                // DCT-scaled for large JPEGs: the channel means and spreads barely change.
                statistics.add(try decoder.decode(bytes, file: sample.path, channels: 3, atLeast: (64, 64)))
            }
            let key = String(position).leftPadded(to: 9)
            let label = Array(String(sample.label).utf8)
            let size = TarWriter.memberSize(bytes.count) + TarWriter.memberSize(label.count)
            if let open = writer, inShard >= maxSamples || open.bytesWritten + size + 1024 > maxBytes {
                try open.finish()
                shards[shards.count - 1].samples = inShard
                writer = nil
            }
            if writer == nil {
                let name = "\(split)-\(String(shards.count).leftPadded(to: 6)).tar"
                writer = try TarWriter(path: "\(directory)/\(name)")
                shards.append(ShardInfo(file: name, samples: 0))
                inShard = 0
            }
            try writer!.add(name: "\(key).\(format == .jpeg ? "jpg" : "png")", bytes: bytes)
            try writer!.add(name: "\(key).cls", bytes: label)
            inShard += 1
        }
        if let open = writer {
            try open.finish()
            shards[shards.count - 1].samples = inShard
        }
        return shards
    }

    /// Packs ROOT/train and ROOT/val (if present) into `directory` and writes the manifest.
    public static func pack(root: String, to directory: String, maxSamples: Int = 10_000, maxBytes: Int = 1 << 30,
                            shuffleSeed: UInt64? = 0, recode: ImageFileFormat? = nil) throws -> ShardManifest {
        let (train, validation) = try ImageFolderIndex.trainAndValidation(root: root)
        let decoder = ImageDecoder()
        let statistics = ShardStatisticsAccumulator()
        var splits = ["train": try pack(train, split: "train", to: directory, maxSamples: maxSamples,
                                        maxBytes: maxBytes, shuffleSeed: shuffleSeed, recode: recode, decoder: decoder,
                                        statistics: statistics)]
        if let validation {
            splits["val"] = try pack(validation, split: "val", to: directory, maxSamples: maxSamples,
                                     maxBytes: maxBytes, shuffleSeed: shuffleSeed, recode: recode, decoder: decoder)
        }
        let manifest = ShardManifest(classes: train.classes, splits: splits,
                                     statistics: [1: statistics.result(channels: 1), 3: statistics.result(channels: 3)])
        try manifest.write(to: "\(directory)/\(ShardManifest.fileName)")
        return manifest
    }
}

/// Sums of the training images' pixels as RGB and as luma (PIL's convert("L")), for the
/// manifest's normalisation statistics.
public final class ShardStatisticsAccumulator {
    private var sums = [UInt64](repeating: 0, count: 4), squares = [UInt64](repeating: 0, count: 4)
    private var pixels: UInt64 = 0
    public init() {}

    /// Adds an RGB image.
    public func add(_ image: Image8) {
        precondition(image.channels == 3, "statistics take RGB images")
        image.pixels.withUnsafeBufferPointer { px in
            for i in 0..<image.width * image.height {
                let r = px[3 * i], g = px[3 * i + 1], b = px[3 * i + 2]
                for (k, v) in [r, g, b, Image8.luma(r, g, b)].enumerated() {
                    sums[k] &+= UInt64(v)
                    squares[k] &+= UInt64(v) * UInt64(v)
                }
            }
        }
        pixels += UInt64(image.width * image.height)
    }

    /// Mean and population std of pixel / 255 per channel (3: R, G, B; 1: luma); std 1 for a constant channel.
    public func result(channels: Int) -> ChannelStatistics {
        let ks = channels == 3 ? [0, 1, 2] : [3]
        guard pixels > 0 else { return .unit(channels: channels) }
        let n = Double(pixels)
        var mean = [Double](), std = [Double]()
        for k in ks {
            let m = Double(sums[k]) / n
            let s = max(0, Double(squares[k]) / n - m * m).squareRoot() / 255
            mean.append(m / 255)
            std.append(s > 1e-12 ? s : 1)
        }
        return ChannelStatistics(mean: mean, std: std)
    }
}

extension String {
    func trimmingWhitespace() -> String {
        let isSpace: (Character) -> Bool = { $0 == " " || $0 == "\t" || $0 == "\n" || $0 == "\r" }
        guard let first = firstIndex(where: { !isSpace($0) }), let last = lastIndex(where: { !isSpace($0) }) else { return "" }
        return String(self[first...last])
    }
}
