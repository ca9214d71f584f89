import Foundation
import CnnCore
import CnnLayers
import CnnModels
import CnnData
import CnnDistributed

// Checkpoints, resume and fine-tuning: what the trainer writes at epoch ends
// and reads back, and the weights it may start from.
extension Trainer {
    /// The training state now, with this epoch's sums reduced over all ranks
    /// (a collective: every rank calls it).
    func currentState() throws -> TrainingState {
        let sums = try totals.reduced(over: communicator)
        return TrainingState(step: step, epoch: epoch, stepInEpoch: stepInEpoch, worldSize: communicator.size,
                             epochLossSum: sums.lossSum, epochCorrect: sums.correct, epochSeen: sums.seen,
                             earlyStopping: earlyStopping.state, config: config)
    }

    /// Never a non-finite checkpoint (or metrics line): all ranks hold the same
    /// values, so all stop together, naming the first bad tensor.
    func checkFiniteState() throws {
        for (what, t, entries) in [("parameter", model.store.parameters, model.store.parameterEntries),
                                   ("buffer", model.store.buffers, model.store.bufferEntries)] {
            if let bad = firstNonFinite(t) {
                let name = entries.last { $0.offset <= bad }?.name ?? "offset \(bad)"
                throw CnnError.nonFinite(step: step, location: "\(what) \(name); checkpoint not written")
            }
        }
        // Optimizer state too: Adam's second moments overflow to inf before the weights do.
        for state in optimizer.stateTensors {
            if let bad = firstNonFinite(state.tensor) {
                let name = model.store.parameterEntries.last { $0.offset <= bad }?.name ?? "offset \(bad)"
                throw CnnError.nonFinite(step: step, location: "optimizer state \(state.name) of \(name); checkpoint not written")
            }
        }
    }

    /// Every rank joins (the state needs a reduction); rank 0 writes.
    public func saveCheckpoint() throws {
        try checkFiniteState()
        let state = try currentState()
        guard let runFolder else { return }
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        var optimizerMetadata = ["optimizer": optimizer.name, "step": String(optimizer.stepCount)]
        for (name, value) in optimizer.hyperParameters { optimizerMetadata[name] = String(value) }
        let optimizerTensors = optimizer.stateTensors.map {
            SafeTensor(name: $0.name, floats: UnsafeBufferPointer(start: $0.tensor.data, count: $0.tensor.count), shape: [$0.tensor.count])
        }
        let folder = try runFolder.writeCheckpoint(step: step, files: [
            ("model.safetensors", try modelBytes()),
            ("optimizer.safetensors", try SafeTensors.encode(optimizerTensors, metadata: optimizerMetadata)),
            ("state.json", Array(try encoder.encode(state))),
        ], keep: config.keepCheckpoints)
        log("checkpoint: \(folder) (step \(step))")
    }

    /// Rank 0 finds the newest verified checkpoint of `runDirectory` and sends
    /// its files to every rank; all ranks return the same resume point.
    public static func loadResumePoint(runDirectory: String, communicator: Communicator,
                                       log: (String) -> Void = { print($0) }) throws -> ResumePoint {
        var payload: [UInt8] = []
        var failure: String? = nil
        if communicator.rank == 0 {
            do {
                let found = try CheckpointStore.latestVerified(runDirectory: runDirectory)
                for (folder, reason) in found.skipped { log("resume: skipping \(folder): \(reason)") }
                log("resume: using \(found.folder) (verified: \(found.manifest.files.count) files, SHA-256)")
                payload = try packFiles(folder: found.folder, files: found.files)
            } catch { failure = "\(error)" }
        }
        // Length first (-1: rank 0 failed, so every rank throws the same error).
        var length: [Int64] = [failure == nil ? Int64(payload.count) : -1]
        try length.withUnsafeMutableBytes { try communicator.broadcast($0, root: 0) }
        guard length[0] >= 0 else {
            throw CnnError.invalidCheckpoint(file: runDirectory, reason: failure ?? "rank 0 could not read a checkpoint")
        }
        if communicator.rank != 0 { payload = [UInt8](repeating: 0, count: Int(length[0])) }
        if !payload.isEmpty { try payload.withUnsafeMutableBytes { try communicator.broadcast($0, root: 0) } }
        return try unpackResumePoint(payload, runDirectory: runDirectory)
    }

    /// Files as one buffer: JSON {folder, names, sizes} header line, then the bytes.
    static func packFiles(folder: String, files: [String: [UInt8]]) throws -> [UInt8] {
        let names = files.keys.sorted()
        let header: [String: Any] = ["folder": folder, "names": names, "sizes": names.map { files[$0]!.count }]
        var out = Array(try JSONSerialization.data(withJSONObject: header)) + [0x0A]
        for n in names { out += files[n]! }
        return out
    }

