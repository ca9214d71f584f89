import Foundation
import XCTest
import CnnCore
import CnnLayers
import CnnModels
import CnnData
import CnnDistributed
import CnnTraining

/// Checkpoint reading, strict loading and whole-model round trips.
final class ModelCheckpointTests: XCTestCase {
    func temporaryDirectory() throws -> String {
        let path = NSTemporaryDirectory() + "cnn-ckpt-tests-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        addTeardownBlock { try? FileManager.default.removeItem(atPath: path) }
        return path
    }

    /// A model with seeded weights and non-default BatchNorm buffers (so a
    /// loader that skipped buffers would be caught).
    func seededModel(_ name: String = "fashion-cnn", seed: UInt64 = 3) throws -> Model {
        let model = try Model(name: name)
        model.store.initialize(seed: seed)
        var rng = SplitMix64(seed: seed &+ 100)
        for e in model.store.bufferEntries {
            for i in 0..<e.count {
                let p = model.store.buffers.data + e.offset + i
                switch e.role {
                case .counter: p.pointee = Float(17 + i)
                case .ones: p.pointee = 0.5 + rng.nextUnitFloat()
                default: p.pointee = rng.nextUnitFloat() - 0.5
                }
            }
        }
        return model
    }

    let statistics = ChannelStatistics(mean: [0.2860402], std: [0.3530239])

    /// Asserts `body` throws a CnnError whose message contains every fragment.
    func assertError(_ body: @autoclosure () throws -> Any, _ fragments: [String], line: UInt = #line) {
        do {
            _ = try body()
            XCTFail("expected an error containing \(fragments)", line: line)
        } catch let error as CnnError {
            for fragment in fragments {
                XCTAssertTrue(error.description.contains(fragment), "'\(fragment)' not in: \(error)", line: line)
            }
        } catch {
            XCTFail("not a CnnError: \(error)", line: line)
        }
    }

    // MARK: - Round trips

    /// encode → decode → encode gives the same bytes; the loaded model equals the saved one bit for bit.
    func testCheckpointRoundTripIsByteExact() throws {
        let dir = try temporaryDirectory()
        for name in ["fashion-cnn", "lenet5", "resnet20", "minivgg"] {
            let model = try seededModel(name)
            let stats = model.inputShape[0] == 3 ? ChannelStatistics(mean: [0.49, 0.48, 0.45], std: [0.25, 0.24, 0.26]) : statistics
            let path = dir + "/\(name).safetensors"
            try writeModelCheckpoint(model: model, statistics: stats, step: 42, to: path)
            let bytes = try FileBytes.read(path)
            let decoded = try SafeTensors.decode(bytes, file: path)
            XCTAssertEqual(try SafeTensors.encode(decoded.tensors, metadata: decoded.metadata), bytes, name)
            XCTAssertEqual(decoded.tensors.map(\.name),
                           (model.store.parameterEntries + model.store.bufferEntries).map(\.name), name)

            let loaded = try loadModelCheckpoint(path: path)
            XCTAssertEqual(loaded.model.name, name)
            XCTAssertEqual(loaded.model.inputShape, model.inputShape)
            XCTAssertEqual(loaded.statistics, stats)
            XCTAssertEqual(loaded.metadata["step"], "42")
            XCTAssertEqual(loaded.model.store.parameters.toArray(), model.store.parameters.toArray(), name)
            XCTAssertEqual(loaded.model.store.buffers.toArray(), model.store.buffers.toArray(), name)
            // And the reloaded model writes the same file again.
            let again = dir + "/\(name)-again.safetensors"
            try writeModelCheckpoint(model: loaded.model, statistics: loaded.statistics, step: 42, to: again)
            XCTAssertEqual(try FileBytes.read(again), bytes, name)
        }
    }

