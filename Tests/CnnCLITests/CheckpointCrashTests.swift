import Foundation
import XCTest
import CnnTraining

/// Issue 6: the coordinator killed (SIGKILL) while it writes checkpoints, many
/// times at varied moments; every time, resume finds a verified checkpoint,
/// no complete-looking checkpoint is ever damaged, and the run continues.
final class CheckpointCrashTests: XCTestCase {
    func testCoordinatorKilledWhileWritingCheckpointsAlwaysResumes() throws {
        let binary = try cnnDistBinary()
        let dir = temporaryDirectory("crash")
        let common = ["--checkpoint-every", "1", "--epochs", "1000"]
        var generator = SystemRandomNumberGenerator()
        var lastStep = -1
        let rounds = 10
        for round in 0..<rounds {
            let process = Process()
            process.executableURL = binary
            // Round 0 starts the run; later rounds resume it (and are killed in turn, some during start-up).
            process.arguments = round == 0
                ? ["train", "--dataset", "synthetic", "--model", "lenet5", "--batch-size", "32", "--run-dir", dir] + common
                : ["train", "--resume", dir] + common
            process.standardOutput = FileHandle.nullDevice
            process.standardError = FileHandle.nullDevice
            try process.run()
            // Wait until a checkpoint newer than the last round's exists, then a random 0-400 ms more.
            let deadline = Date().addingTimeInterval(60)
            while Date() < deadline && (CheckpointStore.list(runDirectory: dir).first?.step ?? -1) <= lastStep && process.isRunning {
                usleep(5_000)
            }
            usleep(UInt32.random(in: 0...400_000, using: &generator))
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
            XCTAssertEqual(process.terminationReason, .uncaughtSignal, "round \(round): the run ended by itself")

            let found = try CheckpointStore.latestVerified(runDirectory: dir)
            XCTAssertTrue(found.skipped.isEmpty, "round \(round): a complete checkpoint was damaged: \(found.skipped)")
            for (_, folder) in CheckpointStore.list(runDirectory: dir) {
                XCTAssertNoThrow(try CheckpointStore.verify(folder), "round \(round): \(folder)")
            }
            XCTAssertGreaterThan(found.manifest.step, lastStep, "round \(round): no progress")
            lastStep = found.manifest.step
        }
        // Finally the run continues to completion from the last verified checkpoint.
        let finish = try runCnnDist(["train", "--resume", dir, "--max-steps", "\(lastStep + 3)"])
        XCTAssertEqual(finish.status, 0, finish.stderr)
        XCTAssertTrue(finish.stdout.contains("resume: using"), finish.stdout)
        XCTAssertTrue(FileManager.default.fileExists(atPath: dir + "/model.safetensors"))
        print("coordinator killed \(rounds) times; resumed each time; last verified step \(lastStep)")
    }
}
