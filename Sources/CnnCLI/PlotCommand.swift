import ArgumentParser
import CnnCore
import CnnTraining
import Foundation

/// `cnn-dist plot RUN_DIR [RUN_DIR ...] [--output FILE.svg|FILE.png]`: learning curves
/// (train and test loss and accuracy, and the learning rate when metrics.jsonl has it, against
/// epoch) from RUN_DIR/metrics.jsonl, as an SVG or a PNG (by the output's extension), titled
/// with the model and dataset from RUN_DIR/config.json when present. Several runs are
/// overlaid, a colour per run. Works on a run in progress: it only reads the run directories.
public struct PlotCommand: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "plot",
        abstract: "Plot runs' loss, accuracy and learning-rate curves from metrics.jsonl as SVG or PNG.")

    @Argument(help: "Run directories (each holds metrics.jsonl, and config.json for the title); several are overlaid.")
    var runDirectories: [String]

    @Option(name: .shortAndLong, help: "File to write, .svg or .png (default RUN_DIR/curves.svg; required for several runs).")
    var output: String?

    public init() {}

    public func validate() throws {
        if runDirectories.isEmpty { throw ValidationError("give at least one run directory") }
        if runDirectories.count > 1 && output == nil { throw ValidationError("--output is required when plotting several runs") }
    }

    public func run() throws {
        let dirs = runDirectories.map { $0.hasSuffix("/") && $0.count > 1 ? String($0.dropLast()) : $0 }
        let runs = try dirs.map { dir in
            (name: URL(fileURLWithPath: dir).standardizedFileURL.lastPathComponent, metrics: try readMetricsLines(path: dir + "/metrics.jsonl"))
        }
        let title = runs.count == 1 ? Self.title(runDirectory: dirs[0], epochs: runs[0].metrics.count)
            : runs.map(\.name).joined(separator: " vs ")
        let path = output ?? dirs[0] + "/curves.svg"
        let panels = learningCurvePanels(runs)
        if path.lowercased().hasSuffix(".png") {
            try writeFileAtomically(try learningCurvesPicture(title: title, panels: panels).png(), to: path)
        } else {
            try writeFileAtomically(Array(svgDocument(title: title, panels: panels).utf8), to: path)
        }
        for run in runs {
            let last = run.metrics[run.metrics.count - 1]
            print(String(format: "plot: %@: %d epochs, last test accuracy %.4f", run.name, run.metrics.count, last.testAccuracy))
        }
        print("plot: wrote \(path)")
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
