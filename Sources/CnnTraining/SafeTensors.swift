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

    /// Parses a safetensors file's bytes; throws naming `file` and what is wrong.
    public static func decode(_ bytes: [UInt8], file: String) throws -> (tensors: [SafeTensor], metadata: [String: String]) {
        func bad(_ reason: String) -> CnnError { CnnError.invalidCheckpoint(file: file, reason: reason) }
        guard bytes.count >= 8 else { throw bad("file is \(bytes.count) bytes, shorter than the 8-byte header length") }
        let headerLength = bytes.withUnsafeBytes { UInt64(littleEndian: $0.loadUnaligned(as: UInt64.self)) }
        guard headerLength <= UInt64(bytes.count - 8), headerLength < 100_000_000 else {
            throw bad("header length \(headerLength) exceeds the file size \(bytes.count)")
        }
        let dataStart = 8 + Int(headerLength)
        guard let object = try? JSONSerialization.jsonObject(with: Data(bytes[8..<dataStart])),
              let header = object as? [String: Any] else { throw bad("header is not a JSON object") }
        var metadata: [String: String] = [:]
        var tensors: [(Int, SafeTensor)] = []
        let dataLength = bytes.count - dataStart
        for (name, value) in header {
            if name == "__metadata__" {
                guard let m = value as? [String: String] else { throw bad("__metadata__ is not a string map") }
                metadata = m
                continue
            }
            guard let entry = value as? [String: Any], let dtypeName = entry["dtype"] as? String,
                  let shape = entry["shape"] as? [Int], let offsets = entry["data_offsets"] as? [Int],
                  offsets.count == 2 else { throw bad("tensor '\(name)' has a malformed header entry") }
            guard let dtype = SafeTensor.DType(rawValue: dtypeName) else {
                throw bad("tensor '\(name)' has dtype \(dtypeName); only F32 and I64 are supported")
            }
            guard shape.allSatisfy({ $0 >= 0 }) else { throw bad("tensor '\(name)' has a negative dimension") }
            let count = shape.reduce(1) { $0.multipliedReportingOverflow(by: $1).overflow ? Int.max : $0 * $1 }
            let width = dtype == .f32 ? 4 : 8
            guard offsets[0] >= 0, offsets[0] <= offsets[1], offsets[1] <= dataLength else {
                throw bad("tensor '\(name)' data_offsets \(offsets) fall outside the \(dataLength) data bytes")
            }
            guard count < Int.max / 8, offsets[1] - offsets[0] == count * width else {
                throw bad("tensor '\(name)' of shape \(shape) needs \(count) x \(width) bytes, has \(offsets[1] - offsets[0])")
            }
            let slice = Array(bytes[(dataStart + offsets[0])..<(dataStart + offsets[1])])
            var t = SafeTensor(name: name, int64s: [], shape: shape)
            t.dtype = dtype
            t.bytes = slice
            tensors.append((offsets[0], t))
        }
        return (tensors.sorted { $0.0 < $1.0 }.map(\.1), metadata)
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
