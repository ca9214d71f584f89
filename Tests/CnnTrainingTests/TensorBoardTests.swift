import CnnDistributed
import CnnTraining
import Foundation
import XCTest

/// Reads the event files back with a reader written from the format
/// description alone (TFRecord framing, masked CRC-32C, protobuf wire format),
/// sharing no code with the writer: its CRC is bitwise, its protobuf decoder
/// generic over wire types.
final class TensorBoardTests: XCTestCase {
    // MARK: Independent reader

    /// Bit-at-a-time CRC-32C (reflected Castagnoli polynomial 0x82F63B78).
    static func crc32cBitwise(_ bytes: ArraySlice<UInt8>) -> UInt32 {
        var crc: UInt32 = 0xFFFF_FFFF
        for byte in bytes {
            crc ^= UInt32(byte)
            for _ in 0..<8 { crc = (crc >> 1) ^ (0x82F6_3B78 & (0 &- (crc & 1))) }
        }
        return ~crc
    }

    static func mask(_ crc: UInt32) -> UInt32 { ((crc >> 15) | (crc << 17)) &+ 0xA282_EAD8 }

    static func uint(_ bytes: [UInt8], _ offset: Int, _ count: Int) -> UInt64 {
        (0..<count).reduce(UInt64(0)) { $0 | UInt64(bytes[offset + $1]) << (8 * UInt64($1)) }
    }

    /// Splits a TFRecord file into its records, checking both masked CRCs of each.
    static func records(_ bytes: [UInt8], file: StaticString = #filePath, line: UInt = #line) -> [[UInt8]] {
        var records: [[UInt8]] = []
        var offset = 0
        while offset < bytes.count {
            guard offset + 12 <= bytes.count else { XCTFail("truncated header at \(offset)", file: file, line: line); break }
            let length = Int(uint(bytes, offset, 8))
            XCTAssertEqual(UInt32(uint(bytes, offset + 8, 4)), mask(crc32cBitwise(bytes[offset..<(offset + 8)])),
                           "length CRC of the record at \(offset)", file: file, line: line)
            let start = offset + 12, end = start + length
            guard end + 4 <= bytes.count else { XCTFail("truncated record at \(offset)", file: file, line: line); break }
            XCTAssertEqual(UInt32(uint(bytes, end, 4)), mask(crc32cBitwise(bytes[start..<end])),
                           "data CRC of the record at \(offset)", file: file, line: line)
            records.append(Array(bytes[start..<end]))
            offset = end + 4
        }
        return records
    }

    /// A decoded protobuf field: its number and its value by wire type.
    enum Field {
        case varint(UInt64), fixed64(UInt64), bytes([UInt8]), fixed32(UInt32)
    }

    /// Decodes one message level into (field number, value) pairs; nil if malformed.
    static func decode(_ bytes: [UInt8]) -> [(Int, Field)]? {
        var fields: [(Int, Field)] = []
        var i = 0
        func varint() -> UInt64? {
            var value: UInt64 = 0, shift: UInt64 = 0
            while i < bytes.count, shift < 64 {
                let b = bytes[i]
                i += 1
                value |= UInt64(b & 0x7F) << shift
                if b < 0x80 { return value }
                shift += 7
            }
            return nil
        }
        while i < bytes.count {
            guard let key = varint() else { return nil }
            let number = Int(key >> 3)
            switch key & 7 {
            case 0:
                guard let v = varint() else { return nil }
                fields.append((number, .varint(v)))
            case 1:
                guard i + 8 <= bytes.count else { return nil }
                fields.append((number, .fixed64(uint(bytes, i, 8))))
                i += 8
            case 2:
                guard let n = varint(), i + Int(n) <= bytes.count else { return nil }
                fields.append((number, .bytes(Array(bytes[i..<(i + Int(n))]))))
                i += Int(n)
            case 5:
                guard i + 4 <= bytes.count else { return nil }
                fields.append((number, .fixed32(UInt32(uint(bytes, i, 4)))))
                i += 4
            default:
                return nil
            }
        }
        return fields
    }

    /// An Event as far as these tests need it.
    struct Event {
        var wallTime: Double?
        var step: Int64 = 0
        var fileVersion: String?
        var scalars: [(tag: String, value: Float)] = []
    }

    /// Event: 1 wall_time double, 2 step int64, 3 file_version string, 5 summary;
    /// Summary: 1 value (repeated); Value: 1 tag string, 2 simple_value float.
    static func event(_ record: [UInt8]) -> Event? {
        guard let fields = decode(record) else { return nil }
        var event = Event()
        for (number, field) in fields {
            switch (number, field) {
            case let (1, .fixed64(bits)): event.wallTime = Double(bitPattern: bits)
            case let (2, .varint(v)): event.step = Int64(bitPattern: v)
            case let (3, .bytes(b)): event.fileVersion = String(decoding: b, as: UTF8.self)
            case let (5, .bytes(summary)):
                guard let values = decode(summary) else { return nil }
                for case let (1, .bytes(valueBytes)) in values {
                    guard let value = decode(valueBytes) else { return nil }
                    var tag: String?, simple: Float?
                    for (n, f) in value {
                        if n == 1, case let .bytes(b) = f { tag = String(decoding: b, as: UTF8.self) }
                        if n == 2, case let .fixed32(bits) = f { simple = Float(bitPattern: bits) }
                    }
                    if let tag, let simple { event.scalars.append((tag, simple)) }
                }
            default: break
            }
        }
        return event
    }

