import Foundation
import CnnCore

/// One tensor of a safetensors file.
public struct SafeTensor: Equatable {
    public enum DType: String { case f32 = "F32", i64 = "I64" }
    public var name: String
    public var dtype: DType
    public var shape: [Int]
    /// Raw little-endian bytes.
    public var bytes: [UInt8]

    public init(name: String, floats: UnsafeBufferPointer<Float>, shape: [Int]) {
        self.name = name
        dtype = .f32
        self.shape = shape
        bytes = Array(UnsafeRawBufferPointer(floats))
    }

    public init(name: String, int64s: [Int64], shape: [Int]) {
        self.name = name
        dtype = .i64
        self.shape = shape
        bytes = int64s.withUnsafeBytes { Array($0) }
    }

    /// The values as floats (I64 converted).
    public func floats() -> [Float] {
        switch dtype {
        case .f32: return bytes.withUnsafeBytes { Array($0.bindMemory(to: Float.self)) }
        case .i64: return bytes.withUnsafeBytes { $0.bindMemory(to: Int64.self).map { Float($0) } }
        }
    }
}

/// The safetensors format (huggingface/safetensors): an 8-byte little-endian
/// header length, a JSON header {name: {dtype, shape, data_offsets}}, then the
/// data. PyTorch loads it with `safetensors.torch.load_file`.
public enum SafeTensors {
    /// The file's bytes, tensors in the given order, header padded to 8 bytes.
    public static func encode(_ tensors: [SafeTensor], metadata: [String: String] = [:]) throws -> [UInt8] {
        var header: [String: Any] = [:]
        var offset = 0
        for t in tensors {
            header[t.name] = ["dtype": t.dtype.rawValue, "shape": t.shape, "data_offsets": [offset, offset + t.bytes.count]]
            offset += t.bytes.count
        }
        if !metadata.isEmpty { header["__metadata__"] = metadata }
        var json = Array(try JSONSerialization.data(withJSONObject: header, options: [.sortedKeys]))
        while json.count % 8 != 0 { json.append(0x20) }
        var out = [UInt8]()
        out.reserveCapacity(8 + json.count + offset)
        withUnsafeBytes(of: UInt64(json.count).littleEndian) { out.append(contentsOf: $0) }
        out.append(contentsOf: json)
        for t in tensors { out.append(contentsOf: t.bytes) }
        return out
    }

/// Parses safetensors bytes strictly: the one reader of resume, eval,
    /// predict and init-from. Tensors come back in file (data offset) order,
    /// so `encode` of the result reproduces a file cnn-dist wrote byte for byte;
    /// F64, F16 and BF16 are converted to F32, I32 to I64. The tensors must tile
    /// the data exactly (no overlap, no gap, nothing after the last), as the
    /// reference implementation checks. `file` only names the source in errors.
    public static func decode(_ bytes: [UInt8], file: String) throws -> (tensors: [SafeTensor], metadata: [String: String]) {
        func bad(_ reason: String) -> CnnError { CnnError.invalidCheckpoint(file: file, reason: reason) }
        guard bytes.count >= 8 else {
            throw bad("truncated: \(bytes.count) bytes, shorter than the 8-byte header length field")
        }
        let headerLength = bytes.withUnsafeBytes { UInt64(littleEndian: $0.loadUnaligned(as: UInt64.self)) }
        guard headerLength <= 100_000_000 else {
            throw bad("header length \(headerLength) is implausible (over 100 MB); not a safetensors file?")
        }
        guard headerLength <= UInt64(bytes.count - 8) else {
            throw bad("truncated: the header claims \(headerLength) bytes but only \(bytes.count - 8) follow the length field")
        }
        let dataStart = 8 + Int(headerLength)
        let object: Any
        do {
            object = try JSONSerialization.jsonObject(with: Data(bytes[8..<dataStart]))
        } catch {
            throw bad("header (\(headerLength) bytes) is not valid JSON: \(error.localizedDescription)")
        }
        guard let header = object as? [String: Any] else { throw bad("header is JSON but not an object") }

        var metadata: [String: String] = [:]
        var entries: [(begin: Int, end: Int, name: String, dtype: String, shape: [Int])] = []
        for (name, value) in header {
            if name == "__metadata__" {
                guard let m = value as? [String: String] else { throw bad("__metadata__ is not a map of strings") }
                metadata = m
                continue
            }
            guard let entry = value as? [String: Any] else { throw bad("tensor '\(name)': header entry is not an object") }
            guard let dtype = entry["dtype"] as? String else { throw bad("tensor '\(name)': missing or non-string dtype") }
            guard let shapeValues = entry["shape"] as? [Any], let shape = integers(shapeValues) else {
                throw bad("tensor '\(name)': shape is missing or not a list of integers")
            }
            guard let offsetValues = entry["data_offsets"] as? [Any], let offsets = integers(offsetValues),
                  offsets.count == 2 else {
                throw bad("tensor '\(name)': data_offsets is missing or not two integers")
            }
            guard shape.allSatisfy({ $0 >= 0 }) else { throw bad("tensor '\(name)': negative dimension in shape \(shape)") }
            entries.append((offsets[0], offsets[1], name, dtype, shape))
        }

        let dataLength = bytes.count - dataStart
        entries.sort { ($0.begin, $0.end, $0.name) < ($1.begin, $1.end, $1.name) }
        var tensors: [SafeTensor] = []
        tensors.reserveCapacity(entries.count)
        var expectedBegin = 0
        for e in entries {
            guard let width = storedWidth(e.dtype) else {
                throw bad("tensor '\(e.name)' has dtype \(e.dtype); supported are F32, F64, F16, BF16 (read as F32) and I64, I32 (read as I64)")
            }
            guard e.begin <= e.end else {
                throw bad("tensor '\(e.name)': data_offsets [\(e.begin), \(e.end)] are reversed (begin after end)")
            }
            guard e.begin >= 0, e.end <= dataLength else {
                throw bad("tensor '\(e.name)': data_offsets [\(e.begin), \(e.end)] fall outside the \(dataLength) data bytes"
                          + (e.end > dataLength ? " (file truncated?)" : ""))
            }
            var count = 1
            for d in e.shape {
                let (product, overflow) = count.multipliedReportingOverflow(by: d)
                guard !overflow, product <= Int.max / 8 else { throw bad("tensor '\(e.name)': shape \(e.shape) is too large") }
                count = product
            }
            guard e.end - e.begin == count * width else {
                throw bad("tensor '\(e.name)' of dtype \(e.dtype) and shape [\(e.shape.map(String.init).joined(separator: ", "))] "
                          + "needs \(count * width) bytes but data_offsets [\(e.begin), \(e.end)] give \(e.end - e.begin)")
            }
            guard e.begin == expectedBegin else {
                throw bad(e.begin < expectedBegin ? "tensor '\(e.name)': data overlaps the previous tensor's (offset \(e.begin) < \(expectedBegin))"
                                                  : "tensor '\(e.name)': \(e.begin - expectedBegin) bytes of unused data before it (offset \(e.begin), expected \(expectedBegin))")
            }
            expectedBegin = e.end
            let raw = bytes[(dataStart + e.begin)..<(dataStart + e.end)]
            tensors.append(convertStored(name: e.name, dtype: e.dtype, shape: e.shape, raw: raw, count: count))
        }
        guard expectedBegin == dataLength else {
            throw bad("\(dataLength - expectedBegin) unexpected bytes after the last tensor's data (the tensors cover \(expectedBegin) of \(dataLength))")
        }
        return (tensors, metadata)
    }
}

