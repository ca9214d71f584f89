// Whole-file reads and writes, and gzip (RFC 1952) through zlib's inflate and
// deflate. Files are small enough (≤ 200 MB) to hold in memory at once.
import CnnCore
import CZlib
#if canImport(Glibc)
import Glibc
#else
import Darwin
#endif

/// Reading and writing whole files, with transparent gzip.
public enum FileBytes {
    /// Whether a file or directory exists at `path`.
    public static func exists(_ path: String) -> Bool {
        var info = stat()
        return stat(path, &info) == 0
    }

    /// Whether `path` names a directory.
    public static func isDirectory(_ path: String) -> Bool {
        var info = stat()
        return stat(path, &info) == 0 && (info.st_mode & S_IFMT) == S_IFDIR
    }

    /// Whether this user may read the file at `path`.
    public static func isReadable(_ path: String) -> Bool { access(path, R_OK) == 0 }

    /// The bytes of the file at `path`, as stored (no decompression).
    public static func read(_ path: String) throws -> [UInt8] {
        guard let file = fopen(path, "rb") else {
            throw CnnError.io(file: path, reason: "cannot open for reading: \(String(cString: strerror(errno)))")
        }
        defer { fclose(file) }
        // A directory opens for reading on Linux, and ftello then reports a size near 2^63.
        var info = stat()
        guard fstat(fileno(file), &info) == 0, (info.st_mode & S_IFMT) == S_IFREG else {
            throw CnnError.io(file: path, reason: isDirectory(path) ? "is a directory; a file is expected here" : "not a regular file")
        }
        guard fseeko(file, 0, SEEK_END) == 0 else {
            throw CnnError.io(file: path, reason: "cannot seek: \(String(cString: strerror(errno)))")
        }
        let size = Int(ftello(file))
        guard size >= 0, fseeko(file, 0, SEEK_SET) == 0 else {
            throw CnnError.io(file: path, reason: "cannot determine the file size (is it a directory?)")
        }
        var readCount = 0
        let bytes = [UInt8](unsafeUninitializedCapacity: size) { buffer, initialized in
            if size > 0 { readCount = fread(buffer.baseAddress!, 1, size, file) }
            initialized = readCount
        }
        guard readCount == size else {
            throw CnnError.io(file: path, reason: "read \(readCount) of \(size) bytes: \(String(cString: strerror(errno)))")
        }
        return bytes
    }

    /// The bytes of the file at `path`, gunzipped if the file starts with the
    /// gzip magic 1f 8b (detected by content, not by name).
    ///
    /// The decompressed size is bounded by `maxBytes` and, as soon as the
    /// first bytes are out, by `expectedSize` (the size a format's header
    /// implies; nil while more bytes are needed): memory follows what the
    /// data claims to be, never a damaged trailer or a gzip bomb.
    public static func readDecompressing(_ path: String, maxBytes: Int = 1 << 32,
                                         expectedSize: (ArraySlice<UInt8>) -> Int? = { _ in nil })
        throws -> (bytes: [UInt8], wasCompressed: Bool) {
        let stored = try read(path)
        if Gzip.isCompressed(stored) {
            return (try Gzip.decompress(stored, file: path, maxBytes: maxBytes, expectedSize: expectedSize), true)
        }
        return (stored, false)
    }

    /// Writes `bytes` to `path`, replacing any existing file.
    public static func write(_ bytes: [UInt8], to path: String) throws {
        guard let file = fopen(path, "wb") else {
            throw CnnError.io(file: path, reason: "cannot open for writing: \(String(cString: strerror(errno)))")
        }
        let written = bytes.withUnsafeBufferPointer { buffer in
            buffer.isEmpty ? 0 : fwrite(buffer.baseAddress!, 1, buffer.count, file)
        }
        let closed = fclose(file)
        guard written == bytes.count, closed == 0 else {
            throw CnnError.io(file: path, reason: "wrote \(written) of \(bytes.count) bytes: \(String(cString: strerror(errno)))")
        }
    }
}

/// gzip compression and decompression in memory through zlib.
public enum Gzip {
    /// Whether `bytes` starts with the gzip magic number 1f 8b.
    public static func isCompressed(_ bytes: [UInt8]) -> Bool {
        bytes.count >= 2 && bytes[0] == 0x1F && bytes[1] == 0x8B
    }