    static func unpackResumePoint(_ payload: [UInt8], runDirectory: String) throws -> ResumePoint {
        guard let newline = payload.firstIndex(of: 0x0A),
              let header = try JSONSerialization.jsonObject(with: Data(payload[..<newline])) as? [String: Any],
              let folder = header["folder"] as? String, let names = header["names"] as? [String], let sizes = header["sizes"] as? [Int]
        else { throw CnnError.invalidCheckpoint(file: runDirectory, reason: "garbled checkpoint broadcast") }
        var files: [String: [UInt8]] = [:]
        var at = newline + 1
        for (n, s) in zip(names, sizes) { files[n] = Array(payload[at ..< at + s]); at += s }
        func need(_ name: String) throws -> [UInt8] {
            guard let b = files[name] else { throw CnnError.invalidCheckpoint(file: folder + "/" + name, reason: "missing") }
            return b
        }
        let state: TrainingState
        do { state = try JSONDecoder().decode(TrainingState.self, from: try withConfigDefaults(try need("state.json"))) } catch {
            throw CnnError.invalidCheckpoint(file: folder + "/state.json", reason: "\(error)")
        }
        let model = try SafeTensors.decode(try need("model.safetensors"), file: folder + "/model.safetensors")
        // The model file's metadata must describe the run state.json continues.
        let config = state.config
        let expectedModel = ModelFile.isPath(config.model) ? (try? modelDefinition(config.model).name) ?? config.model : config.model
        for (key, expected) in [("model", expectedModel), ("input", config.input), ("classes", config.classes.map(String.init))] {
            if let expected, let stored = model.metadata[key], stored.lowercased() != expected.lowercased() {
                throw CnnError.invalidCheckpoint(file: folder + "/model.safetensors",
                                                 reason: "metadata \(key) '\(stored)' contradicts state.json's config (\(expected))")
            }
        }
        let opt = try SafeTensors.decode(try need("optimizer.safetensors"), file: folder + "/optimizer.safetensors")
        return ResumePoint(folder: folder, state: state, model: model.tensors, optimizer: opt.tensors, optimizerMetadata: opt.metadata)
    }

