import CnnCore
import Foundation

// TensorBoard event files, written without TensorFlow or a protobuf library.
//
// A file `events.out.tfevents.<unixtime>.<host>` is a sequence of TFRecords
// (tensorflow/core/lib/io/record_writer.cc):
//
//     uint64  length                      little-endian
//     uint32  masked CRC-32C of the 8 length bytes
//     byte    data[length]                one serialized Event
//     uint32  masked CRC-32C of data
//
// with mask(crc) = ((crc >> 15) | (crc << 17)) + 0xa282ead8 (mod 2^32).
//
// Each record is an Event (tensorboard/compat/proto/event.proto). The few
// fields written here, with their protobuf field numbers and wire types:
//
//     Event                                   Summary
//       1 wall_time     double  (fixed64)       1 value   repeated Value (length-delimited)
//       2 step          int64   (varint)      Summary.Value
//       3 file_version  string  (length)        1 tag           string (length)
//       5 summary       Summary (length)        2 simple_value  float  (fixed32)
//       6 session_log   SessionLog (length)   SessionLog
//                                               1 status        enum (varint; START = 1)
//
// Images and histograms (tensorboard/compat/proto/summary.proto, histogram.proto):
//
//     Summary.Value                           Summary.Image
//       4 image  Image (length)                 1 height int32 (varint)   3 colorspace int32 (1 grey, 3 RGB)
//       5 histo  HistogramProto (length)        2 width  int32 (varint)   4 encoded_image_string bytes (PNG)
//     HistogramProto
//       1 min double  2 max double  3 num double  4 sum double  5 sum_squares double (all fixed64)
//       6 bucket_limit repeated double (packed)  7 bucket repeated double (packed)
//
// TensorBoard reads bucket i as the counts in (bucket_limit[i-1], bucket_limit[i]], the first
// from `min`. The buckets written here are numpy.histogram(values, bins=30)'s (equal widths
// from min to max, the last bin closed), given by their right edges, as PyTorch's
// add_histogram(bins=30) writes them; non-finite values are left out of every field.
//
// The first record is an Event with file_version "brain.Event:2", which
// readers use to recognise the file. TensorBoard reads `simple_value` as a
// scalar (its data_compat layer migrates it to the scalars plugin).

/// Writes scalars to a TensorBoard event file.
///
/// Scalars are encoded at once and kept in memory until `flush()` appends
/// them to the file in one write, so a crash loses at most the unflushed
/// scalars and leaves a file whose records are all readable (a write cut
/// short by a crash leaves one incomplete record at the end, which
/// TensorBoard skips). Not thread-safe: use from one thread.
public final class TensorBoardWriter {
    /// The event file's path.
    public let path: String
    private(set) var fd: Int32
    private var pending: [UInt8] = []

    /// The `file_version` of the first record.
    public static let fileVersion = "brain.Event:2"

    /// Creates `directory` if needed and starts a new event file there,
    /// `events.out.tfevents.<unixtime>.<host>` (with a `.N` suffix if a file
    /// of that name exists), whose first record carries the file version.
    public init(directory: String) throws {
        do {
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        } catch {
            throw CnnError.io(file: directory, reason: "cannot create the TensorBoard directory: \(error.localizedDescription)")
        }
        let now = Date().timeIntervalSince1970
        let base = (directory as NSString).appendingPathComponent(
            "events.out.tfevents.\(Int(now)).\(tensorBoardHostName())")
        var candidate = base, attempt = 0, opened: Int32 = -1
        while true {
            opened = open(candidate, O_WRONLY | O_CREAT | O_EXCL | O_APPEND, 0o644)
            if opened >= 0 || errno != EEXIST || attempt >= 1000 { break }
            attempt += 1
            candidate = base + ".\(attempt)"
        }
        guard opened >= 0 else {
            throw CnnError.io(file: candidate, reason: "cannot create the event file: \(String(cString: strerror(errno)))")
        }
        path = candidate
        fd = opened
        var event = ProtobufEncoder()
        event.double(field: 1, now)
        event.string(field: 3, Self.fileVersion)
        appendRecord(event.bytes)
        try flush()
    }

    deinit {
        if fd >= 0 { _ = try? flush(); closeDescriptor(fd) }
    }

    /// Records `value` under `tag` (e.g. "loss/train") at `step`; written by the next `flush()`.
    /// The value is stored as a 32-bit float, as TensorBoard's `simple_value` is.
    public func addScalar(tag: String, value: Double, step: Int) throws {
        guard fd >= 0 else { throw CnnError.io(file: path, reason: "addScalar after close()") }
        var summaryValue = ProtobufEncoder()
        summaryValue.string(field: 1, tag)
        summaryValue.float(field: 2, Float(value))
        appendSummary(summaryValue.bytes, step: step)
    }

