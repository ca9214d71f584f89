import Foundation
import XCTest
import CnnCLI
import CnnCore
import CnnData
import CnnDistributed
import CnnModels
import CnnTraining

/// Mutation campaign, in process (a crash would end the test run): over a
/// thousand damaged configs, model checkpoints, training checkpoints and
/// data files each. Every input is either accepted with a usable result or
/// refused with a `CnnError` naming the file or the field; none may take
/// more than a few seconds (a hang) or grow memory past a bound.
final class MutationTests: XCTestCase {
    private var rng = SplitMix64(seed: 0x6D75_7461_7465)

    private func temporaryDirectory() throws -> String {
        let dir = NSTemporaryDirectory() + "cnn-mutate-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        addTeardownBlock { try? FileManager.default.removeItem(atPath: dir) }
        return dir
    }

    private func random(_ n: Int) -> Int { Int(rng.next() % UInt64(max(1, n))) }

    /// Truncation, bit flips, byte runs overwritten, bytes inserted: one of them.
    private func damage(_ bytes: [UInt8]) -> [UInt8] {
        var b = bytes
        switch random(5) {
        case 0: b = Array(b.prefix(random(b.count)))
        case 1: for _ in 0..<(1 + random(8)) where !b.isEmpty { b[random(b.count)] ^= UInt8(1 << random(8)) }
        case 2:
            if !b.isEmpty { let at = random(b.count); for i in at..<min(b.count, at + 1 + random(16)) { b[i] = UInt8(random(256)) } }
        case 3: b.insert(contentsOf: (0..<(1 + random(8))).map { _ in UInt8(random(256)) }, at: random(b.count + 1))
        default: if !b.isEmpty { b[random(min(b.count, 64))] ^= UInt8(1 << random(8)) }   // the header
        }
        return b
    }

