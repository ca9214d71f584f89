import Foundation
import XCTest
import CnnTraining

/// Issue 4's equivalences through the real `cnn-dist train` under the real
/// mpirun (MPI mode), checked against the same command in single-node test
/// mode (--local-ranks) and against one rank.
final class MPITrainingTests: XCTestCase {
    /// A config file for a short synthetic run.
    func writeConfig(_ fields: [String: String], name: String) throws -> String {
        var all: [String: String] = [
            "dataset": "synthetic", "epochs": "1", "batch_size": "64", "synthetic_count": "1280", "lr": "0.05",
            "schedule": "constant", "label_smoothing": "0", "crop_padding": "1", "flip": "true", "test_limit": "200",
        ]
        all.merge(fields) { $1 }
        let path = temporaryDirectory(name) + "/config.yaml"
        try all.sorted { $0.key < $1.key }.map { "\($0.key): \($0.value)" }.joined(separator: "\n")
            .write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    /// Trains with `launch` ("mpirun N", "local N" or "single") and returns the final model's tensors.
    func train(_ launch: (mode: String, ranks: Int), config: String, extra: [String] = [], runDir: String? = nil) throws -> [String: [Float]] {
        let dir = runDir ?? temporaryDirectory("run")
        let args = ["train", "--config", config, "--run-dir", dir] + extra
        let result: ProcessResult
        switch launch.mode {
        case "mpirun": result = try runUnderMPI(ranks: launch.ranks, args)
        default: result = try runCnnDist(args + (launch.ranks > 1 ? ["--local-ranks", "\(launch.ranks)"] : []))
        }
        XCTAssertEqual(result.status, 0, "\(launch) \(args): \(result.stderr)\n\(result.stdout)")
        return try readModel(dir + "/model.safetensors")
    }

    func readModel(_ path: String) throws -> [String: [Float]] {
        guard let bytes = FileManager.default.contents(atPath: path) else { XCTFail("no \(path)"); return [:] }
        let (tensors, _) = try SafeTensors.decode(Array(bytes), file: path)
        return Dictionary(uniqueKeysWithValues: tensors.map { ($0.name, $0.floats()) })
    }

    func maxRelativeDifference(_ a: [String: [Float]], _ b: [String: [Float]], _ label: String) -> Float {
        XCTAssertEqual(a.keys.sorted(), b.keys.sorted(), label)
        var worst: Float = 0, worstName = ""
        for (name, x) in a {
            guard let y = b[name], y.count == x.count else { XCTFail("\(label): \(name) missing or resized"); return .infinity }
            for i in x.indices {
                let d = abs(x[i] - y[i]) / max(1e-2, abs(x[i]), abs(y[i]))
                if d > worst { worst = d; worstName = "\(name)[\(i)]" }
            }
        }
        print("\(label): max relative difference \(worst) at \(worstName)")
        return worst
    }

    /// SyncBatchNorm over MPI: 1 x 64, mpirun -n 2 x 32 and mpirun -n 4 x 16
    /// give the same weights and BatchNorm buffers after 20 steps.
    func testMPIRankCountsMatchOneRankOverTwentySteps() throws {
        try requireMPI()
        let config = try writeConfig([:], name: "eq")
        let one = try train(("single", 1), config: config, extra: ["--model", packageRoot() + "/Tests/models/smooth-bn.yaml"])
        for ranks in [2, 4] {
            let many = try train(("mpirun", ranks), config: config, extra: ["--model", packageRoot() + "/Tests/models/smooth-bn.yaml"])
            XCTAssertLessThan(maxRelativeDifference(one, many, "1 x 64 vs mpirun \(ranks) x \(64 / ranks)"), 1e-4)
        }
    }

    /// MPI mode and single-node test mode give the same weights (2 ranks: every
    /// sum has two terms, so the orders agree and the weights are bitwise equal),
    /// and uneven local batches (15 = 8 + 7) equal one rank.
    func testMPIModeEqualsSingleNodeTestMode() throws {
        try requireMPI()
        let config = try writeConfig(["model": "fashion-cnn", "synthetic_count": "640"], name: "mode")
        let mpi = try train(("mpirun", 2), config: config)
        let local = try train(("local", 2), config: config)
        XCTAssertEqual(maxRelativeDifference(mpi, local, "mpirun -n 2 vs --local-ranks 2"), 0, "bitwise equal")

        let uneven = try writeConfig(["batch_size": "15", "synthetic_count": "300"], name: "uneven")
        let one = try train(("single", 1), config: uneven, extra: ["--model", packageRoot() + "/Tests/models/smooth-bn.yaml"])
        let two = try train(("mpirun", 2), config: uneven, extra: ["--model", packageRoot() + "/Tests/models/smooth-bn.yaml"])
        XCTAssertLessThan(maxRelativeDifference(one, two, "1 x 15 vs mpirun 8 + 7"), 1e-4)
    }

    /// Resume under mpirun: stopped at step 6 and resumed (on 2 ranks, and on
    /// 4 ranks), the run at step 12 equals the uninterrupted one — bitwise on
    /// the same rank count.
    func testMPIResumeIsBitwiseIdentical() throws {
        try requireMPI()
        let config = try writeConfig(["model": "fashion-cnn", "schedule": "onecycle", "epochs": "2", "synthetic_count": "512"],
                                     name: "resume")
        let straight = try train(("mpirun", 2), config: config, extra: ["--max-steps", "12"])
        let dir = temporaryDirectory("resumed")
        _ = try train(("mpirun", 2), config: config, extra: ["--max-steps", "6"], runDir: dir)
        let resumed = try runUnderMPI(ranks: 2, ["train", "--resume", dir, "--max-steps", "12"])
        XCTAssertEqual(resumed.status, 0, resumed.stderr + resumed.stdout)
        XCTAssertTrue(resumed.stdout.contains("resume: using"), resumed.stdout)
        XCTAssertEqual(maxRelativeDifference(straight, try readModel(dir + "/model.safetensors"), "resumed at 6 on 2 ranks"), 0,
                       "bitwise equal")
    }

    /// Exactly-once evaluation under mpirun: 1,009 test samples (a prime) give
    /// the same correct count and loss on 1, 2, 3 and 4 ranks.
    func testMPIEvaluationIsExactlyOnce() throws {
        try requireMPI()
        let config = try writeConfig(["model": "lenet5", "synthetic_count": "4036", "batch_size": "32"], name: "eval")
        let dir = temporaryDirectory("eval")
        _ = try train(("single", 1), config: config, extra: ["--max-steps", "5"], runDir: dir)
        var results: [Int: [String: Any]] = [:]
        for ranks in 1...4 {
            let args = ["eval", "--checkpoint", dir + "/model.safetensors", "--dataset", "synthetic",
                        "--synthetic-count", "4036", "--batch-size", "100", "--json"]
            let r = ranks == 1 ? try runCnnDist(args) : try runUnderMPI(ranks: ranks, args)
            XCTAssertEqual(r.status, 0, r.stderr)
            let line = r.stdout.split(separator: "\n").first { $0.hasPrefix("{") }.map(String.init) ?? "{}"
            results[ranks] = try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any]
            print("eval on \(ranks) rank(s): \(line)")
        }
        for ranks in 1...4 {
            XCTAssertEqual(results[ranks]?["count"] as? Int, 1009, "\(ranks) ranks")
            XCTAssertEqual(results[ranks]?["correct"] as? Int, results[1]?["correct"] as? Int, "\(ranks) ranks")
            let loss = results[ranks]?["loss"] as? Double ?? .nan, loss1 = results[1]?["loss"] as? Double ?? .nan
            XCTAssertEqual(loss, loss1, accuracy: 1e-9 * max(1, abs(loss1)), "\(ranks) ranks")
        }
    }
}
