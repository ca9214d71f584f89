import ArgumentParser

/// Placeholder, replaced by its owner.
public struct BenchGemmCommand: ParsableCommand {
    public static let configuration = CommandConfiguration(commandName: "gemm", shouldDisplay: false)
    public init() {}
    public func run() throws { throw ValidationError("not built yet") }
}
