import ArgumentParser
import CnnCore
import CnnModels
import CnnTraining

/// `cnn-dist summary --model NAME|FILE.yaml`: layers, output shapes, weights, biases, parameters, MACs.
public struct SummaryCommand: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "summary",
        abstract: "Print a model's layers with output shape, weights, biases, parameters and multiply-accumulates.",
        discussion: "Models: " + ZooModel.names.joined(separator: ", ") + ", or a model file (.yaml/.yml)"
    )

    @Option(help: "Model name (\(ZooModel.names.joined(separator: ", "))) or model file path (.yaml/.yml).")
    var model: String = "fashion-cnn"

    @Option(help: "Input shape CxHxW, e.g. 3x224x224 (default: the model's).")
    var input: String?

    @Option(help: "Number of classes (default: the model's).")
    var classes: Int?

    @Flag(help: "Print one JSON object instead of a table.")
    var json = false

    public init() {}

    public func run() throws {
        let shape = try input.map { try parseShapeField($0, field: "input") }
        let built = try Model(name: model, inputShape: shape, classCount: classes)
        let rows = try summaryRows(of: built)
        let totalMACs = rows.reduce(0) { $0 + $1.multiplyAccumulates }
        let totalBiases = biasCount(of: built.root)
        if json {
            printJSON([
                "model": model, "input": built.inputShape, "classes": built.classCount,
                "parameters": built.parameterCount, "weights": built.parameterCount - totalBiases, "biases": totalBiases,
                "multiply_accumulates": totalMACs,
                "layers": rows.map { ["name": $0.name, "type": $0.type, "output": $0.outputShape, "weights": $0.weights,
                                      "biases": $0.biases, "parameters": $0.parameters,
                                      "multiply_accumulates": $0.multiplyAccumulates] as [String: Any] },
            ])
            return
        }
        let header = ["Layer", "Type", "Output", "Weights", "Biases", "Parameters", "MACs"]
        var table = [header]
        table.append(["input", "", formatShape(built.inputShape), "0", "0", "0", "0"])
        for row in rows {
            table.append([row.name, row.type, formatShape(row.outputShape), groupedDigits(row.weights),
                          groupedDigits(row.biases), groupedDigits(row.parameters), groupedDigits(row.multiplyAccumulates)])
        }
        table.append(["Total", "", "", groupedDigits(built.parameterCount - totalBiases), groupedDigits(totalBiases),
                      groupedDigits(built.parameterCount), groupedDigits(totalMACs)])
        let widths = header.indices.map { c in table.map { $0[c].count }.max()! }
        for (i, line) in table.enumerated() {
            let cells = line.enumerated().map { c, text in
                c >= 3 ? String(repeating: " ", count: widths[c] - text.count) + text
                       : text + String(repeating: " ", count: widths[c] - text.count)
            }
            print(cells.joined(separator: "  "))
            if i == 0 || i == table.count - 2 { print(widths.map { String(repeating: "-", count: $0) }.joined(separator: "  ")) }
        }
        print("\(model) \(formatShape(built.inputShape)) -> \(built.classCount) classes: "
              + "\(groupedDigits(built.parameterCount)) parameters, \(groupedDigits(totalMACs)) multiply-accumulates per image")
    }
}