    /// A checkpoint the trainer wrote loads back to the trainer's weights, and
    /// `stateDict()` writes exactly what the trainer writes.
    func testTrainerCheckpointLoads() throws {
        let dir = try temporaryDirectory()
        var c = TrainingConfig()
        c.model = "lenet5"; c.dataset = .synthetic; c.syntheticCount = 128; c.epochs = 1; c.batchSize = 32
        c.schedule = .constant; c.lr = 0.05; c.testLimit = 40
        let trainer = try Trainer(config: c, communicator: SingleProcessCommunicator(), runDirectory: dir, log: { _ in })
        try trainer.run()
        let path = dir + "/model.safetensors"
        let loaded = try loadModelCheckpoint(path: path)
        XCTAssertEqual(loaded.model.store.parameters.toArray(), trainer.model.store.parameters.toArray())
        XCTAssertEqual(loaded.statistics, trainer.statistics)
        XCTAssertEqual(loaded.model.store.stateDict(), trainer.model.store.stateDict())
        let bytes = try FileBytes.read(path)
        let decoded = try SafeTensors.decode(bytes, file: path)
        XCTAssertEqual(try SafeTensors.encode(decoded.tensors, metadata: decoded.metadata), bytes)
        XCTAssertEqual(try SafeTensors.encode(loaded.model.store.stateDict(), metadata: decoded.metadata), bytes)
    }

    // MARK: - Strict loading

    func testStrictLoadFailuresNameTheTensor() throws {
        let source = try seededModel()
        let full = Dictionary(uniqueKeysWithValues: source.store.stateDict().map { ($0.name, $0) })
        let target = try Model(name: "fashion-cnn")
        target.store.initialize(seed: 9)
        let before = target.store.parameters.toArray()

        var missing = full
        missing["4.weight"] = nil
        assertError(try target.store.load(missing, strict: true, skip: { _ in false }, source: "m.safetensors"),
                    ["m.safetensors", "missing 1", "'4.weight'"])

        var unexpected = full
        unexpected["extra.weight"] = SafeTensor(name: "extra.weight", int64s: [1], shape: [1])
        assertError(try target.store.load(unexpected, strict: true, skip: { _ in false }),
                    ["unexpected", "'extra.weight'"])

        var wrongShape = full
        let w = [Float](repeating: 0.1, count: 25 * 9)
        wrongShape["0.weight"] = w.withUnsafeBufferPointer { SafeTensor(name: "0.weight", floats: $0, shape: [25, 9]) }
        assertError(try target.store.load(wrongShape, strict: false, skip: { _ in false }),
                    ["'0.weight'", "[25, 1, 3, 3]", "[25, 9]"])

        var nonFinite = full
        let nan = [Float](repeating: .nan, count: 25)
        nonFinite["0.bias"] = nan.withUnsafeBufferPointer { SafeTensor(name: "0.bias", floats: $0, shape: [25]) }
        assertError(try target.store.load(nonFinite, strict: true, skip: { _ in false }), ["'0.bias'", "non-finite"])

        var shortBytes = full
        shortBytes["0.bias"]!.bytes.removeLast(4)
        assertError(try target.store.load(shortBytes, strict: true, skip: { _ in false }), ["'0.bias'", "96 bytes"])

        // Failed loads change nothing.
        XCTAssertEqual(target.store.parameters.toArray(), before)

        // Non-strict reports instead of throwing; skipped names are neither loaded nor reported.
        var both = missing
        both["extra.weight"] = unexpected["extra.weight"]
        let report = try target.store.load(both, strict: false, skip: { $0.hasPrefix("17.") })
        XCTAssertEqual(report.missing, ["4.weight"])
        XCTAssertEqual(report.unexpected, ["extra.weight"])
        XCTAssertFalse(report.loaded.contains("17.weight"))
        XCTAssertTrue(report.loaded.contains("1.num_batches_tracked"))

        // As in PyTorch, a missing num_batches_tracked is set to 0, not an error.
        var noCounter = full
        noCounter["1.num_batches_tracked"] = nil
        try target.store.load(noCounter, strict: true, skip: { _ in false })
        XCTAssertEqual(target.store.parameters.toArray(), source.store.parameters.toArray())
        let counter = target.store.bufferEntries.first { $0.name == "1.num_batches_tracked" }!
        XCTAssertEqual(target.store.buffers[counter.offset], 0)
        let other = target.store.bufferEntries.first { $0.name == "5.num_batches_tracked" }!
        XCTAssertEqual(target.store.buffers[other.offset], 17)
    }