    static func eventFiles(in directory: String) throws -> [String] {
        try FileManager.default.contentsOfDirectory(atPath: directory)
            .filter { $0.hasPrefix("events.out.tfevents.") }.sorted().map { directory + "/" + $0 }
    }

    private func temporaryDirectory() throws -> String {
        let dir = NSTemporaryDirectory() + "cnn-dist-tb-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        addTeardownBlock { try? FileManager.default.removeItem(atPath: dir) }
        return dir
    }

    // MARK: Tests

    func testCRC32CKnownAnswers() {
        XCTAssertEqual(CRC32C.checksum(Array("123456789".utf8)), 0xE306_9283)
        XCTAssertEqual(CRC32C.checksum([UInt8]()), 0)
        // RFC 3720 (iSCSI) B.4: 32 bytes of zeros, and of 0xFF.
        XCTAssertEqual(CRC32C.checksum([UInt8](repeating: 0, count: 32)), 0x8A91_36AA)
        XCTAssertEqual(CRC32C.checksum([UInt8](repeating: 0xFF, count: 32)), 0x62A8_AB43)
        XCTAssertEqual(Self.crc32cBitwise(ArraySlice(Array("123456789".utf8))), 0xE306_9283)
        XCTAssertEqual(CRC32C.masked(Array("123456789".utf8)), Self.mask(0xE306_9283))
    }

    func testScalarsReadBackWithStepsAndCRCs() throws {
        let dir = try temporaryDirectory()
        let writer = try TensorBoardWriter(directory: dir)
        let before = Date().timeIntervalSince1970
        for epoch in 1...3 {
            try writer.addScalar(tag: "loss/train", value: 1.0 / Double(epoch), step: epoch)
            try writer.addScalar(tag: "accuracy/test", value: 0.5 + 0.1 * Double(epoch), step: epoch)
            try writer.flush()
        }
        try writer.addScalar(tag: "negative step", value: -2.5, step: -7)
        try writer.close()
        try writer.close()  // a second close does nothing

        let files = try Self.eventFiles(in: dir)
        XCTAssertEqual(files, [writer.path])
        let name = (writer.path as NSString).lastPathComponent
        let parts = name.split(separator: ".")
        XCTAssertEqual(Array(parts.prefix(3)), ["events", "out", "tfevents"])
        XCTAssertNotNil(Int(parts[3]), "unix time in \(name)")

        let events = Self.records(Array(FileManager.default.contents(atPath: writer.path)!)).map { Self.event($0) }
        XCTAssertEqual(events.count, 1 + 3 * 2 + 1)
        XCTAssertTrue(events.allSatisfy { $0 != nil }, "every record decodes as an Event")
        XCTAssertEqual(events[0]?.fileVersion, "brain.Event:2")
        XCTAssertTrue(events[0]?.scalars.isEmpty ?? false)
        var found: [String: [(Int64, Float)]] = [:]
        for case let event? in events.dropFirst() {
            XCTAssertNil(event.fileVersion)
            XCTAssertEqual(event.scalars.count, 1)
            XCTAssertGreaterThanOrEqual(event.wallTime ?? 0, before - 1)
            for s in event.scalars { found[s.tag, default: []].append((event.step, s.value)) }
        }
        XCTAssertEqual(found["loss/train"]?.map(\.0), [1, 2, 3])
        XCTAssertEqual(found["loss/train"]?.map(\.1), [1, 0.5, Float(1.0 / 3.0)])
        XCTAssertEqual(found["accuracy/test"]?.map(\.0), [1, 2, 3])
        XCTAssertEqual(found["accuracy/test"]?.map(\.1), [Float(0.6), Float(0.7), Float(0.8)])
        XCTAssertEqual(found["negative step"]?.map(\.0), [-7])
        XCTAssertEqual(found["negative step"]?.map(\.1), [-2.5])
    }

    /// Flushed records are on disk while the writer is still open (a crash keeps them),
    /// and unflushed ones are not partially there.
    func testFlushedRecordsAreReadableBeforeClose() throws {
        let dir = try temporaryDirectory()
        let writer = try TensorBoardWriter(directory: dir)
        XCTAssertEqual(Self.records(Array(FileManager.default.contents(atPath: writer.path)!)).count, 1,
                       "the file-version record is written at once")
        try writer.addScalar(tag: "lr", value: 0.1, step: 1)
        try writer.flush()
        try writer.addScalar(tag: "lr", value: 0.05, step: 2)
        let records = Self.records(Array(FileManager.default.contents(atPath: writer.path)!))
        XCTAssertEqual(records.count, 2)
        XCTAssertEqual(records.last.flatMap { Self.event($0) }?.scalars.first?.tag, "lr")
        try writer.close()
        XCTAssertEqual(Self.records(Array(FileManager.default.contents(atPath: writer.path)!)).count, 3)
        XCTAssertThrowsError(try writer.addScalar(tag: "lr", value: 0, step: 3))
    }

