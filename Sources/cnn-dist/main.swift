import CnnCLI

CnnDist.main(CommandLine.arguments.dropFirst().map { $0 })
