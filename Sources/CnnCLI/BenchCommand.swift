import ArgumentParser

/// `cnn-dist bench ...`: measured performance of the compute core.
public struct BenchCommand: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "bench",
        abstract: "Benchmarks: GEMM, convolution passes, training steps.",
        subcommands: [BenchGemmCommand.self, BenchConvCommand.self, BenchTrainCommand.self, BenchLoaderCommand.self]
    )
    public init() {}
}
