// Model checkpoints: reading a safetensors state_dict (ours or one PyTorch
// saved), loading it into a ParameterStore by PyTorch state_dict name, and
// rebuilding a zoo model from a cnn-dist checkpoint's metadata.
//
// File layout (huggingface/safetensors): u64 little-endian header length H,
// H bytes of JSON {name: {dtype, shape, data_offsets: [begin, end]},
// "__metadata__": {string: string}}, then the data. Offsets are relative to
// the end of the header; the tensors tile the data exactly (no holes, no
// overlaps, nothing after the last), as the reference implementation checks.
//
// cnn-dist's metadata: model, input ("1x28x28"), classes, step, format,
// normalization_mean and normalization_std (comma-separated, one per channel).
import Foundation
import CnnCore
import CnnLayers
import CnnModels
import CnnData

// MARK: - Reading

/// Reads a safetensors file into tensors by name plus its `__metadata__`.
///
/// F32 and I64 tensors are kept as they are; F64, F16 and BF16 (as PyTorch
/// may save them) are converted to F32, and I32 to I64. Any other dtype, a
/// truncated file, a header that is not JSON, offsets outside the data or a
/// size that does not match the shape throws `CnnError.invalidCheckpoint`
/// naming the file and the tensor; a file that cannot be read throws
/// `CnnError.io`. Never traps on bad input.
public func readStateDict(path given: String) throws -> (tensors: [String: SafeTensor], metadata: [String: String]) {
    let path = try modelFile(given)
    let bytes = try FileBytes.read(path)
    let decoded = try SafeTensors.decode(bytes, file: path)
    var tensors: [String: SafeTensor] = [:]
    for t in decoded.tensors { tensors[t.name] = t }
    return (tensors, decoded.metadata)
}

func convertStored(name: String, dtype: String, shape: [Int], raw: ArraySlice<UInt8>, count: Int) -> SafeTensor {
    func load<T>(_ type: T.Type) -> [T] {
        raw.withUnsafeBytes { src in (0..<count).map { src.loadUnaligned(fromByteOffset: $0 * MemoryLayout<T>.size, as: T.self) } }
    }
    var floats: [Float]
    switch dtype {
    case "F32", "I64":
        var t = SafeTensor(name: name, int64s: [], shape: shape)
        t.dtype = dtype == "F32" ? .f32 : .i64
        t.bytes = Array(raw)
        return t
    case "I32":
        return SafeTensor(name: name, int64s: load(Int32.self).map(Int64.init), shape: shape)
    case "F64": floats = load(Double.self).map { Float($0) }
    case "F16": floats = load(UInt16.self).map(floatFromHalf)
    default: floats = load(UInt16.self).map(floatFromBF16Bits)   // BF16
    }
    return floats.withUnsafeBufferPointer { SafeTensor(name: name, floats: $0, shape: shape) }
}

/// IEEE 754 binary16 bits to Float (exact: every half is a float).
func floatFromHalf(_ h: UInt16) -> Float {
    let sign: Float = h & 0x8000 != 0 ? -1 : 1
    let exponent = Int(h >> 10 & 0x1F), mantissa = UInt32(h & 0x3FF)
    switch exponent {
    case 0: return sign * Float(mantissa) * 0x1p-24                      // zero, subnormal
    case 31: return mantissa == 0 ? sign * .infinity : .nan
    default: return Float(bitPattern: UInt32(h & 0x8000) << 16 | UInt32(exponent + 112) << 23 | mantissa << 13)
    }
}

// MARK: - Loading into a model