    /// A two-epoch run on two in-process ranks: rank 0 writes one event file
    /// whose scalars equal metrics.jsonl's, with step = epoch.
    func testTrainerWritesEpochScalars() throws {
        let dir = try temporaryDirectory() + "/run"
        var config = TrainingConfig()
        config.model = "lenet5"
        config.dataset = .synthetic
        config.syntheticCount = 128
        config.batchSize = 32
        config.epochs = 2
        config.testLimit = 64
        let lock = NSLock()
        var history: [EpochMetrics] = []
        try LocalWorld.run(size: 2) { comm in
            let trainer = try Trainer(config: config, communicator: comm, runDirectory: dir, log: { _ in })
            let h = try trainer.run()
            if comm.rank == 0 { lock.lock(); history = h; lock.unlock() }
        }
        XCTAssertEqual(history.count, 2)
        let files = try Self.eventFiles(in: dir)
        XCTAssertEqual(files.count, 1, "one event file, from rank 0")
        let events = Self.records(Array(FileManager.default.contents(atPath: files[0])!)).compactMap { Self.event($0) }
        var found: [String: [(Int64, Float)]] = [:]
        for event in events { for s in event.scalars { found[s.tag, default: []].append((event.step, s.value)) } }
        let expected: [(String, (EpochMetrics) -> Double)] = [
            ("loss/train", { $0.trainLoss }), ("loss/test", { $0.testLoss }),
            ("accuracy/train", { $0.trainAccuracy }), ("accuracy/test", { $0.testAccuracy }),
            ("lr", { $0.lr }), ("images_per_second", { $0.imagesPerSecond }),
            ("allreduce_wait_fraction", { $0.allreduceWaitFraction }), ("data_wait_fraction", { $0.dataWaitFraction }),
            ("forward_fraction", { $0.forwardFraction }), ("backward_fraction", { $0.backwardFraction }),
            ("optimizer_fraction", { $0.optimizerFraction }),
        ]
        XCTAssertEqual(Set(found.keys), Set(expected.map(\.0) + ["step/loss_train", "step/lr"]))
        // Per step: 2 epochs of 128 / 32 = 4 steps, at global steps 0 to 7.
        XCTAssertEqual(found["step/lr"]?.map(\.0), Array(0..<8))
        XCTAssertEqual(found["step/loss_train"]?.count, 8)
        for (tag, value) in expected {
            XCTAssertEqual(found[tag]?.map(\.0), [1, 2], tag)
            XCTAssertEqual(found[tag]?.map(\.1), history.map { Float(value($0)) }, tag)
        }
    }

    /// Two writers started in the same second get different files.
    func testWritersInOneDirectoryDoNotCollide() throws {
        let dir = try temporaryDirectory()
        let a = try TensorBoardWriter(directory: dir + "/nested")
        let b = try TensorBoardWriter(directory: dir + "/nested")
        XCTAssertNotEqual(a.path, b.path)
        try a.close()
        try b.close()
        XCTAssertEqual(try Self.eventFiles(in: dir + "/nested").count, 2)
    }

    /// A resumed run marks its restart step (SessionLog START), so TensorBoard
    /// drops the interrupted run's later steps instead of showing them twice.
    func testResumedRunMarksItsRestartStep() throws {
        let dir = try temporaryDirectory() + "/run"
        var config = TrainingConfig()
        config.model = "lenet5"; config.dataset = .synthetic; config.syntheticCount = 128; config.batchSize = 32
        config.epochs = 2; config.testLimit = 32; config.maxSteps = 3
        try LocalWorld.run(size: 1) { comm in _ = try Trainer(config: config, communicator: comm, runDirectory: dir, log: { _ in }).run() }
        try LocalWorld.run(size: 1) { comm in
            let point = try Trainer.loadResumePoint(runDirectory: dir, communicator: comm, log: { _ in })
            var resumed = point.state.config
            resumed.maxSteps = 5
            _ = try Trainer(config: resumed, communicator: comm, runDirectory: dir, resume: point, log: { _ in }).run()
        }
        let files = try Self.eventFiles(in: dir)
        XCTAssertEqual(files.count, 2)
        let second = try XCTUnwrap(files.sorted().last)
        let raw = Self.records(Array(FileManager.default.contents(atPath: second)!))
        // Record 0 is the file version; record 1 the session start: field 2 (step) = 3, field 6 (session_log) present.
        XCTAssertGreaterThan(raw.count, 2)
        let start = raw[1]
        XCTAssertEqual(Self.event(start)?.step, 3)
        let sessionLog = Self.decode(start)?.compactMap { number, field -> [UInt8]? in
            if number == 6, case let .bytes(b) = field { return b } else { return nil }
        }.first
        let status = sessionLog.flatMap { Self.decode($0) }?.first
        XCTAssertEqual(status?.0, 1)
        if case let .varint(v)? = status?.1 { XCTAssertEqual(v, 1, "START") } else { XCTFail("no session_log status") }
    }
}
