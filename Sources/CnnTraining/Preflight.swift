import Foundation
import CnnCore
import CnnModels
import CnnDistributed

/// Checks made before training starts, so that a run fails in its first
/// second with a message naming the field and what is allowed, instead of
/// minutes later (or on one rank only, leaving the others waiting):
///
/// - the configuration: every field in range (`TrainingConfig.validate`),
///   the global batch at least the number of ranks;
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
    public static func check(_ config: TrainingConfig, runDirectory: String?, communicator: Communicator) throws {
        try checkConfig(config, ranks: communicator.size)
        try checkModel(config)
        try checkData(config)
        if communicator.rank == 0, let runDirectory { try checkRunDirectory(runDirectory) }
    }

    /// Field ranges and the batch-versus-ranks rule.
    public static func checkConfig(_ config: TrainingConfig, ranks: Int) throws {
        try config.validate(modelNames: ModelZoo.names)
        guard config.batch_size >= ranks else {
            throw CnnError.invalidConfig(field: "batch_size", value: String(config.batch_size),
                                         allowed: "at least the number of ranks (\(ranks)), so that every rank gets a sample")
        }
        if let classes = config.classes, classes < 2 {
            throw CnnError.invalidConfig(field: "classes", value: String(classes), allowed: "an integer >= 2")
        }
    }

    /// The image shape the dataset will deliver (without reading it).
    public static func datasetImageShape(_ dataset: String) -> [Int] {
        dataset == "cifar10" ? [3, 32, 32] : [1, 28, 28]
    }

    /// Builds the model once for the configured (or the dataset's) input shape.
    public static func checkModel(_ config: TrainingConfig) throws {
        let configured = try config.input.map { try parseShapeField($0, field: "input") }
        // Synthetic images take the configured shape; real datasets have their own.
        let datasetShape = config.dataset == "synthetic" ? configured ?? [1, 28, 28] : datasetImageShape(config.dataset)
        let input = configured ?? datasetShape
        guard input == datasetShape else {
            throw CnnError.invalidConfig(field: "input", value: formatShape(input),
                                         allowed: "the \(config.dataset) image shape \(formatShape(datasetShape))")
        }
        // Model(name:inputShape:classCount:) throws invalidConfig naming "input" or "classes" with the reason.
        _ = try Model(name: config.model, inputShape: input, classCount: config.classes ?? 10)
    }

    /// The dataset's files, each of which must exist and be readable (one of the accepted spellings for IDX).
    public static func checkData(_ config: TrainingConfig) throws {
        let fm = FileManager.default
        let dir = config.data.hasSuffix("/") ? String(config.data.dropLast()) : config.data
        let groups: [[String]]
        switch config.dataset {
        case "synthetic":
            return
        case "cifar10":
            groups = ((1...5).map { "data_batch_\($0).bin" } + ["test_batch.bin"]).map { [$0] }
        default:
            groups = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
                .map { stem in
                    let dotted = stem.replacingOccurrences(of: "-idx", with: ".idx")
                    return [stem, stem + ".gz", dotted, dotted + ".gz"]
                }
        }
        var isDirectory: ObjCBool = false
        guard fm.fileExists(atPath: dir, isDirectory: &isDirectory), isDirectory.boolValue else {
            throw CnnError.invalidConfig(field: "data", value: config.data,
                                         allowed: "a directory holding the \(config.dataset) files (it does not exist on host \(localHostNameForReports()))")
        }
        for names in groups {
            let present = names.filter { fm.fileExists(atPath: "\(dir)/\($0)") }
            guard !present.isEmpty else {
                throw CnnError.invalidConfig(field: "data", value: config.data,
                                             allowed: "a directory holding \(names[0]) (or \(names.dropFirst().joined(separator: ", ")))")
            }
            guard present.contains(where: { fm.isReadableFile(atPath: "\(dir)/\($0)") }) else {
                throw CnnError.invalidConfig(field: "data", value: config.data,
                                             allowed: "readable dataset files; \(dir)/\(present[0]) cannot be read by this user")
            }
        }
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

/// gethostname, for messages.
func localHostNameForReports() -> String {
    var buf = [CChar](repeating: 0, count: 256)
    return gethostname(&buf, buf.count - 1) == 0 ? String(cString: buf) : "?"
}
