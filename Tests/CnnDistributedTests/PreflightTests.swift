import Foundation
import XCTest
import CnnCore

/// `cnn-dist train` refuses, within its first second, configurations that
/// would fail later: each message names the field and what is allowed.
final class PreflightTests: XCTestCase {
    /// Runs `cnn-dist train ARGS` (one process, no MPI) and returns (status, stderr).
    private func train(_ arguments: [String], environment: [String: String] = [:]) throws -> (Int32, String) {
        let dir = FailureTestSupport.temporaryDirectory(self, "preflight")
        let job = Job(try FailureTestSupport.binary(),
                      ["train", "--dataset", "synthetic", "--epochs", "1", "--run-dir", dir + "/run"] + arguments,
                      environment: environment)
        try job.start()
        let status = job.finish(timeout: 60)
        return (status, job.stderr)
    }

    /// Generic body: the command fails and names `field` (and each of `mentions`).
    private func assertRefused(_ arguments: [String], field: String, mentions: [String] = [],
                               file: StaticString = #filePath, line: UInt = #line) throws {
        let started = monotonicNow()
        let (status, stderr) = try train(arguments)
        XCTAssertNotEqual(status, 0, "accepted \(arguments)", file: file, line: line)
        XCTAssertTrue(stderr.contains("config field '\(field)'"), "field \(field) not named:\n\(stderr)", file: file, line: line)
        for text in mentions { XCTAssertTrue(stderr.contains(text), "\(text) not in:\n\(stderr)", file: file, line: line) }
        XCTAssertLessThan(monotonicNow() - started, 20, file: file, line: line)
    }

    func testUnknownModelNamesTheAllowedModels() throws {
        try assertRefused(["--model", "resnet9000"], field: "model", mentions: ["resnet9000", "lenet5", "fashion-cnn"])
    }

    func testNonPositiveLearningRate() throws {
        try assertRefused(["--lr", "0"], field: "lr", mentions: ["a number > 0"])
        try assertRefused(["--lr=-0.1"], field: "lr")
    }

    func testBatchSmallerThanTheRanks() throws {
        try assertRefused(["--batch-size", "2", "--local-ranks", "3"], field: "batch_size",
                          mentions: ["at least the number of ranks (3)"])
    }

    func testInputShapeTheModelCannotTake() throws {
        // AlexNet's 11x11 stride-4 stem and three poolings need far more than 28x28.
        try assertRefused(["--model", "alexnet"], field: "input", mentions: ["1x28x28"])
    }

    func testUnreadableDataDirectory() throws {
        try assertRefused(["--dataset", "fashion-mnist", "--data", "/nonexistent/fashion"], field: "data",
                          mentions: ["/nonexistent/fashion"])
        let empty = FailureTestSupport.temporaryDirectory(self, "empty-data")
        try assertRefused(["--dataset", "cifar10", "--data", empty], field: "data", mentions: ["data_batch_1.bin"])
    }

    func testRunDirectoryThatCannotBeWritten() throws {
        // A directory below a regular file cannot be created, even by root.
        let dir = FailureTestSupport.temporaryDirectory(self, "rundir")
        FileManager.default.createFile(atPath: dir + "/file", contents: Data())
        let (status, stderr) = try train(["--run-dir", dir + "/file/run"])
        XCTAssertNotEqual(status, 0)
        XCTAssertTrue(stderr.contains("config field 'run-dir'"), stderr)
        XCTAssertTrue(stderr.contains(dir + "/file/run"), stderr)
    }

    func testAValidConfigurationPassesAndTrains() throws {
        let (status, stderr) = try train(["--model", "lenet5", "--batch-size", "64", "--train-limit", "256", "--test-limit", "64"])
        XCTAssertEqual(status, 0, stderr)
    }

    /// `--precision bf16` on a CPU without AVX512_BF16 (hidden through the test hook
    /// CNN_DISABLE_CPU_FEATURES) is refused before training, naming the missing feature, the
    /// CPU and the fix; `eval`-side commands share `Preflight.checkPrecision`.
    func testBF16RefusedOnACPUWithoutAVX512BF16() throws {
        let started = monotonicNow()
        let (status, stderr) = try train(["--model", "lenet5", "--precision", "bf16", "--batch-size", "64"],
                                         environment: ["CNN_DISABLE_CPU_FEATURES": "avx512_bf16"])
        XCTAssertNotEqual(status, 0, stderr)
        XCTAssertTrue(stderr.contains("needs the CPU feature avx512_bf16"), stderr)
        XCTAssertTrue(stderr.contains("precision bf16"), stderr)
        XCTAssertTrue(stderr.contains("use precision fp32"), stderr)
        XCTAssertLessThan(monotonicNow() - started, 20)
        // With the feature present (not hidden), the same flags start training.
        if CPUFeatures.current.bf16GEMM {
            let (ok, log) = try train(["--model", "lenet5", "--precision", "bf16", "--batch-size", "64",
                                       "--train-limit", "256", "--test-limit", "64"])
            XCTAssertEqual(ok, 0, log)
        }
    }
}
