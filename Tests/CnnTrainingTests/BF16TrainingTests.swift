import Foundation
import XCTest
import CnnCore
import CnnLayers
import CnnModels
import CnnDistributed
import CnnTraining

/// Training with `precision: bf16`: rank counts agree within bf16 tolerance, the run is bf16
/// (not fp32 under another name), and a CPU without AVX512_BF16 is refused before anything runs.
final class BF16TrainingTests: XCTestCase {
    /// 1 x 64 and 2 x 32 in-process ranks, 20 steps of the smooth BatchNorm model in bf16.
    ///
    /// Tolerance 1e-2 (relative, floor 0.01, as the fp32 twin's 1e-4). The ranks round the
    /// same operands to bf16 as long as their values agree, and reorder the fp32 sums as in
    /// fp32 (1e-7 relative). Once the runs differ by that rounding, each activation, gradient
    /// or weight lying within it of a midpoint between two bf16 values rounds to a different
    /// neighbour (2⁻⁸ apart) on the two runs: a fraction of about 1e-6 / 2⁻⁸ ≈ 3e-4 of the
    /// ~10⁵ values per step, each moving one product by 2⁻⁸, so the runs drift apart much
    /// faster than in fp32 (measured: 2.7e-3 after 20 steps, against 3.6e-2 between bf16 and
    /// fp32). 1e-2 leaves a margin under the bf16-vs-fp32 difference, which the test asserts
    /// to be larger: a run that silently trained in fp32 on one rank count fails that, a
    /// broken bf16 backward the first.
    func testOneRankEqualsTwoRanksInBF16() throws {
        var config = syntheticConfig(steps: 20, batch: 64)
        config.lr = 0.05
        config.precision = .bf16
        let one = try trainLocally(config, ranks: 1, makeModel: smoothBatchNormModel)
        let two = try trainLocally(config, ranks: 2, makeModel: smoothBatchNormModel)
        let ranks = maxRelativeDifference(one.params, two.params, label: "bf16 params 1 vs 2 ranks")
        XCTAssertLessThan(ranks, 1e-2)
        XCTAssertLessThan(maxRelativeDifference(one.buffers, two.buffers, label: "bf16 buffers 1 vs 2 ranks"), 1e-2)
        var fp32Config = config
        fp32Config.precision = .fp32
        let fp32 = try trainLocally(fp32Config, ranks: 1, makeModel: smoothBatchNormModel)
        let precision = maxRelativeDifference(one.params, fp32.params, label: "bf16 vs fp32 params")
        XCTAssertGreaterThan(precision, 5 * ranks, "bf16 must differ from fp32 by more than rank counts differ")
        XCTAssertLessThan(precision, 0.1, "bf16 stays close to fp32 over 20 steps")
        XCTAssertEqual(one.history.count, 1)
        XCTAssertEqual(one.history[0].trainLoss, fp32.history[0].trainLoss, accuracy: 0.05)
    }

    /// The preflight's bf16 check on a CPU without the feature (the `cpu` test hook): refused
    /// naming avx512_bf16, the CPU and the command; accepted with it, for fp32, and when the
    /// portable kernel is forced (CNN_BF16_KERNEL=portable).
    func testPreflightRefusesBF16WithoutTheCPUFeature() throws {
        let without = CPUFeatures(name: "Test CPU 9000", avx2: true, fma: true, avx512f: true, avx512bw: true,
                                  avx512bf16: false, osSavesAVX512State: true)
        XCTAssertThrowsError(try Preflight.checkPrecision(.bf16, cpu: without, portableForced: false)) { error in
            guard case let CnnError.missingCPUFeature(feature, cpu, neededFor) = error else {
                return XCTFail("\(error)")
            }
            XCTAssertEqual(feature, "avx512_bf16")
            XCTAssertEqual(cpu, "Test CPU 9000")
            XCTAssertEqual(neededFor, "precision bf16")
            XCTAssertTrue("\(error)".contains("use precision fp32"), "\(error)")
        }
        var with = without
        with.avx512bf16 = true
        XCTAssertNoThrow(try Preflight.checkPrecision(.bf16, cpu: with, portableForced: false))
        XCTAssertNoThrow(try Preflight.checkPrecision(.fp32, cpu: without, portableForced: false))
        XCTAssertNoThrow(try Preflight.checkPrecision(.bf16, cpu: without, portableForced: true))
        var hidden = with
        hidden.hide(["avx512_bf16"])
        XCTAssertEqual(hidden, without)
    }

    /// A run directory written before `precision` existed resumes (as fp32): its state.json
    /// lacks the key, which the resume fills with the default.
    func testResumeOfARunWithoutThePrecisionKey() throws {
        let dir = temporaryFolder("bf16-old-run")
        var config = syntheticConfig(steps: 4, batch: 32, model: "lenet5")
        config.checkpointEvery = 2
        config.maxSteps = 2
        _ = try trainLocally(config, ranks: 1, runDirectory: dir)
        let checkpoints = dir + "/checkpoints"
        for name in try FileManager.default.contentsOfDirectory(atPath: checkpoints) {
            let path = checkpoints + "/" + name + "/state.json"
            guard let data = FileManager.default.contents(atPath: path),
                  var state = try JSONSerialization.jsonObject(with: data) as? [String: Any],
                  var stored = state["config"] as? [String: Any] else { continue }
            XCTAssertEqual(stored.removeValue(forKey: "precision") as? String, "fp32")
            state["config"] = stored
            try JSONSerialization.data(withJSONObject: state).write(to: URL(fileURLWithPath: path))
        }
        config.maxSteps = 4
        // The edited state.json no longer matches its manifest's SHA-256 unless it is refreshed.
        try refreshManifests(checkpoints)
        let resumed = try trainLocally(config, ranks: 1, runDirectory: dir, resume: true)
        XCTAssertFalse(resumed.params.isEmpty)
    }
}

/// Rewrites each checkpoint's manifest.json with the current sizes and SHA-256 of its files
/// (after a test edited one of them on purpose).
func refreshManifests(_ checkpoints: String) throws {
    for name in try FileManager.default.contentsOfDirectory(atPath: checkpoints) where name.hasPrefix("step-") {
        let folder = checkpoints + "/" + name
        let data = FileManager.default.contents(atPath: folder + "/manifest.json")!
        var manifest = try JSONDecoder().decode(CheckpointManifest.self, from: data)
        for i in manifest.files.indices {
            let bytes = [UInt8](FileManager.default.contents(atPath: folder + "/" + manifest.files[i].name)!)
            manifest.files[i].bytes = bytes.count
            manifest.files[i].sha256 = sha256Hex(bytes)
        }
        try JSONEncoder().encode(manifest).write(to: URL(fileURLWithPath: folder + "/manifest.json"))
    }
}
