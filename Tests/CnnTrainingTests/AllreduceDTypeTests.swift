import Foundation
import XCTest
import CnnCore
import CnnLayers
import CnnModels
import CnnDistributed
import CnnTraining

/// `allreduce_dtype: bf16`: gradients sent as bf16 and summed in fp32. Every rank ends every
/// step with the same weights, the run stays close to the fp32 allreduce, the config checks the
/// value, and a run written before the key existed resumes as fp32.
final class AllreduceDTypeTests: XCTestCase {
    /// Every rank's parameters and buffers after `config` on `ranks` in-process ranks.
    func trainAllRanks(_ config: TrainingConfig, ranks: Int) throws -> [(params: [Float], buffers: [Float])] {
        let lock = NSLock()
        var states = Array(repeating: (params: [Float](), buffers: [Float]()), count: ranks)
        try LocalWorld.run(size: ranks) { comm in
            let trainer = try Trainer(config: config, communicator: comm, runDirectory: nil, model: try smoothBatchNormModel(),
                                      bucketBytes: 16 << 10, log: { _ in })
            _ = try trainer.run()
            lock.lock()
            states[comm.rank] = (trainer.model.store.parameters.toArray(), trainer.model.store.buffers.toArray())
            lock.unlock()
        }
        return states
    }

    /// 2 in-process ranks x 32 on the smooth BatchNorm model, fp32 against bf16 allreduce,
    /// after 1, 5 and 20 steps.
    ///
    /// Identical ranks: every rank gets the same bf16 bits of every gradient (one rank forms each
    /// sum, in rank order), so the optimizer makes the same step everywhere: asserted bitwise.
    ///
    /// Tolerance 1e-2 x sqrt(steps), relative with `maxRelativeDifference`'s floor of 0.01.
    /// After one step the weights differ by lr (1 + momentum) x the gradient difference (Nesterov
    /// SGD's first step), and the gradient differs by at most about 2⁻⁸ of its size (a rank's
    /// value and the sum each rounded to bf16, 2⁻⁹ each): 0.05 x 1.9 x 2⁻⁸ x |g| / 0.01, under
    /// 1e-2 for gradients up to |g| = 0.27 (this model's are smaller). Later steps add fresh,
    /// independently signed rounding errors, which grow like a random walk, sqrt(steps).
    /// Measured: 5.3e-3, 1.3e-2, 2.4e-2 after 1, 5, 20 steps (bound 1e-2, 2.2e-2, 4.5e-2), and
    /// the compute-precision twin (`BF16TrainingTests`, all GEMM operands in bf16) moves 3.6e-2
    /// in 20 steps. The bf16 run must also differ from fp32 by more than the fp32 allreduce
    /// differs between 1 and 2 ranks (reordered fp32 sums, 4e-7 to 2e-6): otherwise the
    /// gradients were not rounded at all.
    func testTwoRanksWithBF16AllreduceStayIdenticalAndCloseToFP32() throws {
        for steps in [1, 5, 20] {
            var config = syntheticConfig(steps: steps, batch: 64)
            config.lr = 0.05
            let fp32 = try trainAllRanks(config, ranks: 2)
            let oneRank = try trainAllRanks(config, ranks: 1)
            config.allreduceDtype = .bf16
            let bf16 = try trainAllRanks(config, ranks: 2)

            XCTAssertEqual(bf16[1].params.map(\.bitPattern), bf16[0].params.map(\.bitPattern), "rank 1 params differ from rank 0's")
            XCTAssertEqual(bf16[1].buffers.map(\.bitPattern), bf16[0].buffers.map(\.bitPattern), "rank 1 buffers differ from rank 0's")
            let dtype = maxRelativeDifference(bf16[0].params, fp32[0].params)
            let order = maxRelativeDifference(oneRank[0].params, fp32[0].params)
            let buffers = maxRelativeDifference(bf16[0].buffers, fp32[0].buffers)
            print("allreduce bf16 vs fp32 after \(steps) steps: params \(dtype), buffers \(buffers); fp32 1 vs 2 ranks: \(order)")
            let tolerance = 1e-2 * Float(steps).squareRoot()
            XCTAssertLessThan(dtype, tolerance, "params after \(steps) steps")
            XCTAssertLessThan(buffers, tolerance, "BatchNorm running statistics after \(steps) steps")
            XCTAssertGreaterThan(dtype, 2 * order, "a bf16 allreduce must differ from fp32 by more than fp32 sum orders do (\(steps) steps)")
        }
    }

    func testConfigValueIsCheckedAndNamed() throws {
        // A config as a run directory stores it, with a value that is not a choice.
        var object = try JSONSerialization.jsonObject(with: JSONEncoder().encode(TrainingConfig())) as! [String: Any]
        XCTAssertEqual(object["allreduce_dtype"] as? String, "fp32")
        object["allreduce_dtype"] = "fp16"
        let bad = try JSONSerialization.data(withJSONObject: object)
        XCTAssertThrowsError(try JSONDecoder().decode(TrainingConfig.self, from: bad)) { error in
            guard case let CnnError.invalidConfig(field, value, allowed) = error else {
                return XCTFail("not invalidConfig: \(error)")
            }
            XCTAssertEqual(field, "allreduce_dtype")
            XCTAssertEqual(value, "fp16")
            XCTAssertEqual(allowed, "fp32, bf16")
        }
        let decoded = try JSONDecoder().decode(TrainingConfig.self, from: JSONEncoder().encode(TrainingConfig()))
        XCTAssertEqual(decoded.allreduceDtype, .fp32)
        XCTAssertTrue(TrainingConfig().hyperParameters.contains { $0.name == "allreduce_dtype" })
    }

    /// A checkpoint whose state.json has no `allreduce_dtype` (a run from before the key) resumes as fp32.
    func testResumeOfARunWithoutTheAllreduceDTypeKey() throws {
        let dir = temporaryFolder("allreduce-dtype-old-run")
        var config = syntheticConfig(steps: 4, batch: 32, model: "lenet5")
        config.checkpointEvery = 2
        config.maxSteps = 2
        _ = try trainLocally(config, ranks: 2, runDirectory: dir)
        let checkpoints = dir + "/checkpoints"
        var edited = 0
        for name in try FileManager.default.contentsOfDirectory(atPath: checkpoints) {
            let path = checkpoints + "/" + name + "/state.json"
            guard let data = FileManager.default.contents(atPath: path),
                  var state = try JSONSerialization.jsonObject(with: data) as? [String: Any],
                  var stored = state["config"] as? [String: Any] else { continue }
            XCTAssertEqual(stored.removeValue(forKey: "allreduce_dtype") as? String, "fp32")
            state["config"] = stored
            try JSONSerialization.data(withJSONObject: state).write(to: URL(fileURLWithPath: path))
            edited += 1
        }
        XCTAssertGreaterThan(edited, 0)
        try refreshManifests(checkpoints)
        try LocalWorld.run(size: 2) { comm in
            let point = try Trainer.loadResumePoint(runDirectory: dir, communicator: comm, log: { _ in })
            XCTAssertEqual(point.state.config.allreduceDtype, .fp32)
        }
        config.maxSteps = 4
        let resumed = try trainLocally(config, ranks: 2, runDirectory: dir, resume: true)
        XCTAssertFalse(resumed.params.isEmpty)
    }
}
