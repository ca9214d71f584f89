import ArgumentParser
import CnnCore
import CnnTraining
import Foundation

/// `cnn-dist plot RUN_DIR [--output FILE.svg]`: learning curves (train and
/// test loss and accuracy against epoch) from RUN_DIR/metrics.jsonl as an SVG,
/// titled with the model and dataset from RUN_DIR/config.json when present.
/// Works on a run in progress: it only reads the run directory.
public struct PlotCommand: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "plot",
        abstract: "Plot a run's loss and accuracy curves from metrics.jsonl as an SVG.")

    @Argument(help: "Run directory (holds metrics.jsonl, and config.json for the title).")
    var runDirectory: String

    @Option(name: .shortAndLong, help: "SVG file to write (default RUN_DIR/curves.svg).")
    var output: String?

    public init() {}

    public func run() throws {
        let dir = runDirectory.hasSuffix("/") && runDirectory.count > 1 ? String(runDirectory.dropLast()) : runDirectory
        let metrics = try readMetricsLines(path: dir + "/metrics.jsonl")
        let svg = learningCurvesSVG(metrics, title: Self.title(runDirectory: dir, epochs: metrics.count))
        let path = output ?? dir + "/curves.svg"
        try writeFileAtomically(Array(svg.utf8), to: path)
        let last = metrics[metrics.count - 1]
        print(String(format: "plot: %d epochs, last test accuracy %.4f; wrote %@", metrics.count, last.testAccuracy, path))
    }

    /// "fashion-cnn on fashion-mnist: fc40 (12 epochs)", or the directory's name alone without a readable config.json.
    static func title(runDirectory dir: String, epochs: Int) -> String {
        let name = URL(fileURLWithPath: dir).standardizedFileURL.lastPathComponent
        let suffix = "\(name) (\(epochs) epoch\(epochs == 1 ? "" : "s"))"
        guard let data = FileManager.default.contents(atPath: dir + "/config.json"),
              let config = (try? JSONSerialization.jsonObject(with: data)) as? [String: Any],
              let model = config["model"] as? String else { return suffix }
        let dataset = (config["dataset"] as? String).map { " on \($0)" } ?? ""
        return "\(model)\(dataset): \(suffix)"
    }
}
