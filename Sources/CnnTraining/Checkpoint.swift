import Foundation
import Crypto
import CnnCore
import CnnData

// Crash-consistent training checkpoints.
//
// Layout of a run directory's checkpoints:
//
//   RUN_DIR/checkpoints/step-00000120/model.safetensors      weights + BatchNorm buffers (PyTorch names)
//                                    /optimizer.safetensors  optimizer state buffers + step counter
//                                    /state.json             TrainingState: step, epoch, position, config, ...
//                                    /manifest.json          size and SHA-256 of each file above (written last)
//
// A checkpoint is built in `checkpoints/.partial-step-N-PID`, every file
// fsynced, the manifest written last, then the folder is renamed to
// `step-N` and the parent fsynced. A crash at any moment leaves either no
// `step-N` or a complete one; a `step-N` damaged later (disk, a person) fails
// its manifest check and resume skips it, saying so. The newest K are kept;
// an older one is renamed to `.discard-step-N-PID` before it is deleted, so
// a crash mid-delete never leaves a partial `step-N` either.

/// Everything besides weights and optimizer buffers that a run needs to
/// continue exactly where it stopped. The data order, augmentation and
/// dropout masks are pure functions of (seed, epoch, sample position), so the
/// "sampler and RNG state" is (config.seed, epoch, step_in_epoch).
public struct TrainingState: Codable, Equatable {
    public var format = "cnn-dist-training-state/1"
    /// Optimizer steps taken so far (global batches trained).
    public var step: Int
    /// The epoch in progress (0-based).
    public var epoch: Int
    /// Global batches of `epoch` already trained; the next one is this index.
    public var stepInEpoch: Int
    /// Ranks of the run that wrote it (resume works on any rank count).
    public var worldSize: Int
    /// Sums over all ranks of this epoch's training loss (times batch size),
    /// correct predictions and samples so far, so epoch metrics survive a resume.
    public var epochLossSum: Double
    public var epochCorrect: Double
    public var epochSeen: Double
    public var earlyStopping: EarlyStopping.State
    /// The run's resolved configuration.
    public var config: TrainingConfig

    /// The file format's keys (snake_case, as PyTorch users and older runs write them).
    public enum CodingKeys: String, CodingKey, CaseIterable {
        case format, step, epoch, stepInEpoch = "step_in_epoch", worldSize = "world_size"
        case epochLossSum = "epoch_loss_sum", epochCorrect = "epoch_correct", epochSeen = "epoch_seen"
        case earlyStopping = "early_stopping", config
    }
}

/// The manifest of one checkpoint folder.
public struct CheckpointManifest: Codable, Equatable {
    public struct File: Codable, Equatable {
        public var name: String
        public var bytes: Int
        public var sha256: String
    }
    public var format = "cnn-dist-checkpoint/1"
    public var step: Int
    public var files: [File]
}

/// SHA-256 of `bytes` as lowercase hex.
public func sha256Hex(_ bytes: [UInt8]) -> String {
    SHA256.hash(data: bytes).map { String(format: "%02x", $0) }.joined()
}

/// Writing, verifying and finding checkpoints under `RUN_DIR/checkpoints`.
public enum CheckpointStore {
    /// The files every checkpoint holds, besides its manifest.
    public static let requiredFiles = ["model.safetensors", "optimizer.safetensors", "state.json"]

    /// The folder of step `step` under `runDirectory`.
    public static func folder(runDirectory: String, step: Int) -> String {
        runDirectory + "/checkpoints/" + String(format: "step-%08d", step)
    }

    /// Writes `files` as checkpoint `step` crash-consistently and keeps the
    /// newest `keep` checkpoints (older ones are deleted after the new one is in place).
    /// Returns the checkpoint folder.
    @discardableResult
    public static func write(runDirectory: String, step: Int, files: [(name: String, bytes: [UInt8])], keep: Int) throws -> String {
        let root = runDirectory + "/checkpoints"
        try createDirectory(root)
        let final = folder(runDirectory: runDirectory, step: step)
        let partial = root + "/.partial-" + String(format: "step-%08d", step) + "-\(getpid())"
        try? FileManager.default.removeItem(atPath: partial)
        try createDirectory(partial)
        do {
            var manifest = CheckpointManifest(step: step, files: [])
            for file in files {
                try writeFileAtomically(file.bytes, to: partial + "/" + file.name)
                manifest.files.append(.init(name: file.name, bytes: file.bytes.count, sha256: sha256Hex(file.bytes)))
            }
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
            try writeFileAtomically(Array(try encoder.encode(manifest)), to: partial + "/manifest.json")
            // The same step may be written twice (an every-N checkpoint that falls on an epoch end):
            // the old folder leaves the listing in one rename before the new one takes its name.
            if FileManager.default.fileExists(atPath: final) { discard(final, root: root) }
            guard rename(partial, final) == 0 else {
                throw CnnError.io(file: final, reason: "rename of the finished checkpoint failed: \(String(cString: strerror(errno)))")
            }
        } catch {
            // A failed write (a full disk) must not leave its files taking space until the next success.
            try? FileManager.default.removeItem(atPath: partial)
            throw error
        }
        fsyncDirectory(root)
        try prune(root: root, keep: keep)
        return final
    }

