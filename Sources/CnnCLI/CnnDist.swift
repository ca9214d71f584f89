import ArgumentParser

/// The `cnn-dist` command: distributed data-parallel CNN training.
public struct CnnDist: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "cnn-dist",
        abstract: "Distributed data-parallel CNN training on CPU clusters.",
        subcommands: [TrainCommand.self, EvalCommand.self, PredictCommand.self, SummaryCommand.self,
                      PlotCommand.self, DoctorCommand.self, BenchCommand.self, SelfTestCommand.self]
    )
    public init() {}
}