    /// Peak resident memory of this process, in bytes (Linux: VmHWM).
    private func residentBytes() -> Int {
        guard let status = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8),
              let line = status.split(separator: "\n").first(where: { $0.hasPrefix("VmRSS:") }),
              let kb = Int(line.split(separator: " ").dropFirst().first ?? "") else { return 0 }
        return kb * 1024
    }

    /// Runs `body` and classifies: accepted, or refused naming one of `names`.
    private func check(_ label: String, naming names: [String], _ body: () throws -> Void) -> Bool {
        let start = monotonicNow()
        defer { XCTAssertLessThan(monotonicNow() - start, 10, "\(label): took too long") }
        do { try body(); return true } catch let error as CnnError {
            let text = "\(error)"
            XCTAssertTrue(names.contains { text.contains($0) }, "\(label): \(text) names none of \(names)")
        } catch {
            XCTFail("\(label): not a CnnError: \(error)")
        }
        return false
    }

    // MARK: Configs

    /// Values that mean nothing, or nothing good, for any field.
    private let hostileValues = ["-1", "0", "4611686018427387904", "18446744073709551616", "1e30", "-1e30", ".nan", ".inf",
                                 "-.inf", "2.5", "''", "x", "[]", "[1, [2]]", "{a: 1}", "2001-12-14", "!!binary aGk=",
                                 "true", "null", "!!set {a, b}", "100000000", "~", "'1e999'"]

    func testThousandMutatedConfigs() throws {
        let dir = try temporaryDirectory()
        let fields = TrainingConfig.CodingKeys.allCases.map(\.rawValue)
        let baseTexts = try ["fashion-cnn", "lenet5", "minivgg", "resnet20"].map {
            try String(contentsOfFile: packageRoot() + "/configs/\($0).yaml", encoding: .utf8)
        }
        var cases: [String] = []
        for field in fields { for value in hostileValues { cases.append("dataset: synthetic\n\(field): \(value)\n") } }
        cases.append("a: " + String(repeating: "[", count: 20_000) + String(repeating: "]", count: 20_000) + "\n")
        cases.append((0..<3000).map { String(repeating: " ", count: $0) + "k\($0):" }.joined(separator: "\n"))
        var bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n"
        for i in 1..<12 { bomb += "\(Character(UnicodeScalar(97 + i)!)): &\(Character(UnicodeScalar(97 + i)!)) [" + String(repeating: "*\(Character(UnicodeScalar(96 + i)!)), ", count: 9) + "]\n" }
        cases.append(bomb)
        while cases.count < 1100 {
            let text = Array(baseTexts[random(baseTexts.count)].utf8)
            cases.append(String(decoding: damage(text), as: UTF8.self))
        }
        var accepted = 0, refused = 0
        let before = residentBytes()
        for (i, text) in cases.enumerated() {
            let path = "\(dir)/c\(i).yaml"
            try text.write(toFile: path, atomically: false, encoding: .utf8)
            let names = [path, "c\(i).yaml"] + fields
            if check("config \(i): \(text.prefix(80))", naming: names, {
                let config = try loadTrainingConfig(path: path)
                try Preflight.checkConfig(config, ranks: 2)
                try Preflight.checkModel(config)
            }) { accepted += 1 } else { refused += 1 }
        }
        print("mutated configs: \(cases.count), accepted \(accepted), refused \(refused), resident memory "
              + "\(before >> 20) -> \(residentBytes() >> 20) MiB")
        XCTAssertGreaterThanOrEqual(cases.count, 1000)
        XCTAssertLessThan(residentBytes() - before, 1 << 30, "memory grew past 1 GiB")
    }

    // MARK: Checkpoints

    func testThousandMutatedModelCheckpoints() throws {
        let dir = try temporaryDirectory()
        let model = try Model(name: "lenet5")
        model.store.initialize(seed: 3)
        let good = dir + "/good.safetensors"
        try writeModelCheckpoint(model: model, statistics: ChannelStatistics(mean: [0.3], std: [0.3]), to: good)
        let bytes = try FileBytes.read(good)
        var cases: [[UInt8]] = []
        // Metadata values that must be refused by name, spliced into the header.
        for (key, value) in [("classes", "100000000"), ("classes", "-3"), ("input", "1x100000x100000"), ("input", "3x32x32"),
                             ("normalization_mean", "nan"), ("normalization_std", "inf"), ("normalization_std", "0"),
                             ("model", "resnet9000"), ("input", "1x28"), ("classes", "1e9")] {
            var metadata = modelCheckpointMetadata(model: model, statistics: ChannelStatistics(mean: [0.3], std: [0.3]), step: 0)
            metadata[key] = value
            cases.append(try SafeTensors.encode(model.store.stateDict(), metadata: metadata))
        }
        while cases.count < 1100 { cases.append(damage(bytes)) }
        var accepted = 0
        let before = residentBytes()
        for (i, mutated) in cases.enumerated() {
            let path = "\(dir)/m\(i).safetensors"
            try FileBytes.write(mutated, to: path)
            if check("model checkpoint \(i)", naming: [path], {
                let loaded = try loadModelCheckpoint(path: path)
                // Accepted: it must be the model it says, with finite normalisation.
                XCTAssertEqual(loaded.model.inputShape, [1, 28, 28])
                XCTAssertTrue(loaded.statistics.mean.allSatisfy(\.isFinite) && loaded.statistics.std.allSatisfy { $0 > 0 && $0.isFinite })
            }) { accepted += 1 }
            XCTAssertFalse(i < 10 && accepted > 0, "metadata case \(i) accepted")
        }
        print("mutated model checkpoints: \(cases.count), accepted \(accepted) (damage in weight values), refused \(cases.count - accepted)")
        XCTAssertLessThan(residentBytes() - before, 1 << 30)
    }

    func testThousandMutatedTrainingCheckpoints() throws {
        let dir = try temporaryDirectory()
        var config = TrainingConfig()
        config.model = "lenet5"; config.dataset = .synthetic; config.syntheticCount = 64; config.batchSize = 32
        config.epochs = 2; config.maxSteps = 1; config.testLimit = 16
        try LocalWorld.run(size: 1) { comm in
            _ = try Trainer(config: config, communicator: comm, runDirectory: dir + "/run", log: { _ in }).run()
        }
        let folder = CheckpointStore.folder(runDirectory: dir + "/run", step: 1)
        let files = try CheckpointStore.requiredFiles.map { ($0, try FileBytes.read(folder + "/" + $0)) }
        var accepted = 0, total = 0
        for i in 0..<1000 {
            // Damage one file and re-sign the manifest (as an attacker could), so the content checks are what stands.
            var mutated = files
            let which = random(mutated.count)
            mutated[which].1 = damage(mutated[which].1)
            let run = "\(dir)/r\(i)"
            try CheckpointStore.write(runDirectory: run, step: 1, files: mutated, keep: 1)
            total += 1
            if check("training checkpoint \(i) (\(mutated[which].0))", naming: [run, mutated[which].0, "step", "epoch"], {
                try LocalWorld.run(size: 1) { comm in
                    let point = try Trainer.loadResumePoint(runDirectory: run, communicator: comm, log: { _ in })
                    var resumed = point.state.config
                    resumed.maxSteps = 2
                    let trainer = try Trainer(config: resumed, communicator: comm, runDirectory: nil, resume: point, log: { _ in })
                    XCTAssertNil(firstNonFinite(trainer.model.store.parameters))
                }
            }) { accepted += 1 }
            try? FileManager.default.removeItem(atPath: run)
        }
        print("mutated training checkpoints: \(total), accepted \(accepted), refused \(total - accepted)")
        XCTAssertGreaterThanOrEqual(total, 1000)
    }

    // MARK: Data files

    func testThousandMutatedDataFiles() throws {
        let dir = try temporaryDirectory()
        let set = ImageDataset.synthetic(count: 20, classCount: 10, seed: 4)
        try set.writeIDX(imagesPath: dir + "/images", labelsPath: dir + "/labels")
        try set.writeIDX(imagesPath: dir + "/images.gz", labelsPath: dir + "/labels.gz", compressed: true)
        let sources = try ["images", "labels", "images.gz", "labels.gz"].map { ($0, try FileBytes.read(dir + "/" + $0)) }
        var accepted = 0, total = 0
        let before = residentBytes()
        for i in 0..<1100 {
            let (name, bytes) = sources[random(sources.count)]
            let path = "\(dir)/d\(i)-\(name)"
            try FileBytes.write(damage(bytes), to: path)
            let images = name.hasPrefix("images") ? path : dir + "/images"
            let labels = name.hasPrefix("labels") ? path : dir + "/labels"
            total += 1
            if check("data file \(i) (\(name))", naming: [path], {
                let loaded = try ImageDataset.loadIDX(imagesPath: images, labelsPath: labels)
                XCTAssertEqual(loaded.count * loaded.imageShape.reduce(1, *), loaded.pixels.count)
            }) { accepted += 1 }
            try? FileManager.default.removeItem(atPath: path)
        }
        print("mutated data files: \(total), accepted \(accepted), refused \(total - accepted)")
        XCTAssertLessThan(residentBytes() - before, 512 << 20)
    }
}

/// The package root (for configs/), from this file's path.
func packageRoot() -> String {
    URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path
}

func monotonicNow() -> Double {
    var t = timespec()
    clock_gettime(CLOCK_MONOTONIC, &t)
    return Double(t.tv_sec) + Double(t.tv_nsec) * 1e-9
}