    /// Reads and checks one checkpoint folder: the manifest parses, lists
    /// exactly `requiredFiles` (plain names, each once), and every file exists
    /// with its size and SHA-256. Returns the files' bytes by name.
    public static func verify(_ folder: String, requiredFiles: [String] = requiredFiles) throws
        -> (manifest: CheckpointManifest, files: [String: [UInt8]]) {
        let manifestPath = folder + "/manifest.json"
        guard let data = FileManager.default.contents(atPath: manifestPath) else {
            throw CnnError.invalidCheckpoint(file: manifestPath, reason: "missing manifest")
        }
        let manifest: CheckpointManifest
        do { manifest = try JSONDecoder().decode(CheckpointManifest.self, from: data) } catch {
            throw CnnError.invalidCheckpoint(file: manifestPath, reason: "unreadable manifest (\(error))")
        }
        let listed = manifest.files.map(\.name)
        if let bad = listed.first(where: { $0.isEmpty || $0.contains("/") || $0 == "." || $0 == ".." }) {
            throw CnnError.invalidCheckpoint(file: manifestPath, reason: "lists '\(bad)', which is not a plain file name")
        }
        guard listed.sorted() == requiredFiles.sorted() else {
            throw CnnError.invalidCheckpoint(file: manifestPath, reason: "lists \(listed.sorted()); a checkpoint holds exactly "
                                             + requiredFiles.sorted().joined(separator: ", "))
        }
        var files: [String: [UInt8]] = [:]
        for f in manifest.files {
            let path = folder + "/" + f.name
            guard f.bytes >= 0, let bytes = try? FileBytes.read(path) else {
                throw CnnError.invalidCheckpoint(file: path, reason: "listed in the manifest but missing or unreadable")
            }
            guard bytes.count == f.bytes else {
                throw CnnError.invalidCheckpoint(file: path, reason: "\(bytes.count) bytes, the manifest says \(f.bytes)")
            }
            let digest = sha256Hex(bytes)
            guard digest == f.sha256 else {
                throw CnnError.invalidCheckpoint(file: path, reason: "SHA-256 \(digest) does not match the manifest's \(f.sha256)")
            }
            files[f.name] = bytes
        }
        return (manifest, files)
    }

    /// Checkpoint folders under the run directory, newest first.
    public static func list(runDirectory: String) -> [(step: Int, folder: String)] {
        let root = runDirectory + "/checkpoints"
        let names = (try? FileManager.default.contentsOfDirectory(atPath: root)) ?? []
        return names.compactMap { name -> (Int, String)? in
            guard name.hasPrefix("step-"), let step = Int(name.dropFirst(5)) else { return nil }
            return (step, root + "/" + name)
        }.sorted { $0.0 > $1.0 }
    }

    /// The newest checkpoint that verifies, with the reasons newer ones were skipped.
    public static func latestVerified(runDirectory: String, requiredFiles: [String] = requiredFiles) throws
        -> (folder: String, manifest: CheckpointManifest, files: [String: [UInt8]], skipped: [(folder: String, reason: String)]) {
        var skipped: [(String, String)] = []
        for (_, folder) in list(runDirectory: runDirectory) {
            do {
                let (manifest, files) = try verify(folder, requiredFiles: requiredFiles)
                return (folder, manifest, files, skipped)
            } catch {
                skipped.append((folder, "\(error)"))
            }
        }
        let why = skipped.isEmpty ? "no checkpoints found" : "no checkpoint verifies: " + skipped.map { "\($0.0): \($0.1)" }.joined(separator: "; ")
        throw CnnError.invalidCheckpoint(file: runDirectory + "/checkpoints", reason: why)
    }

    static func prune(root: String, keep: Int) throws {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: root)) ?? []
        let steps = names.filter { $0.hasPrefix("step-") }.sorted(by: >)
        for old in steps.dropFirst(max(1, keep)) { discard(root + "/" + old, root: root) }
        // Leftovers of writers that died mid-checkpoint or mid-delete (other PIDs).
        for name in names where (name.hasPrefix(".partial-") || name.hasPrefix(".discard-"))
            && !name.hasSuffix("-\(getpid())") {
            try? FileManager.default.removeItem(atPath: root + "/" + name)
        }
    }

    /// Deletes a checkpoint folder without ever leaving a partly deleted `step-*`
    /// folder behind a crash: it is first renamed out of the listing (one atomic
    /// rename, made durable), then removed file by file.
    static func discard(_ folder: String, root: String) {
        let name = (folder as NSString).lastPathComponent
        let trash = root + "/.discard-" + name + "-\(getpid())"
        try? FileManager.default.removeItem(atPath: trash)
        guard rename(folder, trash) == 0 else { return }
        fsyncDirectory(root)
        try? FileManager.default.removeItem(atPath: trash)
    }

    static func createDirectory(_ path: String) throws {
        do { try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true) } catch {
            throw CnnError.io(file: path, reason: "cannot create the folder: \(error.localizedDescription)")
        }
    }

    static func fsyncDirectory(_ path: String) {
        let fd = open(path, O_RDONLY)
        if fd >= 0 { fsync(fd); close(fd) }
    }
}