    /// Records an image summary (Summary.Image) of a PNG of `width` x `height` pixels with `channels` 1 or 3.
    public func addImage(tag: String, png: [UInt8], width: Int, height: Int, channels: Int, step: Int) throws {
        guard fd >= 0 else { throw CnnError.io(file: path, reason: "addImage after close()") }
        var image = ProtobufEncoder()
        image.int64(field: 1, Int64(height))
        image.int64(field: 2, Int64(width))
        image.int64(field: 3, Int64(channels))
        image.message(field: 4, png)
        var summaryValue = ProtobufEncoder()
        summaryValue.string(field: 1, tag)
        summaryValue.message(field: 4, image.bytes)
        appendSummary(summaryValue.bytes, step: step)
    }

    /// Records a histogram summary of the finite values in `values` (see the file comment).
    public func addHistogram(tag: String, values: UnsafeBufferPointer<Float>, step: Int, bins: Int = 30) throws {
        guard fd >= 0 else { throw CnnError.io(file: path, reason: "addHistogram after close()") }
        let h = Histogram(values, bins: bins)
        var histo = ProtobufEncoder()
        histo.double(field: 1, h.min)
        histo.double(field: 2, h.max)
        histo.double(field: 3, h.count)
        histo.double(field: 4, h.sum)
        histo.double(field: 5, h.sumSquares)
        histo.packedDoubles(field: 6, h.limits)
        histo.packedDoubles(field: 7, h.counts)
        var summaryValue = ProtobufEncoder()
        summaryValue.string(field: 1, tag)
        summaryValue.message(field: 5, histo.bytes)
        appendSummary(summaryValue.bytes, step: step)
    }

    /// Appends an Event at `step` whose Summary holds the one Summary.Value `value`.
    func appendSummary(_ value: [UInt8], step: Int) {
        var summary = ProtobufEncoder()
        summary.message(field: 1, value)
        var event = ProtobufEncoder()
        event.double(field: 1, Date().timeIntervalSince1970)
        event.int64(field: 2, Int64(step))
        event.message(field: 5, summary.bytes)
        appendRecord(event.bytes)
    }

    /// Marks a restart at `step` (SessionLog START): TensorBoard drops the
    /// events of earlier files at this step and later, so a resumed run's
    /// curves continue from its checkpoint without duplicate steps.
    public func addSessionStart(step: Int) throws {
        guard fd >= 0 else { throw CnnError.io(file: path, reason: "addSessionStart after close()") }
        var sessionLog = ProtobufEncoder()
        sessionLog.int64(field: 1, 1)   // status START
        var event = ProtobufEncoder()
        event.double(field: 1, Date().timeIntervalSince1970)
        event.int64(field: 2, Int64(step))
        event.message(field: 6, sessionLog.bytes)
        appendRecord(event.bytes)
    }

    /// Appends the records added since the last flush to the file in one write.
    public func flush() throws {
        guard fd >= 0, !pending.isEmpty else { return }
        var written = 0
        while written < pending.count {
            let n = pending.withUnsafeBytes { write(fd, $0.baseAddress! + written, pending.count - written) }
            if n < 0 {
                if errno == EINTR { continue }
                throw CnnError.io(file: path, reason: "cannot write the event file: \(String(cString: strerror(errno)))")
            }
            written += n
        }
        pending.removeAll(keepingCapacity: true)
    }

    /// Flushes and closes the file; later calls do nothing.
    public func close() throws {
        guard fd >= 0 else { return }
        defer { closeDescriptor(fd); fd = -1 }
        try flush()
    }

    /// Frames `data` as one TFRecord into the pending bytes.
    private func appendRecord(_ data: [UInt8]) {
        let length = littleEndianBytes(UInt64(data.count))
        pending += length
        pending += littleEndianBytes(CRC32C.masked(length))
        pending += data
        pending += littleEndianBytes(CRC32C.masked(data))
    }
}

/// numpy.histogram(values, bins) of the finite values, with their count, sum and sum of
/// squares: `limits` the right bin edges, `counts` the values per bin. No finite values: one
/// empty bin at 0.
public struct Histogram: Equatable {
    public var min = 0.0, max = 0.0, count = 0.0, sum = 0.0, sumSquares = 0.0
    public var limits: [Double] = [], counts: [Double] = []

