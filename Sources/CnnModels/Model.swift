import CnnCore
import CnnLayers

/// A network with its flat parameter store, input shape and class count.
public final class Model {
    /// Zoo name ("fashion-cnn") or the model file's `name`.
    public let name: String
    /// The layer tree; its state_dict names are PyTorch's.
    public let root: Layer
    /// One flat parameter buffer, one flat gradient buffer, buffers, and the name table.
    public let store: ParameterStore
    /// Shape of one sample, C×H×W.
    public let inputShape: [Int]
    public let classCount: Int
    /// Where backward's dL/dx tensors live and which ReLUs run in place (see `MemoryPlan`);
    /// made when the model is built, again by `planMemory(batch:)`.
    public private(set) var memoryPlan: MemoryPlan

    /// Plans backward memory for batches of `batch` images and sizes the shared buffers for them.
    /// Results are bit-identical whatever the plan; only peak memory changes.
    @discardableResult
    /// `recompute`: BatchNorm + ReLU outputs read by a convolution are recomputed in backward
    /// (see `MemoryPlan`); it stays the model's setting for later plans.
    public func planMemory(batch: Int, recompute: Bool? = nil) -> MemoryPlan {
        if let recompute { self.recompute = recompute }
        memoryPlan = MemoryPlan.apply(to: root, inputShape: [max(batch, 1)] + inputShape, recompute: self.recompute)
        return memoryPlan
    }

    /// Whether the memory plan recomputes BatchNorm + ReLU outputs (`planMemory(batch:recompute:)`).
    public private(set) var recompute = false

    /// Builds `name` for inputs of `inputShape` (C, H, W) and `classCount` classes,
    /// checking every layer accepts the shapes it gets. `name` is a zoo model
    /// ("resnet20") or the path of a model file ending in .yaml or .yml.
    public convenience init(name: String, inputShape: [Int]? = nil, classCount: Int? = nil) throws {
        if ModelFile.isPath(name) {
            try self.init(definition: try ModelFile.load(path: name), inputShape: inputShape, classCount: classCount)
        } else {
            let entry = try ZooModel.named(name)
            try self.init(name: name, defaultInput: entry.defaultInput, defaultClasses: entry.defaultClasses,
                          inputShape: inputShape, classCount: classCount) { try entry.build(input: $0, classes: $1) }
        }
    }

    /// Builds the model a model file defines, for `inputShape` (C, H, W; default the
    /// file's `input`) and `classCount` classes (default the file's `classes`).
    public convenience init(definition: ModelDefinition, inputShape: [Int]? = nil, classCount: Int? = nil) throws {
        guard let input = inputShape ?? definition.defaultInput else {
            throw CnnError.invalidConfig(field: "input", value: "(none)",
                                         allowed: "C x H x W; \(definition.file) has no 'input', so give one")
        }
        try self.init(name: definition.name, defaultInput: input, defaultClasses: definition.defaultClasses ?? 10,
                      inputShape: inputShape, classCount: classCount) { try definition.build(input: $0, classes: $1) }
    }

    private init(name: String, defaultInput: [Int], defaultClasses: Int, inputShape: [Int]?, classCount: Int?,
                 build: ([Int], Int) throws -> Layer) throws {
        let input = inputShape ?? defaultInput
        let classes = classCount ?? defaultClasses
        guard input.count == 3, input.allSatisfy({ $0 > 0 }) else {
            throw CnnError.invalidConfig(field: "input", value: formatShape(input), allowed: "C x H x W, all positive")
        }
        guard classes >= 2 else {
            throw CnnError.invalidConfig(field: "classes", value: String(classes), allowed: "an integer >= 2")
        }
        let root: Layer
        do {
            root = try build(input, classes)
            let out = try root.outputShape(for: [1] + input)
            guard out == [1, classes] else {
                throw CnnError.shapeMismatch(layer: name, expected: "output 1x\(classes)", got: formatShape(out))
            }
        } catch let error as CnnError {
            if case .invalidData = error { throw error }   // a model-file error: it names file, line and field
            // Name the model and the input so the user knows which combination fails.
            throw CnnError.invalidConfig(field: "input", value: formatShape(input),
                                         allowed: "a shape \(name) can take (\(error))")
        }
        self.name = name
        self.root = root
        self.inputShape = input
        self.classCount = classes
        self.store = ParameterStore(root: root)
        self.memoryPlan = MemoryPlan.apply(to: root, inputShape: [1] + self.inputShape)
    }

    /// A model from a layer tree built by hand (tests, experiments), checked
    /// like a zoo model: `root` must map N x `inputShape` to N x `classCount`.
    public init(name: String, root: Layer, inputShape: [Int], classCount: Int) throws {
        let out = try root.outputShape(for: [1] + inputShape)
        guard out == [1, classCount] else {
            throw CnnError.shapeMismatch(layer: name, expected: "output 1x\(classCount)", got: formatShape(out))
        }
        self.name = name
        self.root = root
        self.inputShape = inputShape
        self.classCount = classCount
        self.store = ParameterStore(root: root)
        self.memoryPlan = MemoryPlan.apply(to: root, inputShape: [1] + self.inputShape)
    }

    /// The auxiliary classifiers in the layer tree (GoogLeNet's aux1, aux2), in model order.
    public var auxiliaryHeads: [AuxiliaryHead] {
        var found: [AuxiliaryHead] = []
        func visit(_ layer: Layer) {
            if let head = layer as? AuxiliaryHead { found.append(head) }
            for child in layer.children { visit(child.layer) }
        }
        visit(root)
        return found
    }

    /// Trainable parameter count (as PyTorch's sum of p.numel()).
    public var parameterCount: Int { store.parameterCount }

    public func forward(_ input: Tensor, context: ExecutionContext) -> Tensor {
        root.forward(input, context: context)
    }

    /// dL/dx of the model input; an empty tensor when `context.needsInputGradient` is
    /// false (the first layer may then skip it).
    public func backward(_ gradOutput: Tensor, context: ExecutionContext) -> Tensor {
        let inputGradientWanted = context.needsInputGradient
        defer { context.needsInputGradient = inputGradientWanted }
        if !(root is InputGradientOptional) { context.needsInputGradient = true }
        let dx = root.backward(gradOutput, context: context)
        context.gradientsReady?(root)
        return inputGradientWanted ? dx : Tensor(shape: [0])
    }

    /// Throws unless `shape` is [N] + inputShape with N ≥ 1.
    public func checkInput(_ shape: [Int]) throws {
        guard shape.count == 4, shape[0] >= 1, Array(shape.dropFirst()) == inputShape else {
            throw CnnError.shapeMismatch(layer: name, expected: "N x " + formatShape(inputShape), got: formatShape(shape))
        }
    }
}