    /// A checkpoint for another model names the mismatch.
    func testCheckpointForAnotherModelIsRejected() throws {
        let dir = try temporaryDirectory()
        let path = dir + "/lenet.safetensors"
        let lenet = try seededModel("lenet5")
        try writeModelCheckpoint(model: lenet, statistics: statistics, to: path, extraMetadata: ["model": "fashion-cnn"])
        assertError(try loadModelCheckpoint(path: path), [path, "missing", "unexpected", "'4.weight'", "'3.weight'",
                                                          "size mismatch for '0.weight'", "another model"])
        try writeModelCheckpoint(model: lenet, statistics: statistics, to: path, extraMetadata: ["model": "nosuchnet"])
        assertError(try loadModelCheckpoint(path: path), [path, "nosuchnet"])
        let bare = try SafeTensors.encode(lenet.store.stateDict())
        try writeFileAtomically(bare, to: path)
        assertError(try loadModelCheckpoint(path: path), [path, "'model'"])
        try writeModelCheckpoint(model: lenet, statistics: statistics, to: path, extraMetadata: ["normalization_std": "0.3,0.3"])
        assertError(try loadModelCheckpoint(path: path), [path, "normalization_std"])
    }

    // MARK: - Dtypes PyTorch may write

    /// Builds a safetensors file by hand with arbitrary dtypes.
    func rawFile(_ tensors: [(name: String, dtype: String, shape: [Int], bytes: [UInt8])], metadata: [String: String] = [:]) throws -> [UInt8] {
        var header: [String: Any] = [:]
        var offset = 0
        for t in tensors {
            header[t.name] = ["dtype": t.dtype, "shape": t.shape, "data_offsets": [offset, offset + t.bytes.count]]
            offset += t.bytes.count
        }
        if !metadata.isEmpty { header["__metadata__"] = metadata }
        let json = Array(try JSONSerialization.data(withJSONObject: header, options: [.sortedKeys]))
        var out = withUnsafeBytes(of: UInt64(json.count).littleEndian) { Array($0) } + json
        for t in tensors { out += t.bytes }
        return out
    }

    func littleEndianBytes<T>(_ values: [T]) -> [UInt8] { values.withUnsafeBytes { Array($0) } }

    func testHalfDoubleAndBFloat16AreConverted() throws {
        let dir = try temporaryDirectory()
        let path = dir + "/dtypes.safetensors"
        // 1, -2, 0.5, 65504 (max half), smallest subnormal 2^-24, -0.
        let half: [UInt16] = [0x3C00, 0xC000, 0x3800, 0x7BFF, 0x0001, 0x8000]
        let bf16: [UInt16] = [0x3F80, 0xC040, 0x3E80]   // 1, -3, 0.25
        let doubles: [Double] = [0.1, -1e-3, 12345.5]
        try writeFileAtomically(try rawFile([
            ("h", "F16", [2, 3], littleEndianBytes(half)),
            ("b", "BF16", [3], littleEndianBytes(bf16)),
            ("d", "F64", [3], littleEndianBytes(doubles)),
            ("n", "I32", [], littleEndianBytes([Int32(-7)])),
        ]), to: path)
        let (tensors, _) = try readStateDict(path: path)
        XCTAssertEqual(tensors["h"]?.dtype, .f32)
        XCTAssertEqual(tensors["h"]?.shape, [2, 3])
        XCTAssertEqual(tensors["h"]?.floats(), [1, -2, 0.5, 65504, 0x1p-24, -0.0])
        XCTAssertEqual(tensors["b"]?.floats(), [1, -3, 0.25])
        XCTAssertEqual(tensors["d"]?.floats(), doubles.map { Float($0) })
        XCTAssertEqual(tensors["n"]?.dtype, .i64)
        XCTAssertEqual(tensors["n"]?.floats(), [-7])

        try writeFileAtomically(try rawFile([("mask", "BOOL", [2], [1, 0])]), to: path)
        assertError(try readStateDict(path: path), [path, "'mask'", "BOOL"])
    }

