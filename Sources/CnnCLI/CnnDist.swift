import ArgumentParser
import CnnDistributed
import CnnTraining
import Foundation

/// The `cnn-dist` command: distributed data-parallel CNN training.
public struct CnnDist: ParsableCommand {
    /// The release this binary is.
    public static let version = "0.5.0"

    public static let configuration = CommandConfiguration(
        commandName: "cnn-dist",
        abstract: "Distributed data-parallel CNN training on CPU clusters.",
        version: version,
        subcommands: [TrainCommand.self, EvalCommand.self, PredictCommand.self, SummaryCommand.self,
                      PlotCommand.self, ShowCommand.self, DoctorCommand.self, BenchCommand.self, SelfTestCommand.self,
                      PackCommand.self, ExportCommand.self]
    )
    public init() {}

    /// Runs the command line; the exit status says what kind of failure ended it
    /// (see `worldExitCode(for:)`): only here, not in library code, does the process end.
    public static func main(_ arguments: [String]?) {
        do {
            var command = try parseAsRoot(arguments)
            try command.run()
        } catch {
            let code = error is TrainingInterrupted ? TrainingInterrupted.exitCode : worldExitCode(for: error)
            guard code != 1 else { exit(withError: error) }
            FileHandle.standardError.write(Data("Error: \(error)\n".utf8))
            Foundation.exit(code)
        }
    }
}