    public init(_ values: UnsafeBufferPointer<Float>, bins: Int) {
        var lo = Double.infinity, hi = -Double.infinity
        for v in values where v.isFinite {
            let d = Double(v)
            lo = Swift.min(lo, d); hi = Swift.max(hi, d)
            count += 1; sum += d; sumSquares += d * d
        }
        guard count > 0 else { limits = [0]; counts = [0]; return }
        min = lo; max = hi
        // numpy widens an empty range to [v - 0.5, v + 0.5].
        let (first, last) = hi > lo ? (lo, hi) : (lo - 0.5, hi + 0.5)
        let n = Swift.max(1, bins)
        let width = (last - first) / Double(n)
        limits = (1...n).map { $0 == n ? last : first + Double($0) * width }
        counts = [Double](repeating: 0, count: n)
        for v in values where v.isFinite {
            // numpy: bin = floor((v - first) / width), the maximum in the last bin.
            let k = Swift.min(n - 1, Int(((Double(v) - first) / (last - first) * Double(n)).rounded(.down)))
            counts[Swift.max(0, k)] += 1
        }
    }
}

/// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), as TFRecord uses.
public enum CRC32C {
    private static let table: [UInt32] = (0..<256).map { i -> UInt32 in
        var c = UInt32(i)
        for _ in 0..<8 { c = (c & 1) != 0 ? (c >> 1) ^ 0x82F6_3B78 : c >> 1 }
        return c
    }

    /// The CRC-32C of `bytes` ("123456789" gives 0xE3069283).
    public static func checksum<S: Sequence>(_ bytes: S) -> UInt32 where S.Element == UInt8 {
        var crc: UInt32 = 0xFFFF_FFFF
        for b in bytes { crc = table[Int((crc ^ UInt32(b)) & 0xFF)] ^ (crc >> 8) }
        return crc ^ 0xFFFF_FFFF
    }

    /// TFRecord's masked CRC: the checksum rotated right by 15 bits plus 0xa282ead8.
    public static func masked<S: Sequence>(_ bytes: S) -> UInt32 where S.Element == UInt8 {
        let crc = checksum(bytes)
        return ((crc >> 15) | (crc << 17)) &+ 0xA282_EAD8
    }
}

/// The few protobuf encodings an Event needs (proto3 wire format).
struct ProtobufEncoder {
    private(set) var bytes: [UInt8] = []

    // Wire types.
    private static let varint: UInt64 = 0, fixed64: UInt64 = 1, lengthDelimited: UInt64 = 2, fixed32: UInt64 = 5

    private mutating func key(_ field: Int, _ wireType: UInt64) { varint(UInt64(field) << 3 | wireType) }

    private mutating func varint(_ value: UInt64) {
        var v = value
        while v >= 0x80 {
            bytes.append(UInt8(v & 0x7F) | 0x80)
            v >>= 7
        }
        bytes.append(UInt8(v))
    }

    /// int64 as a varint (negative values take ten bytes, two's complement).
    mutating func int64(field: Int, _ value: Int64) {
        key(field, Self.varint)
        varint(UInt64(bitPattern: value))
    }

    mutating func double(field: Int, _ value: Double) {
        key(field, Self.fixed64)
        bytes += littleEndianBytes(value.bitPattern)
    }

    mutating func float(field: Int, _ value: Float) {
        key(field, Self.fixed32)
        bytes += littleEndianBytes(value.bitPattern)
    }

    /// A packed repeated double field: one length-delimited run of little-endian doubles.
    mutating func packedDoubles(field: Int, _ values: [Double]) {
        message(field: field, values.flatMap { littleEndianBytes($0.bitPattern) })
    }

    mutating func string(field: Int, _ value: String) { message(field: field, Array(value.utf8)) }

    /// A length-delimited field: a nested message, bytes or a string.
    mutating func message(field: Int, _ payload: [UInt8]) {
        key(field, Self.lengthDelimited)
        varint(UInt64(payload.count))
        bytes += payload
    }
}

/// close(2), named so it is not shadowed by `TensorBoardWriter.close()`.
private func closeDescriptor(_ fd: Int32) { _ = close(fd) }

private func littleEndianBytes<T: FixedWidthInteger>(_ value: T) -> [UInt8] {
    withUnsafeBytes(of: value.littleEndian) { Array($0) }
}

/// The host name for the file name, with '/' (never in a host name, but a path separator) replaced.
private func tensorBoardHostName() -> String {
    let name = hostNameForReports()
    return name.isEmpty || name == "?" ? "localhost" : name.replacingOccurrences(of: "/", with: "_")
}