    /// Decompresses a gzip stream (one or more concatenated members).
    ///
    /// Throws `CnnError.invalidData` naming `file` if the stream is corrupt
    /// (bad header, CRC or length), ends before its end-of-stream marker
    /// (a truncated download), or is followed by bytes that are not another member.
    /// The output grows in bounded steps up to `maxBytes`, or up to the size
    /// `expectedSize` reports once the first bytes are out (plus one byte,
    /// so that more data than expected is seen and reported as such).
    public static func decompress(_ bytes: [UInt8], file: String, maxBytes: Int = 1 << 32,
                                  expectedSize: (ArraySlice<UInt8>) -> Int? = { _ in nil }) throws -> [UInt8] {
        var stream = z_stream()
        // windowBits 15 + 16: gzip wrapper only, with CRC-32 and length checks.
        guard inflateInit2_(&stream, 15 + 16, zlibVersion(), Int32(MemoryLayout<z_stream>.size)) == Z_OK else {
            throw CnnError.invalidData(file: file, reason: "zlib inflateInit2 failed")
        }
        defer { inflateEnd(&stream) }

        // The trailer's ISIZE is not trusted: a damaged one would size the buffer.
        var limit = maxBytes
        var limitIsExpected = false
        var output = [UInt8](repeating: 0, count: min(1 << 16, limit + 1))
        var produced = 0

        try bytes.withUnsafeBufferPointer { input in
            stream.next_in = UnsafeMutablePointer(mutating: input.baseAddress!)
            stream.avail_in = UInt32(input.count)
            while true {
                if !limitIsExpected, produced > 0, let expected = expectedSize(output[..<produced]) {
                    limit = min(limit, max(expected, 0))
                    limitIsExpected = true
                    if output.count > limit + 1 { output.removeLast(output.count - max(limit + 1, produced)) }
                    output.reserveCapacity(limit + 1)
                }
                if produced >= limit + 1 {
                    // More than the header implies: stop here and let the format's parser name the excess.
                    guard limitIsExpected else {
                        throw CnnError.invalidData(file: file, reason: "decompresses to more than \(limit) bytes, the most this reader accepts")
                    }
                    return
                }
                if produced == output.count {
                    output.append(contentsOf: repeatElement(0, count: min(max(output.count, 1 << 16), limit + 1 - output.count)))
                }
                let space = output.count - produced
                let chunk = min(space, Int(UInt32.max))
                let status: Int32 = output.withUnsafeMutableBufferPointer { out in
                    stream.next_out = out.baseAddress! + produced
                    stream.avail_out = UInt32(chunk)
                    return inflate(&stream, Z_NO_FLUSH)
                }
                produced += chunk - Int(stream.avail_out)
                let consumed = input.count - Int(stream.avail_in)
                switch status {
                case Z_STREAM_END:
                    if stream.avail_in == 0 { return }
                    let rest = input.count - consumed
                    if rest >= 2 && input[consumed] == 0x1F && input[consumed + 1] == 0x8B {
                        inflateReset(&stream)   // next member of a multi-member file
                        continue
                    }
                    throw CnnError.invalidData(file: file, reason:
                        "\(rest) unexpected bytes after the end of the gzip stream (at compressed offset \(consumed))")
                case Z_OK:
                    if stream.avail_in == 0 && stream.avail_out > 0 {
                        throw CnnError.invalidData(file: file, reason:
                            "gzip stream is truncated: all \(input.count) compressed bytes read (\(produced) bytes decompressed) without reaching the end-of-stream marker")
                    }
                case Z_BUF_ERROR:
                    throw CnnError.invalidData(file: file, reason:
                        "gzip stream is truncated: all \(input.count) compressed bytes read (\(produced) bytes decompressed) without reaching the end-of-stream marker")
                default:
                    let message = stream.msg.map { String(cString: $0) } ?? "zlib error \(status)"
                    throw CnnError.invalidData(file: file, reason:
                        "corrupt gzip stream at compressed offset \(consumed): \(message)")
                }
            }
        }
        output.removeLast(output.count - produced)
        return output
    }

    /// Compresses `bytes` into a single gzip member at the given zlib level (0–9).
    public static func compress(_ bytes: [UInt8], level: Int32 = 6) -> [UInt8] {
        var stream = z_stream()
        let status = deflateInit2_(&stream, level, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY,
                                   zlibVersion(), Int32(MemoryLayout<z_stream>.size))
        precondition(status == Z_OK, "zlib deflateInit2 failed with \(status)")
        defer { deflateEnd(&stream) }
        let bound = Int(deflateBound(&stream, uLong(bytes.count))) + 64
        var output = [UInt8](repeating: 0, count: bound)
        var produced = 0
        bytes.withUnsafeBufferPointer { input in
            output.withUnsafeMutableBufferPointer { out in
                stream.next_in = UnsafeMutablePointer(mutating: input.baseAddress ?? UnsafePointer(out.baseAddress!))
                stream.avail_in = UInt32(input.count)
                stream.next_out = out.baseAddress!
                stream.avail_out = UInt32(out.count)
                let result = deflate(&stream, Z_FINISH)
                precondition(result == Z_STREAM_END, "zlib deflate did not finish (\(result))")
                produced = out.count - Int(stream.avail_out)
            }
        }
        output.removeLast(output.count - produced)
        return output
    }
}
