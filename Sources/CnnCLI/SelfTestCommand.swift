import ArgumentParser

/// Placeholder, replaced by its owner.
public struct SelfTestCommand: ParsableCommand {
    public static let configuration = CommandConfiguration(commandName: "selftest", shouldDisplay: false)
    public init() {}
    public func run() throws { throw ValidationError("not built yet") }
}
