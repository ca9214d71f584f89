import Foundation
import CnnCore
import CnnData
import CnnModels
import CnnDistributed

/// Checks made before training starts, so that a run fails in its first
/// second with a message naming the field and what is allowed, instead of
/// minutes later (or on one rank only, leaving the others waiting):
///
/// - the configuration: every field in range (`TrainingConfig.validate`),
///   the global batch at least the number of ranks, and `precision: bf16` only on a CPU
///   with AVX512_BF16;
/// - the model: built once for the configured input shape and class count,
///   so a shape the model cannot take is reported now;
/// - the data: the dataset's files exist and are readable on this rank's host
///   (every rank reads them);
/// - the run directory (rank 0, the writer): it can be created and written,
///   tried with a temporary file.
///
/// Every rank runs the checks; a failing rank throws (under mpirun the
/// command then ends the job).
public enum Preflight {
    /// Runs every check for `config` on this rank; throws the first failure.
    /// `reuse`: what a run directory that already holds something means.
    public static func check(_ config: TrainingConfig, runDirectory: String?, communicator: Communicator,
                             reuse: RunDirectoryReuse = .refuse) throws {
        try checkConfig(config, ranks: communicator.size)
        try checkPrecision(config.precision)
        try checkModel(config)
        try checkData(config)
        if communicator.rank == 0, let runDirectory {
            try prepareRunDirectory(runDirectory, reuse: reuse)
            try checkRunDirectory(runDirectory)
        }
    }

    /// `precision: bf16` needs AVX512_BF16 (and AVX-512F/BW) on `cpu`: refused otherwise with
    /// `CnnError.missingCPUFeature` naming the missing feature and the CPU. `portableForced`
    /// (CNN_BF16_KERNEL=portable) lets it run on the slow portable kernel instead, for tests.
    public static func checkPrecision(_ precision: ComputePrecision, what: String = "precision bf16",
                                      cpu: CPUFeatures = .current,
                                      portableForced: Bool = BF16Kernel.portableForced) throws {
        guard precision == .bf16, !portableForced else { return }
        try cpu.requireBF16(for: what)
    }

    /// What a fresh run does with a run directory that is not empty.
    public enum RunDirectoryReuse: Sendable {
        /// Refuse, naming what is there (two runs must never mix).
        case refuse
        /// Continue the run that is there (`--resume`).
        case resume
        /// Remove the old run first (`--overwrite`); only a folder that holds
        /// nothing but a cnn-dist run's files.
        case overwrite
    }

    /// The names a run directory may hold (see `RunDirectory`).
    static func isRunFile(_ name: String) -> Bool {
        ["config.json", "metrics.jsonl", "model.safetensors", "checkpoints", "curves.svg", RunDirectory.lockName].contains(name)
            || name.hasPrefix("events.out.tfevents.") || name.hasPrefix(".preflight-") || name.contains(".tmp-")
    }

    static func prepareRunDirectory(_ path: String, reuse: RunDirectoryReuse) throws {
        let names = ((try? FileManager.default.contentsOfDirectory(atPath: path)) ?? []).sorted()
        guard !names.isEmpty, reuse != .resume else { return }
        switch reuse {
        case .refuse:
            throw CnnError.invalidConfig(field: "run-dir", value: path,
                                         allowed: "an empty or new folder: it holds \(names.prefix(5).joined(separator: ", "))"
                                            + (names.count > 5 ? ", ..." : "") + " (continue that run with --resume \(path), "
                                            + "or replace it with --overwrite)")
        case .overwrite:
            let foreign = names.filter { !isRunFile($0) }
            guard foreign.isEmpty else {
                throw CnnError.invalidConfig(field: "run-dir", value: path,
                                             allowed: "a cnn-dist run folder to overwrite; it also holds \(foreign.prefix(5).joined(separator: ", ")), "
                                                + "which --overwrite will not delete")
            }
            try RunDirectory.checkNotInUse(path)
            for name in names {
                do { try FileManager.default.removeItem(atPath: path + "/" + name) } catch {
                    throw CnnError.io(file: path + "/" + name, reason: "cannot remove the old run's file: \(error.localizedDescription)")
                }
            }
        case .resume:
            return
        }
    }

    /// Field ranges and the batch-versus-ranks rule.
    public static func checkConfig(_ config: TrainingConfig, ranks: Int) throws {
        try config.validate()
        guard config.batchSize >= ranks else {
            throw CnnError.invalidConfig(field: "batch_size", value: String(config.batchSize),
                                         allowed: "at least the number of ranks (\(ranks)), so that every rank gets a sample")
        }
        if let classes = config.classes, classes < 2 {
            throw CnnError.invalidConfig(field: "classes", value: String(classes), allowed: "an integer >= 2")
        }
    }

    /// Builds the model once for the configured (or the dataset's) input shape.
    public static func checkModel(_ config: TrainingConfig) throws {
        let configured = try config.input.map { try parseShapeField($0, field: "input") }
        // Images are converted to the configured shape (channels and size); else the dataset's own.
        let input = configured ?? config.dataset.imageShape ?? config.dataset.defaultShape
        if configured != nil, config.dataset.hasFiles, !(input[0] == 1 || input[0] == 3) {
            throw CnnError.invalidConfig(field: "input", value: formatShape(input),
                                         allowed: "1 or 3 channels (images are converted to them) and any H x W")
        }
        // Counted before it is built, so an absurd input or class count is refused, not allocated.
        let limit = 1 << 30
        let counted: Int?
        do { counted = try modelValueCount(modelDefinition(config.model), input: input, classes: config.classes ?? 10) } catch { counted = 0 }
        guard let values = counted, values <= limit else {
            throw CnnError.invalidConfig(field: config.classes.map { _ in "input/classes" } ?? "input", value: formatShape(input),
                                         allowed: "a shape and class count for which \(config.model) has at most \(limit) parameters")
        }
        // Model(name:inputShape:classCount:) throws invalidConfig naming "input" or "classes" with the reason.
        _ = try Model(name: config.model, inputShape: input, classCount: config.classes ?? 10)
    }

    /// The dataset's files, each of which must exist and be readable (the
    /// registry's list, with its accepted spellings); a missing dataset names
    /// the dataset, the folder looked in and how to get it.
    public static func checkData(_ config: TrainingConfig) throws {
        guard config.dataset.hasFiles else { return }
        guard let dir = config.dataDirectory else {
            throw CnnError.invalidConfig(field: "data", value: "(none)",
                                         allowed: "a folder for the \(config.dataset.rawValue) dataset: \(config.dataset.howToGet)")
        }
        try config.dataset.checkFiles(directory: dir)
    }

    /// Creates the run directory if needed and writes, then removes, a temporary file in it.
    public static func checkRunDirectory(_ path: String) throws {
        let fm = FileManager.default
        do {
            try fm.createDirectory(atPath: path, withIntermediateDirectories: true)
        } catch {
            throw CnnError.invalidConfig(field: "run-dir", value: path,
                                         allowed: "a directory that can be created and written (\(error.localizedDescription))")
        }
        let probe = "\(path)/.preflight-\(getpid())"
        guard fm.createFile(atPath: probe, contents: Data("ok\n".utf8)) else {
            throw CnnError.invalidConfig(field: "run-dir", value: path, allowed: "a writable directory (cannot create files in it)")
        }
        try? fm.removeItem(atPath: probe)
    }
}
