import CnnCore
import CnnLayers

/// One row of a model summary: a layer (or a block, shown whole).
public struct SummaryRow: Equatable {
    /// Dotted state_dict path ("features.3", "3" or "layer1.0").
    public var name: String
    public var type: String
    /// Output shape of one sample (no batch dimension).
    public var outputShape: [Int]
    /// Trainable parameters in this layer and its sub-layers.
    public var parameters: Int
    /// Of those, the ones not named "bias" (kernels, BatchNorm scales), as seed 004's AlexNet table.
    public var weights: Int
    /// Of those, the ones named "bias".
    public var biases: Int
    /// Multiply-accumulates for one sample.
    public var multiplyAccumulates: Int
}

/// Trainable parameters of a layer tree.
public func parameterCount(of layer: Layer) -> Int {
    layer.parameterSpecs.reduce(0) { $0 + $1.count } + layer.children.reduce(0) { $0 + parameterCount(of: $1.layer) }
}

/// Trainable parameters of a layer tree named "bias" (PyTorch's `bias` tensors).
public func biasCount(of layer: Layer) -> Int {
    layer.parameterSpecs.filter { $0.name == "bias" }.reduce(0) { $0 + $1.count }
        + layer.children.reduce(0) { $0 + biasCount(of: $1.layer) }
}

/// Rows for `model`: Sequential containers are opened; residual and
/// concatenation blocks appear as one row each, as papers tabulate them.
public func summaryRows(of model: Model) throws -> [SummaryRow] {
    var rows: [SummaryRow] = []
    func visit(_ layer: Layer, name: String, input: [Int]) throws -> [Int] {
        if let sequential = layer as? Sequential {
            var shape = input
            for (childName, child) in zip(sequential.names, sequential.layers) {
                shape = try visit(child, name: name.isEmpty ? childName : name + "." + childName, input: shape)
            }
            return shape
        }
        let out = try layer.outputShape(for: input)
        let parameters = parameterCount(of: layer), biases = biasCount(of: layer)
        rows.append(SummaryRow(name: name, type: layer.typeName, outputShape: Array(out.dropFirst()),
                               parameters: parameters, weights: parameters - biases, biases: biases,
                               multiplyAccumulates: layer.multiplyAccumulates(for: input)))
        return out
    }
    _ = try visit(model.root, name: "", input: [1] + model.inputShape)
    return rows
}

/// Formats 62378344 as "62,378,344".
public func groupedDigits(_ value: Int) -> String {
    let digits = String(value.magnitude)
    var out = ""
    for (i, ch) in digits.enumerated() {
        if i > 0 && (digits.count - i) % 3 == 0 { out.append(",") }
        out.append(ch)
    }
    return value < 0 ? "-" + out : out
}