extension ParameterStore {
    /// Assigns parameters and buffers from `tensors` by PyTorch state_dict name,
    /// all or nothing: everything is checked before anything is written.
    ///
    /// - Names for which `skip` returns true are ignored on both sides (neither
    ///   loaded nor reported), e.g. a classifier head when fine-tuning to
    ///   another class count.
    /// - A shape that differs from the model's throws naming the tensor and
    ///   both shapes, whatever `strict` says (as PyTorch does); so does a
    ///   tensor whose byte count does not match its own shape.
    /// - With `strict`, any missing or unexpected name throws, listing them;
    ///   without it they are returned. As in PyTorch's BatchNorm, a missing
    ///   `num_batches_tracked` is never an error: the counter is set to 0.
    /// - F32 values are copied; I64 (the counters) converted. Non-finite
    ///   values throw naming the tensor.
    ///
    /// `source` names where the tensors came from in errors (a file path).
    /// Returns the loaded names in state_dict order, the missing ones in
    /// state_dict order and the unexpected ones sorted.
    @discardableResult
    public func load(_ tensors: [String: SafeTensor], strict: Bool = true, skip: (String) -> Bool = { _ in false },
                     source: String = "state_dict") throws -> (loaded: [String], missing: [String], unexpected: [String]) {
        func bad(_ reason: String) -> CnnError { CnnError.invalidCheckpoint(file: source, reason: reason) }
        var plan: [(entry: ParameterEntry, tensor: SafeTensor?)] = []
        var loaded: [String] = [], missing: [String] = [], problems: [String] = []
        for entry in parameterEntries + bufferEntries where !skip(entry.name) {
            guard let t = tensors[entry.name] else {
                if entry.role == .counter {
                    plan.append((entry, nil))
                } else {
                    missing.append(entry.name)
                }
                continue
            }
            // A 0-d counter may come back as [1] from some writers; anything else must match exactly.
            let compatible = t.shape == entry.shape || (entry.role == .counter && t.shape.reduce(1, *) == 1)
            let width = t.dtype == .f32 ? 4 : 8
            if t.bytes.count != t.shape.reduce(1, *) * width {
                problems.append("tensor '\(entry.name)' has \(t.bytes.count) bytes of \(t.dtype.rawValue) for shape \(shapeText(t.shape))")
            } else if !compatible {
                problems.append("size mismatch for '\(entry.name)': the model has shape \(shapeText(entry.shape)), "
                                + "the checkpoint has \(shapeText(t.shape))")
            } else if t.dtype == .f32, let index = firstNonFiniteIndex(t) {
                problems.append("tensor '\(entry.name)' holds a non-finite value (\(t.floats()[index])) at index \(index)")
            }
            plan.append((entry, t))
            loaded.append(entry.name)
        }
        let known = Set((parameterEntries + bufferEntries).map(\.name))
        let unexpected = tensors.keys.filter { !known.contains($0) && !skip($0) }.sorted()
        // Like PyTorch, report everything at once: missing and unexpected names
        // (when strict) first, as they usually say "another model", then shapes.
        var reasons: [String] = []
        if strict && !missing.isEmpty { reasons.append("missing \(missing.count) tensor(s) the model needs: \(listed(missing))") }
        if strict && !unexpected.isEmpty {
            reasons.append("\(unexpected.count) unexpected tensor(s) the model does not have: \(listed(unexpected))")
        }
        reasons += problems.prefix(8)
        if problems.count > 8 { reasons.append("… \(problems.count - 8) more") }
        if !reasons.isEmpty {
            let hint = strict && (!missing.isEmpty || !unexpected.isEmpty) ? " (is this checkpoint for another model?)" : ""
            throw bad(reasons.joined(separator: "; ") + hint)
        }
        for (entry, tensor) in plan {
            let destination = (entry.isTrainable ? parameters.data : buffers.data) + entry.offset
            guard let tensor else { destination.update(repeating: 0, count: entry.count); continue }
            switch tensor.dtype {
            case .f32 where entry.count > 0:
                tensor.bytes.withUnsafeBytes { src in
                    UnsafeMutableRawPointer(destination).copyMemory(from: src.baseAddress!, byteCount: entry.count * 4)
                }
            case .i64:
                let values = tensor.floats()
                for i in 0..<entry.count { destination[i] = values[i] }
            default: break
            }
        }
        return (loaded, missing, unexpected)
    }

    /// The store's tensors under their state_dict names, parameters then
    /// buffers, counters as I64: what `SafeTensors.encode` writes.
    public func stateDict() -> [SafeTensor] {
        var tensors: [SafeTensor] = []
        for e in parameterEntries {
            tensors.append(SafeTensor(name: e.name, floats: UnsafeBufferPointer(start: parameters.data + e.offset, count: e.count), shape: e.shape))
        }
        for e in bufferEntries {
            if e.role == .counter {
                tensors.append(SafeTensor(name: e.name, int64s: (0..<e.count).map { Int64(buffers[e.offset + $0]) }, shape: e.shape))
            } else {
                tensors.append(SafeTensor(name: e.name, floats: UnsafeBufferPointer(start: buffers.data + e.offset, count: e.count), shape: e.shape))
            }
        }
        return tensors
    }
}

private func shapeText(_ shape: [Int]) -> String { "[" + shape.map(String.init).joined(separator: ", ") + "]" }

