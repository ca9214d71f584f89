import CnnTraining
import Foundation
import XCTest

/// The HParams dashboard's records, read back with TensorBoardTests'
/// independent TFRecord and protobuf reader.
final class TensorBoardHParamsTests: XCTestCase {
    typealias Field = TensorBoardTests.Field

    /// The (tag, plugin name, plugin content, has tensor) of each plugin summary in the file.
    static func pluginSummaries(_ path: String) -> [(tag: String, plugin: String, content: [UInt8], tensor: Bool)] {
        var found: [(String, String, [UInt8], Bool)] = []
        for record in TensorBoardTests.records(Array(FileManager.default.contents(atPath: path) ?? Data())) {
            for case let (5, .bytes(summary)) in TensorBoardTests.decode(record) ?? [] {
                for case let (1, .bytes(value)) in TensorBoardTests.decode(summary) ?? [] {
                    var tag = "", plugin = "", content: [UInt8] = [], tensor = false
                    for (n, f) in TensorBoardTests.decode(value) ?? [] {
                        guard case let .bytes(b) = f else { continue }
                        if n == 1 { tag = String(decoding: b, as: UTF8.self) }
                        if n == 8 { tensor = true }
                        if n == 9, case let (1, .bytes(pluginData))? = TensorBoardTests.decode(b)?.first {
                            for (m, g) in TensorBoardTests.decode(pluginData) ?? [] {
                                if m == 1, case let .bytes(name) = g { plugin = String(decoding: name, as: UTF8.self) }
                                if m == 2, case let .bytes(c) = g { content = c }
                            }
                        }
                    }
                    if !plugin.isEmpty { found.append((tag, plugin, content, tensor)) }
                }
            }
        }
        return found
    }

    /// SessionStartInfo's map entries (1 key, 2 google.protobuf.Value) as name -> value.
    static func hyperParameters(_ content: [UInt8]) -> [String: HyperParameter] {
        var result: [String: HyperParameter] = [:]
        guard case let (3, .bytes(start))? = TensorBoardTests.decode(content)?.first else { return result }
        for case let (1, .bytes(entry)) in TensorBoardTests.decode(start) ?? [] {
            var key = "", value: HyperParameter?
            for (n, f) in TensorBoardTests.decode(entry) ?? [] {
                if n == 1, case let .bytes(b) = f { key = String(decoding: b, as: UTF8.self) }
                if n == 2, case let .bytes(b) = f, let (m, g) = TensorBoardTests.decode(b)?.first {
                    switch (m, g) {
                    case let (2, .fixed64(bits)): value = .number(Double(bitPattern: bits))
                    case let (3, .bytes(s)): value = .string(String(decoding: s, as: UTF8.self))
                    case let (4, .varint(v)): value = .bool(v != 0)
                    default: break
                    }
                }
            }
            result[key] = value
        }
        return result
    }

    func testRunDirectoryRecordsTheConfigAsHyperParametersAndCompletion() throws {
        let dir = NSTemporaryDirectory() + "cnn-dist-hparams-\(UUID().uuidString)"
        addTeardownBlock { try? FileManager.default.removeItem(atPath: dir) }
        var config = TrainingConfig()
        config.lr = 0.125
        config.batchSize = 96
        config.nesterov = false
        let run = RunDirectory(path: dir)
        _ = try run.start(config: config, keepingEpochsThrough: 0)
        try run.markCompleted(step: 42)
        try run.close()

        let files = try TensorBoardTests.eventFiles(in: dir)
        XCTAssertEqual(files.count, 1)
        let summaries = Self.pluginSummaries(files[0])
        XCTAssertEqual(summaries.map(\.tag), ["_hparams_/session_start_info", "_hparams_/session_end_info"])
        XCTAssertEqual(Set(summaries.map(\.plugin)), ["hparams"])
        XCTAssertTrue(summaries.allSatisfy(\.tensor), "TensorBoard keeps plugin summaries only with a tensor")
        let hparams = Self.hyperParameters(summaries[0].content)
        XCTAssertEqual(hparams["lr"], .number(0.125))
        XCTAssertEqual(hparams["batch_size"], .number(96))
        XCTAssertEqual(hparams["nesterov"], .bool(false))
        XCTAssertEqual(hparams["model"], .string(config.model))
        XCTAssertEqual(hparams["optimizer"], .string(config.optimizer.rawValue))
        if case .string(let augment)? = hparams["augment"] {
            XCTAssertTrue(augment.hasPrefix("{") && augment.contains("rotation: 0"), augment)
        } else {
            XCTFail("augment as its JSON text: \(String(describing: hparams["augment"]))")
        }
        // SessionEndInfo: 1 status = 1 (success).
        guard case let (4, .bytes(end))? = TensorBoardTests.decode(summaries[1].content)?.first else {
            return XCTFail("session_end_info")
        }
        XCTAssertTrue(TensorBoardTests.decode(end)?.contains { $0.0 == 1 && { if case .varint(1) = $0.1 { return true }; return false }($0) } ?? false)
    }
}
