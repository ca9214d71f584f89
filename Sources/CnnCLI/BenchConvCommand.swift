import ArgumentParser

/// Placeholder, replaced by its owner.
public struct BenchConvCommand: ParsableCommand {
    public static let configuration = CommandConfiguration(commandName: "conv", shouldDisplay: false)
    public init() {}
    public func run() throws { throw ValidationError("not built yet") }
}