private func listed(_ names: [String]) -> String {
    let shown = names.prefix(8).map { "'\($0)'" }.joined(separator: ", ")
    return names.count > 8 ? shown + ", … (\(names.count - 8) more)" : shown
}

private func firstNonFiniteIndex(_ t: SafeTensor) -> Int? {
    t.bytes.withUnsafeBytes { raw -> Int? in
        let count = raw.count / 4
        for i in 0..<count where !raw.loadUnaligned(fromByteOffset: i * 4, as: Float.self).isFinite { return i }
        return nil
    }
}

// MARK: - Whole-model checkpoints

/// A model rebuilt from a checkpoint, with the normalisation it was trained with.
public struct LoadedModel {
    /// The zoo model named in the metadata, weights and buffers loaded.
    public var model: Model
    /// Per-channel normalisation of the training split.
    public var statistics: ChannelStatistics
    /// The file's `__metadata__` as stored.
    public var metadata: [String: String]
    /// The classes' names (metadata `class_names`, a JSON list), if the training data had them.
    public var classNames: [String]? {
        guard let text = metadata["class_names"], let data = text.data(using: .utf8),
              let names = try? JSONSerialization.jsonObject(with: data) as? [String], names.count == model.classCount else { return nil }
        return names
    }

    /// A loaded model from its parts.
    public init(model: Model, statistics: ChannelStatistics, metadata: [String: String]) {
        self.model = model
        self.statistics = statistics
        self.metadata = metadata
    }
}

/// Rebuilds the model a cnn-dist checkpoint describes (metadata `model`,
/// `input`, `classes`) and loads its tensors strictly; the statistics come
/// from `normalization_mean` / `normalization_std`. Throws
/// `CnnError.invalidCheckpoint` naming the file and the missing or bad entry.
public func loadModelCheckpoint(path given: String) throws -> LoadedModel {
    let path = try modelFile(given)
    let (tensors, metadata) = try readStateDict(path: path)
    func bad(_ reason: String) -> CnnError { CnnError.invalidCheckpoint(file: path, reason: reason) }
    guard let name = metadata["model"] else {
        throw bad("metadata has no 'model' entry, so the architecture is unknown (a bare PyTorch state_dict? "
                  + "save it with metadata model, input, classes, normalization_mean, normalization_std)")
    }
    // A model file's text travels in the checkpoint, so the checkpoint alone rebuilds the model.
    let definition: ModelDefinition
    if let text = metadata["model_file"] {
        do { definition = try ModelFile.parse(yaml: text, file: path + " (metadata model_file)", defaultName: name) } catch {
            throw bad("metadata model_file does not define a model: \(error)")
        }
    } else if let zoo = ZooModel(rawValue: name) {
        definition = zoo.definition
    } else {
        throw bad("metadata names model '\(name)', which is not one of \(ZooModel.names.joined(separator: ", ")) "
                  + "and comes with no model_file")
    }
    var input: [Int]? = nil
    if let text = metadata["input"] {
        do { input = try parseShapeField(text, field: "input") } catch {
            throw bad("metadata input '\(text)' is not C x H x W, e.g. 1x28x28 (C up to 4096, H and W up to 65536)")
        }
    }
    var classes: Int? = nil
    if let text = metadata["classes"] {
        guard let n = Int(text), (2...100_000).contains(n) else {
            throw bad("metadata classes '\(text)' is not an integer from 2 to 100000")
        }
        classes = n
    }
    // The metadata must not make us allocate a model much larger than the file's own
    // tensors (a model of about the file's size is built, and the strict load names what differs).
    let fileValues = tensors.values.reduce(0) { $0 + $1.bytes.count / ($1.dtype == .f32 ? 4 : 8) }
    if let needed = try? modelValueCount(definition, input: input, classes: classes), needed > 2 * fileValues + (1 << 20) {
        throw bad("metadata model \(name), input \(input.map(formatShape) ?? "default"), classes \(classes.map(String.init) ?? "default") "
                  + "describe \(needed) parameter and buffer values, but the file holds \(fileValues)")
    }
    let model: Model
    do {
        model = metadata["model_file"] == nil ? try Model(name: name, inputShape: input, classCount: classes)
                                               : try Model(definition: definition, inputShape: input, classCount: classes)
    } catch {
        throw bad("cannot build \(name) for input \(input.map(formatShape) ?? "default") and \(classes.map(String.init) ?? "default") classes: \(error)")
    }
    let statistics = try checkpointStatistics(metadata, channels: model.inputShape[0], file: path)
    try model.store.load(tensors, strict: true, skip: { _ in false }, source: path)
    return LoadedModel(model: model, statistics: statistics, metadata: metadata)
}