/// Writes `bytes` to `path` crash-consistently: a temporary file in the same
/// folder, fsync, rename over the target, fsync the folder. A reader sees the
/// old file or the new one, never half of one.
public func writeFileAtomically(_ bytes: [UInt8], to path: String) throws {
    let directory = (path as NSString).deletingLastPathComponent
    let temporary = path + ".tmp-\(getpid())"
    let fd = open(temporary, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
    guard fd >= 0 else { throw CnnError.io(file: temporary, reason: String(cString: strerror(errno))) }
    var written = 0
    while written < bytes.count {
        let n = bytes.withUnsafeBytes { write(fd, $0.baseAddress! + written, bytes.count - written) }
        if n < 0 {
            let reason = String(cString: strerror(errno))
            close(fd); unlink(temporary)
            throw CnnError.io(file: temporary, reason: reason)
        }
        written += n
    }
    guard fsync(fd) == 0, close(fd) == 0 else {
        unlink(temporary)
        throw CnnError.io(file: temporary, reason: "fsync/close failed: \(String(cString: strerror(errno)))")
    }
    guard rename(temporary, path) == 0 else {
        let reason = String(cString: strerror(errno))
        unlink(temporary)
        throw CnnError.io(file: path, reason: "rename failed: \(reason)")
    }
    let dfd = open(directory.isEmpty ? "." : directory, O_RDONLY)
    if dfd >= 0 { fsync(dfd); close(dfd) }
}

/// JSON numbers that are all exact integers, else nil.
private func integers(_ values: [Any]) -> [Int]? {
    var result: [Int] = []
    for v in values {
        guard let n = v as? NSNumber else { return nil }
        let d = n.doubleValue
        guard d.rounded() == d, abs(d) < 9e15 else { return nil }
        result.append(n.intValue)
    }
    return result
}

/// Bytes per element of the dtypes a stored tensor may have; nil for others.
private func storedWidth(_ dtype: String) -> Int? {
    switch dtype {
    case "F32", "I32": return 4
    case "F64", "I64": return 8
    case "F16", "BF16": return 2
    default: return nil
    }
}

/// One stored tensor as F32 or I64 (little-endian host assumed, as safetensors is).