    /// Loads weights, buffers, optimizer state and position from a resume point.
    func restore(_ point: ResumePoint) throws {
        try model.store.load(Dictionary(point.model.map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a }),
                             strict: true, source: point.folder + "/model.safetensors")
        guard point.optimizerMetadata["optimizer"] == optimizer.name else {
            throw CnnError.invalidCheckpoint(file: point.folder + "/optimizer.safetensors",
                                             reason: "holds \(point.optimizerMetadata["optimizer"] ?? "?") state, the run uses \(optimizer.name)")
        }
        let count = model.store.parameterCount
        var states: [(name: String, tensor: Tensor)] = []
        for t in point.optimizer {
            guard t.dtype == .f32, t.bytes.count == count * 4 else {
                throw CnnError.invalidCheckpoint(file: point.folder + "/optimizer.safetensors",
                                                 reason: "\(t.name) has \(t.bytes.count / 4) elements, the model has \(count) parameters")
            }
            let tensor = Tensor(shape: [count])
            t.bytes.withUnsafeBytes { tensor.data.update(from: $0.bindMemory(to: Float.self).baseAddress!, count: count) }
            if let bad = firstNonFinite(tensor) {
                let name = model.store.parameterEntries.last { $0.offset <= bad }?.name ?? "offset \(bad)"
                throw CnnError.invalidCheckpoint(file: point.folder + "/optimizer.safetensors",
                                                 reason: "\(t.name) holds a non-finite value for parameter \(name) (element \(bad))")
            }
            states.append((t.name, tensor))
        }
        try optimizer.loadState(stepCount: Int(point.optimizerMetadata["step"] ?? "0") ?? 0, tensors: states)
        let s = point.state
        try checkState(s, file: point.folder + "/state.json")
        step = s.step
        epoch = s.epoch
        stepInEpoch = s.stepInEpoch
        earlyStopping.state = s.earlyStopping
        // Sums so far are global: rank 0 carries them, the others start from zero.
        totals = communicator.rank == 0 ? EpochTotals(lossSum: s.epochLossSum, correct: s.epochCorrect, seen: s.epochSeen)
                                        : EpochTotals()
        guard stepInEpoch <= stepsPerEpoch else {
            throw CnnError.invalidCheckpoint(file: point.folder + "/state.json",
                                             reason: "step_in_epoch \(stepInEpoch) is past the epoch's \(stepsPerEpoch) steps (different data or batch size?)")
        }
    }

    /// Fine-tuning: weights from a cnn-dist checkpoint or a PyTorch state_dict
    /// saved with safetensors; with `replace_head` the classifier keeps its
    /// fresh initialisation.
    func initialize(fromFile path: String) throws {
        let (tensors, _) = try readStateDict(path: path)
        let head = config.replaceHead ? Trainer.headNames(model.store) : []
        do {
            try model.store.load(tensors, strict: true, skip: { head.contains($0) }, source: path)
        } catch let error as CnnError where head.isEmpty && Trainer.headNames(model.store).contains(where: { "\(error)".contains($0) }) {
            throw CnnError.invalidCheckpoint(file: path, reason: "\(error) (a different class count? use replace_head / --replace-head)")
        }
        if communicator.rank == 0 {
            log("init_from: \(path): loaded \(model.store.parameterEntries.count + model.store.bufferEntries.count - head.count) tensors"
                + (head.isEmpty ? "" : ", classifier head \(head.sorted().joined(separator: ", ")) left fresh"))
        }
    }

    /// Names of the last layer's parameters (the classifier head).
    static func headNames(_ store: ParameterStore) -> Set<String> {
        guard let last = store.layerRanges.values.max(by: { $0.lowerBound < $1.lowerBound }) else { return [] }
        return Set(store.parameterEntries.filter { last.contains($0.offset) }.map(\.name))
    }

    /// The model file: tensors plus what is needed to use it alone (model,
    /// input shape, classes, input normalisation).
    func modelBytes() throws -> [UInt8] {
        var metadata = modelCheckpointMetadata(model: model, statistics: statistics, step: step)
        if ModelFile.isPath(config.model) {
            // The model file's text, so the checkpoint alone rebuilds the model (eval, predict, another machine).
            metadata["model_file"] = String(decoding: try FileBytes.read(config.model), as: UTF8.self)
        }
        if let names = trainSet.classNames, let json = try? JSONSerialization.data(withJSONObject: names) {
            metadata["class_names"] = String(decoding: json, as: UTF8.self)
        }
        return try SafeTensors.encode(model.store.stateDict(), metadata: metadata)
    }

    /// A checkpoint's position must be one this run can reach: counts in
    /// range (no overflow later), sums finite.
    func checkState(_ s: TrainingState, file: String) throws {
        func bad(_ field: String, _ value: Any, _ allowed: String) -> CnnError {
            .invalidCheckpoint(file: file, reason: "\(field) = \(value) is not valid; expected \(allowed)")
        }
        let (all, overflow) = stepsPerEpoch.multipliedReportingOverflow(by: config.epochs)
        guard !overflow else { throw bad("epochs", config.epochs, "fewer epochs") }
        guard (0...config.epochs).contains(s.epoch) else { throw bad("epoch", s.epoch, "0 to the run's \(config.epochs) epochs") }
        guard (0...all).contains(s.step) else { throw bad("step", s.step, "0 to the run's \(all) steps") }
        guard s.stepInEpoch >= 0 else { throw bad("step_in_epoch", s.stepInEpoch, ">= 0") }
        guard s.worldSize >= 1 else { throw bad("world_size", s.worldSize, ">= 1") }
        for (field, value) in [("epoch_loss_sum", s.epochLossSum), ("epoch_correct", s.epochCorrect), ("epoch_seen", s.epochSeen)] {
            guard value.isFinite, value >= 0 else { throw bad(field, value, "a finite number >= 0") }
        }
    }
}

/// state.json with the config keys a run written before they existed lacks (e.g. `precision`)
/// filled in with their defaults, which is what that run used; the JSON as it is when it does
/// not parse as an object (the decoder then names the fault).
func withConfigDefaults(_ bytes: [UInt8]) throws -> Data {
    guard var object = (try? JSONSerialization.jsonObject(with: Data(bytes))) as? [String: Any],
          let config = object["config"] as? [String: Any] else { return Data(bytes) }
    object["config"] = try configWithDefaults(config)
    return try JSONSerialization.data(withJSONObject: object)
}

/// A run's config.json (a config object on its own) decoded with the same defaults.
public func decodeRunConfig(_ bytes: [UInt8]) throws -> TrainingConfig {
    guard let config = (try? JSONSerialization.jsonObject(with: Data(bytes))) as? [String: Any] else {
        return try JSONDecoder().decode(TrainingConfig.self, from: Data(bytes))
    }
    return try JSONDecoder().decode(TrainingConfig.self, from: JSONSerialization.data(withJSONObject: try configWithDefaults(config)))
}

private func configWithDefaults(_ config: [String: Any]) throws -> [String: Any] {
    let defaults = try JSONSerialization.jsonObject(with: JSONEncoder().encode(TrainingConfig())) as? [String: Any] ?? [:]
    return config.merging(defaults) { stored, _ in stored }
}