    /// A fashion-cnn state_dict stored in F64 with I64 counters (what
    /// `model.double()` then save_file gives) loads to the rounded values.
    func testDoubleStateDictLoadsIntoModel() throws {
        let dir = try temporaryDirectory()
        let path = dir + "/double.safetensors"
        let source = try seededModel()
        let entries = source.store.stateDict().map { t -> (String, String, [Int], [UInt8]) in
            t.dtype == .i64 ? (t.name, "I64", t.shape, t.bytes) : (t.name, "F64", t.shape, littleEndianBytes(t.floats().map(Double.init)))
        }
        try writeFileAtomically(try rawFile(entries.map { (name: $0.0, dtype: $0.1, shape: $0.2, bytes: $0.3) }), to: path)
        let target = try Model(name: "fashion-cnn")
        let report = try target.store.load(try readStateDict(path: path).tensors, strict: true, skip: { _ in false })
        XCTAssertEqual(report.loaded.count, entries.count)
        XCTAssertEqual(target.store.parameters.toArray(), source.store.parameters.toArray())
        XCTAssertEqual(target.store.buffers.toArray(), source.store.buffers.toArray())
    }

    // MARK: - Damaged files

    func testDamagedCheckpointsNameTheFile() throws {
        let dir = try temporaryDirectory()
        let good = dir + "/good.safetensors"
        try writeModelCheckpoint(model: try seededModel("lenet5"), statistics: statistics, to: good)
        let bytes = try FileBytes.read(good)
        let headerLength = Int(bytes.withUnsafeBytes { $0.loadUnaligned(as: UInt64.self) })
        let path = dir + "/bad.safetensors"
        func check(_ damaged: [UInt8], _ fragments: [String], line: UInt = #line) throws {
            try writeFileAtomically(damaged, to: path)
            assertError(try readStateDict(path: path), [path] + fragments, line: line)
            assertError(try loadModelCheckpoint(path: path), [path] + fragments, line: line)
        }
        try check([], ["truncated", "0 bytes"])
        try check(Array(bytes[0..<5]), ["truncated"])
        try check(Array(bytes[0..<(8 + headerLength / 2)]), ["truncated", "header"])
        try check(Array(bytes[0..<(bytes.count - 10)]), ["outside", "truncated"])
        try check(bytes + [0, 0, 0, 0], ["4 unexpected bytes"])
        var garbled = bytes
        garbled[8] = UInt8(ascii: "#")
        try check(garbled, ["not valid JSON"])
        var huge = bytes
        huge.replaceSubrange(0..<8, with: littleEndianBytes([UInt64.max / 2]))
        try check(huge, ["header length"])
        // A shape that does not match its byte range.
        try check(try rawFile([("w", "F32", [3, 3], littleEndianBytes([Float](repeating: 1, count: 8)))]), ["'w'", "needs 36 bytes"])
        // Offsets beyond the data.
        var header = "{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,4000]}}"
        while header.utf8.count % 8 != 0 { header += " " }
        try check(littleEndianBytes([UInt64(header.utf8.count)]) + Array(header.utf8) + [UInt8](repeating: 0, count: 8),
                  ["'w'", "outside the 8 data bytes"])
        header = "{\"w\":{\"dtype\":\"F32\",\"shape\":\"2\",\"data_offsets\":[0,8]}}"
        try check(littleEndianBytes([UInt64(header.utf8.count)]) + Array(header.utf8) + [UInt8](repeating: 0, count: 8),
                  ["'w'", "shape"])
        // A missing file is an I/O error naming it.
        assertError(try readStateDict(path: dir + "/absent.safetensors"), [dir + "/absent.safetensors"])
    }
}
