import CnnCore
import CnnLayers

/// The built-in models of the seed documents, each defined by its model file in
/// configs/models/ (compiled in as ZooModelFiles) and built by the same code as a
/// user's file. The four reference models (lenet5, fashion-cnn, minivgg, resnet20)
/// follow ../shared/reference/torch_models.py layer for layer, so state_dict names
/// match; the others follow torchvision (resnet18, vgg11, vgg16, googlenet,
/// densenet121) or d2l (alexnet, nin).
public enum ZooModel: String, CaseIterable, Sendable {
    case lenet5
    case fashionCNN = "fashion-cnn"
    case minivgg, resnet20, alexnet, vgg11, vgg16, nin, googlenet, resnet18, densenet121

    /// The model named `name`; throws naming `field` and the known names.
    public static func named(_ name: String, field: String = "model") throws -> ZooModel {
        guard let model = ZooModel(rawValue: name) else {
            throw CnnError.invalidConfig(field: field, value: name, allowed: names.joined(separator: ", ")
                                            + ", or a model file path ending in .yaml or .yml")
        }
        return model
    }

    /// Every name, in the zoo's order.
    public static var names: [String] { allCases.map(\.rawValue) }

    /// The parsed model file. The files are part of the binary and checked by the tests,
    /// so a failure here is a build defect, not bad input.
    public var definition: ModelDefinition {
        guard let definition = ZooModel.definitions[self] else {
            preconditionFailure("built-in model file configs/models/\(rawValue).yaml does not parse")
        }
        return definition
    }

    /// Every zoo file parsed once, on first use.
    private static let definitions: [ZooModel: ModelDefinition] = {
        var table: [ZooModel: ModelDefinition] = [:]
        for model in allCases {
            do {
                table[model] = try ModelFile.parse(yaml: ZooModelFiles.yaml(for: model),
                                                   file: "configs/models/\(model.rawValue).yaml", defaultName: model.rawValue)
            } catch {
                preconditionFailure("built-in model file configs/models/\(model.rawValue).yaml: \(error)")
            }
        }
        return table
    }()

    /// A line for `cnn-dist summary --help` and the README (the file's `summary`).
    public var summary: String { definition.summary }

    /// C, H, W the model was designed for (the file's `input`).
    public var defaultInput: [Int] {
        guard let input = definition.defaultInput else { preconditionFailure("configs/models/\(rawValue).yaml has no input") }
        return input
    }

    /// Classes of the dataset the model was designed for (the file's `classes`).
    public var defaultClasses: Int {
        guard let classes = definition.defaultClasses else { preconditionFailure("configs/models/\(rawValue).yaml has no classes") }
        return classes
    }

    /// The layers for `input` (C, H, W) and `classes` outputs.
    public func build(input: [Int], classes: Int) throws -> Layer {
        try definition.build(input: input, classes: classes)
    }
}