/// The normalisation in a checkpoint's metadata, one mean and std per channel.
public func checkpointStatistics(_ metadata: [String: String], channels: Int, file: String) throws -> ChannelStatistics {
    func values(_ key: String) throws -> [Double] {
        guard let text = metadata[key] else {
            throw CnnError.invalidCheckpoint(file: file, reason: "metadata has no '\(key)' entry (the normalisation the model was trained with)")
        }
        let parsed = text.split(separator: ",").map { Double($0.trimmingCharacters(in: .whitespaces)) }
        guard parsed.count == channels, parsed.allSatisfy({ $0 != nil && $0!.isFinite }) else {
            throw CnnError.invalidCheckpoint(file: file, reason: "metadata \(key) '\(text)' is not \(channels) comma-separated numbers (one per input channel)")
        }
        return parsed.map { $0! }
    }
    let mean = try values("normalization_mean"), std = try values("normalization_std")
    guard std.allSatisfy({ $0 > 0 }) else {
        throw CnnError.invalidCheckpoint(file: file, reason: "metadata normalization_std '\(metadata["normalization_std"]!)' has a value <= 0")
    }
    return ChannelStatistics(mean: mean, std: std)
}

/// The metadata cnn-dist writes with a model (as the trainer does).
public func modelCheckpointMetadata(model: Model, statistics: ChannelStatistics, step: Int) -> [String: String] {
    [
        "model": model.name, "input": formatShape(model.inputShape), "classes": String(model.classCount),
        "step": String(step), "format": "cnn-dist",
        "normalization_mean": statistics.mean.map { String($0) }.joined(separator: ","),
        "normalization_std": statistics.std.map { String($0) }.joined(separator: ","),
    ]
}

/// Writes `model` as a cnn-dist checkpoint (state_dict + metadata), atomically.
/// `extraMetadata` entries are added (and may override the standard ones).
public func writeModelCheckpoint(model: Model, statistics: ChannelStatistics, step: Int = 0, to path: String,
                                 extraMetadata: [String: String] = [:]) throws {
    var metadata = modelCheckpointMetadata(model: model, statistics: statistics, step: step)
    metadata.merge(extraMetadata) { _, new in new }
    try writeFileAtomically(try SafeTensors.encode(model.store.stateDict(), metadata: metadata), to: path)
}

/// The definition a config's `model` names: a zoo model or a model file.
public func modelDefinition(_ model: String) throws -> ModelDefinition {
    ModelFile.isPath(model) ? try ModelFile.load(path: model) : try ZooModel.named(model).definition
}

/// Parameter and buffer values of a model for `input` and `classes`,
/// counted from its layer tree without allocating them (nil on overflow).
public func modelValueCount(_ definition: ModelDefinition, input: [Int]?, classes: Int?) throws -> Int? {
    let root = try definition.build(input: input ?? definition.defaultInput ?? [1, 28, 28], classes: classes ?? definition.defaultClasses ?? 10)
    var total = 0
    var overflow = false
    func visit(_ layer: Layer) {
        for spec in layer.parameterSpecs + layer.bufferSpecs {
            var n = 1
            for d in spec.shape {
                let (p, o) = n.multipliedReportingOverflow(by: d)
                overflow = overflow || o
                n = p
            }
            let (t, o) = total.addingReportingOverflow(n)
            overflow = overflow || o
            total = t
        }
        layer.children.forEach { visit($0.layer) }
    }
    visit(root)
    return overflow ? nil : total
}

/// The model file a path means: the file itself, or for a run directory its
/// final model.safetensors, else the model of its newest verified checkpoint.
public func modelFile(_ path: String) throws -> String {
    guard FileBytes.isDirectory(path) else { return path }
    let base = path.hasSuffix("/") ? String(path.dropLast()) : path
    if FileBytes.exists(base + "/model.safetensors") && !FileBytes.isDirectory(base + "/model.safetensors") {
        return base + "/model.safetensors"
    }
    guard FileBytes.isDirectory(base + "/checkpoints") else {
        throw CnnError.io(file: path, reason: "is a directory, but neither a model file nor a cnn-dist run directory "
                          + "(no model.safetensors or checkpoints/ in it)")
    }
    return try CheckpointStore.latestVerified(runDirectory: base).folder + "/model.safetensors"
}
