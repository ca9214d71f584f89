import Foundation
import XCTest
import CnnCore
import CnnDistributed
import CnnTraining

/// A checkpoint counts as verified only if its manifest lists exactly the
/// files a checkpoint holds, by plain names, with matching sizes and hashes;
/// resume then falls back to an older good checkpoint.
final class CheckpointVerificationTests: XCTestCase {
    private func folder(_ name: String) -> String {
        let dir = NSTemporaryDirectory() + "cnn-verify-\(name)-\(UUID().uuidString)"
        addTeardownBlock { try? FileManager.default.removeItem(atPath: dir) }
        return dir
    }

    /// Two checkpoints of a short run, steps 2 and 4.
    private func twoCheckpointRun() throws -> String {
        var config = syntheticConfig(steps: 4, batch: 32, model: "lenet5")
        config.checkpointEvery = 2
        config.maxSteps = 4
        let dir = folder("run")
        _ = try trainLocally(config, ranks: 1, runDirectory: dir)
        XCTAssertEqual(CheckpointStore.list(runDirectory: dir).map(\.step).prefix(2), [4, 2])
        return dir
    }

    private func rewriteManifest(_ dir: String, step: Int, _ edit: (inout [[String: Any]]) -> Void) throws {
        let path = CheckpointStore.folder(runDirectory: dir, step: step) + "/manifest.json"
        var object = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: path))) as? [String: Any])
        var files = try XCTUnwrap(object["files"] as? [[String: Any]])
        edit(&files)
        object["files"] = files
        try JSONSerialization.data(withJSONObject: object).write(to: URL(fileURLWithPath: path))
    }

    /// Generic body: the newest checkpoint's manifest is edited; resume skips it
    /// naming the reason and uses step 2.
    private func assertFallsBack(_ reasonFragment: String, _ edit: (inout [[String: Any]]) -> Void,
                                 line: UInt = #line) throws {
        let dir = try twoCheckpointRun()
        try rewriteManifest(dir, step: 4, edit)
        let found = try CheckpointStore.latestVerified(runDirectory: dir)
        XCTAssertEqual(found.manifest.step, 2, line: line)
        XCTAssertTrue(found.skipped.first?.reason.contains(reasonFragment) ?? false, "\(found.skipped)", line: line)
        try LocalWorld.run(size: 1) { comm in
            let point = try Trainer.loadResumePoint(runDirectory: dir, communicator: comm, log: { _ in })
            XCTAssertEqual(point.state.step, 2, line: line)
        }
    }

    func testEmptyFileListIsNotVerified() throws {
        try assertFallsBack("a checkpoint holds exactly") { $0 = [] }
    }

    func testShortFileListIsNotVerified() throws {
        try assertFallsBack("a checkpoint holds exactly") { $0.removeAll { ($0["name"] as? String) == "state.json" } }
    }

    func testPathOutsideTheFolderIsRefused() throws {
        try assertFallsBack("not a plain file name") { files in
            for i in files.indices where (files[i]["name"] as? String) == "state.json" {
                files[i]["name"] = "../step-00000002/state.json"
            }
        }
    }

    /// A write that fails (here: a file name the folder cannot take) leaves no
    /// `.partial-*` folder behind.
    func testFailedWriteLeavesNoPartialFolder() throws {
        let dir = folder("partial")
        XCTAssertThrowsError(try CheckpointStore.write(runDirectory: dir, step: 1,
                                                       files: [("missing-subfolder/model.safetensors", [1])], keep: 2))
        let names = try FileManager.default.contentsOfDirectory(atPath: dir + "/checkpoints")
        XCTAssertEqual(names, [], "left behind: \(names)")
    }

    /// Hand-written safetensors bytes: a JSON header, then `data`.
    private func safetensors(_ header: String, data: [UInt8]) -> [UInt8] {
        var json = Array(header.utf8)
        while json.count % 8 != 0 { json.append(0x20) }
        return withUnsafeBytes(of: UInt64(json.count).littleEndian) { Array($0) } + json + data
    }

    /// The one reader (resume uses it too) refuses overlapping, reversed and
    /// trailing data, naming the tensor; it used to load overlapping weights.
    func testOverlappingReversedAndTrailingDataAreRefused() throws {
        let data = [UInt8](repeating: 0, count: 8)
        let cases: [(String, [UInt8], String)] = [
            (#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#, data, "overlaps"),
            (#"{"a":{"dtype":"F32","shape":[0],"data_offsets":[8,4]}}"#, data, "reversed"),
            (#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#, data, "after the last tensor"),
        ]
        for (header, bytes, fragment) in cases {
            XCTAssertThrowsError(try SafeTensors.decode(safetensors(header, data: bytes), file: "f.safetensors")) { error in
                XCTAssertTrue("\(error)".contains(fragment) && "\(error)".contains("f.safetensors"), "\(error)")
            }
        }
    }
}
