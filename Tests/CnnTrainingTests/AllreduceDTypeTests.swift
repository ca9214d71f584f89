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

    /// 2 in-process ranks x 32, 20 steps of the smooth BatchNorm model, fp32 against bf16 allreduce.
    ///
    /// Identical ranks: every rank gets the same bf16 bits of every gradient (one rank forms each
    /// sum, in rank order), so the optimizer makes the same step everywhere: asserted bitwise.
    ///
    /// Tolerance 1e-2 (relative, floor 0.01, as `maxRelativeDifference`). Rounding a rank's
    /// gradient and the sum to bf16 changes each gradient element by at most 2 x 2⁻⁹ of its
    /// size, a random-signed error; the weights integrate lr x that over the steps, through
    /// momentum, and the network feeds the differences back. The compute-precision twin
    /// (`BF16TrainingTests`, every GEMM operand in bf16 on the same model and steps) moves
    /// 3.6e-2 from fp32; the allreduce rounds far fewer values (one gradient per parameter per
    /// step), so it must stay under 1e-2. It must also differ from fp32 by more than the
    /// fp32 allreduce differs between 1 and 2 ranks (reordered fp32 sums): otherwise the
    /// gradients were not rounded at all.
    func testTwoRanksWithBF16AllreduceStayIdenticalAndCloseToFP32() throws {
        var config = syntheticConfig(steps: 20, batch: 64)
        config.lr = 0.05
        let fp32 = try trainAllRanks(config, ranks: 2)
        let oneRank = try trainAllRanks(config, ranks: 1)
        config.allreduceDtype = .bf16
        let bf16 = try trainAllRanks(config, ranks: 2)

        for r in 1..<2 {
            XCTAssertEqual(bf16[r].params.map(\.bitPattern), bf16[0].params.map(\.bitPattern), "rank \(r) params differ from rank 0's")
            XCTAssertEqual(bf16[r].buffers.map(\.bitPattern), bf16[0].buffers.map(\.bitPattern), "rank \(r) buffers differ from rank 0's")
        }
        let dtype = maxRelativeDifference(bf16[0].params, fp32[0].params, label: "bf16 vs fp32 allreduce params")
        let order = maxRelativeDifference(oneRank[0].params, fp32[0].params, label: "fp32 allreduce 1 vs 2 ranks params")
        print("allreduce bf16 vs fp32 after 20 steps: params \(dtype); fp32 1 vs 2 ranks: \(order)")
        XCTAssertLessThan(dtype, 1e-2)
        XCTAssertLessThan(maxRelativeDifference(bf16[0].buffers, fp32[0].buffers, label: "bf16 vs fp32 allreduce buffers"), 1e-2)
        XCTAssertGreaterThan(dtype, 2 * order, "a bf16 allreduce must differ from fp32 by more than fp32 sum orders do")
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
