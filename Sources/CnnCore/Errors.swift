/// Errors thrown by library code. Each names what a user must fix: the layer
/// and the value, the file, the config field, or the rank. Only the command
/// line turns them into an exit code.
public enum CnnError: Error, CustomStringConvertible, Equatable {
    /// A layer was built with an argument it cannot take.
    case invalidArgument(layer: String, argument: String, value: String, reason: String)
    /// A tensor reached a layer with a shape it cannot take.
    case shapeMismatch(layer: String, expected: String, got: String)
    /// A data file is damaged or not in the expected format.
    case invalidData(file: String, reason: String)
    /// A configuration value is out of range or unknown.
    case invalidConfig(field: String, value: String, allowed: String)
    /// A checkpoint is damaged, incomplete or for another model.
    case invalidCheckpoint(file: String, reason: String)
    /// A collective or point-to-point operation failed.
    case communication(rank: Int, call: String, reason: String)
    /// Training produced a non-finite value.
    case nonFinite(step: Int, location: String)
    /// An I/O failure on a file.
    case io(file: String, reason: String)
    /// The CPU lacks an instruction-set feature a requested mode needs.
    case missingCPUFeature(feature: String, cpu: String, neededFor: String)

    public var description: String {
        switch self {
        case let .invalidArgument(layer, argument, value, reason):
            return "\(layer): invalid \(argument) = \(value): \(reason)"
        case let .shapeMismatch(layer, expected, got):
            return "\(layer): expected input \(expected), got \(got)"
        case let .invalidData(file, reason):
            return "\(file): \(reason)"
        case let .invalidConfig(field, value, allowed):
            return "config field '\(field)' = \(value) is not valid; allowed: \(allowed)"
        case let .invalidCheckpoint(file, reason):
            return "checkpoint \(file): \(reason)"
        case let .communication(rank, call, reason):
            return "rank \(rank): \(call) failed: \(reason)"
        case let .nonFinite(step, location):
            return "non-finite value at step \(step) in \(location)"
        case let .io(file, reason):
            return "\(file): \(reason)"
        case let .missingCPUFeature(feature, cpu, neededFor):
            return "\(neededFor) needs the CPU feature \(feature), which this CPU (\(cpu)) does not have; "
                + "use precision fp32 here"
        }
    }
}
