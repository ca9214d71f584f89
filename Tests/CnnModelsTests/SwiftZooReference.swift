import CnnCore
import CnnLayers

// The zoo's Swift builders as they were before the zoo became model files, frozen here
// as the reference the model files must reproduce exactly (ZooFileEquivalenceTests).

/// The Swift builder of each zoo model, by name.
func swiftZooBuilder(_ name: String) -> (([Int], Int) throws -> Layer)? {
    switch name {
    case "lenet5": return lenet5
    case "fashion-cnn": return fashionCNN
    case "minivgg": return miniVGG
    case "resnet20": return resnet20
    case "alexnet": return alexNet
    case "vgg11": return { try vgg([1, 1, 2, 2, 2], $0, $1) }
    case "vgg16": return { try vgg([2, 2, 3, 3, 3], $0, $1) }
    case "nin": return networkInNetwork
    case "googlenet": return googLeNet
    case "resnet18": return resnet18
    case "densenet121": return densenet121
    default: return nil
    }
}

/// TestModels.smoothBatchNorm's layers.
func swiftSmoothBatchNorm() throws -> Layer {
    Sequential([
        try Conv2D(1, 8, kernelSize: 3, padding: 1), try BatchNorm2d(8), ELU(), try AvgPool2d(kernelSize: 2),
        try Conv2D(8, 16, kernelSize: 3, padding: 1), try BatchNorm2d(16), Tanh(), try AvgPool2d(kernelSize: 2),
        Flatten(), try Dropout(p: 0.2), try Linear(16 * 7 * 7, 10),
    ])
}

/// Appends layers while tracking the shape they produce, so a Linear after
/// Flatten gets the right input size for any input shape.
struct Stack {
    private(set) var layers: [Layer] = []
    private(set) var names: [String] = []
    private(set) var shape: [Int]
    private var dropoutKeys: UInt64

    init(input: [Int], dropoutKeyBase: UInt64 = 0) {
        shape = [1] + input
        dropoutKeys = dropoutKeyBase
    }

    mutating func add(_ layer: Layer, name: String? = nil) throws {
        shape = try layer.outputShape(for: shape)
        names.append(name ?? String(layers.count))
        layers.append(layer)
    }

    /// A dropout layer with a key distinct from every other in the model.
    mutating func dropout(_ p: Float) throws -> Dropout {
        dropoutKeys += 1
        return try Dropout(p: p, key: dropoutKeys)
    }

    /// Features per sample: what Flatten will produce.
    var flatCount: Int { shape.dropFirst().reduce(1, *) }
    var channels: Int { shape[1] }

    func sequential() -> Sequential { Sequential(layers, names: names) }
}

// MARK: - Reference models (../shared/reference/torch_models.py)

func lenet5(_ input: [Int], _ classes: Int) throws -> Layer {
    var s = Stack(input: input)
    try s.add(Conv2D(input[0], 6, kernelSize: 5, padding: 2)); try s.add(Sigmoid())
    try s.add(AvgPool2d(kernelSize: 2, stride: 2))
    try s.add(Conv2D(6, 16, kernelSize: 5)); try s.add(Sigmoid())
    try s.add(AvgPool2d(kernelSize: 2, stride: 2))
    try s.add(Flatten()); try s.add(Linear(s.flatCount, 120)); try s.add(Sigmoid())
    try s.add(Linear(120, 84)); try s.add(Sigmoid()); try s.add(Linear(84, classes))
    return s.sequential()
}

func fashionCNN(_ input: [Int], _ classes: Int) throws -> Layer {
    var s = Stack(input: input)
    try s.add(Conv2D(input[0], 25, kernelSize: 3, stride: 1, padding: 1)); try s.add(BatchNorm2d(25)); try s.add(ReLU())
    try s.add(MaxPool2d(kernelSize: 2, stride: 2))
    try s.add(Conv2D(25, 50, kernelSize: 3, stride: 1, padding: 1)); try s.add(BatchNorm2d(50)); try s.add(ReLU())
    try s.add(s.dropout(0.2)); try s.add(MaxPool2d(kernelSize: 2, stride: 2))
    try s.add(Conv2D(50, 75, kernelSize: 3, stride: 1, padding: 1)); try s.add(BatchNorm2d(75)); try s.add(ReLU())
    try s.add(MaxPool2d(kernelSize: 2, stride: 2))
    try s.add(Flatten()); try s.add(Linear(s.flatCount, 512)); try s.add(s.dropout(0.3)); try s.add(ReLU())
    try s.add(Linear(512, classes))
    return s.sequential()
}

func miniVGG(_ input: [Int], _ classes: Int) throws -> Layer {
    var s = Stack(input: input)
    // conv-act-bn order, as in seed 000's table.
    try s.add(Conv2D(input[0], 32, kernelSize: 3, padding: 1)); try s.add(ReLU()); try s.add(BatchNorm2d(32))
    try s.add(Conv2D(32, 32, kernelSize: 3, padding: 1)); try s.add(ReLU()); try s.add(BatchNorm2d(32))
    try s.add(MaxPool2d(kernelSize: 2)); try s.add(s.dropout(0.25))
    try s.add(Conv2D(32, 64, kernelSize: 3, padding: 1)); try s.add(ReLU()); try s.add(BatchNorm2d(64))
    try s.add(Conv2D(64, 64, kernelSize: 3, padding: 1)); try s.add(ReLU()); try s.add(BatchNorm2d(64))
    try s.add(MaxPool2d(kernelSize: 2)); try s.add(s.dropout(0.25))
    try s.add(Flatten()); try s.add(Linear(s.flatCount, 512)); try s.add(ReLU()); try s.add(BatchNorm1d(512))
    try s.add(s.dropout(0.5)); try s.add(Linear(512, classes))
    return s.sequential()
}

/// State_dict names of a basic residual block's parts: the reference model's
/// `Block` (c1 b1 c2 b2 sc) or torchvision's BasicBlock (conv1 bn1 conv2 bn2 downsample).
struct BlockNames {
    var conv1, bn1, conv2, bn2, shortcut: String
    static let reference = BlockNames(conv1: "c1", bn1: "b1", conv2: "c2", bn2: "b2", shortcut: "sc")
    static let torchvision = BlockNames(conv1: "conv1", bn1: "bn1", conv2: "conv2", bn2: "bn2", shortcut: "downsample")
}

/// relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)); the shortcut is a
/// strided 1x1 conv + BN when the shape changes, else the identity.
func basicBlock(_ i: Int, _ o: Int, stride: Int, names: BlockNames) throws -> Layer {
    var shortcut: (String, Layer)? = nil
    if stride != 1 || i != o {
        shortcut = (names.shortcut, Sequential([try Conv2D(i, o, kernelSize: 1, stride: stride, bias: false),
                                                try BatchNorm2d(o)]))
    }
    return try Residual(branch: [
        (names.conv1, try Conv2D(i, o, kernelSize: 3, stride: stride, padding: 1, bias: false)),
        (names.bn1, try BatchNorm2d(o)), ("relu", ReLU()),
        (names.conv2, try Conv2D(o, o, kernelSize: 3, padding: 1, bias: false)), (names.bn2, try BatchNorm2d(o)),
    ], shortcut: shortcut, activation: ReLU())
}

func resnet20(_ input: [Int], _ classes: Int) throws -> Layer {
    var s = Stack(input: input)
    try s.add(Conv2D(input[0], 16, kernelSize: 3, stride: 1, padding: 1, bias: false))
    try s.add(BatchNorm2d(16)); try s.add(ReLU())
    var channels = 16
    for (out, stride) in [(16, 1), (32, 2), (64, 2)] {
        for k in 0..<3 {
            try s.add(basicBlock(channels, out, stride: k == 0 ? stride : 1, names: .reference))
            channels = out
        }
    }
    try s.add(GlobalAvgPool2d()); try s.add(Flatten()); try s.add(Linear(64, classes))
    return s.sequential()
}

// MARK: - Classic ImageNet models

func alexNet(_ input: [Int], _ classes: Int) throws -> Layer {
    var s = Stack(input: input)
    try s.add(Conv2D(input[0], 96, kernelSize: 11, stride: 4, padding: 0)); try s.add(ReLU())
    try s.add(MaxPool2d(kernelSize: 3, stride: 2))
    try s.add(Conv2D(96, 256, kernelSize: 5, padding: 2)); try s.add(ReLU())
    try s.add(MaxPool2d(kernelSize: 3, stride: 2))
    try s.add(Conv2D(256, 384, kernelSize: 3, padding: 1)); try s.add(ReLU())
    try s.add(Conv2D(384, 384, kernelSize: 3, padding: 1)); try s.add(ReLU())
    try s.add(Conv2D(384, 256, kernelSize: 3, padding: 1)); try s.add(ReLU())
    try s.add(MaxPool2d(kernelSize: 3, stride: 2)); try s.add(Flatten())
    try s.add(Linear(s.flatCount, 4096)); try s.add(ReLU()); try s.add(s.dropout(0.5))
    try s.add(Linear(4096, 4096)); try s.add(ReLU()); try s.add(s.dropout(0.5))
    try s.add(Linear(4096, classes))
    return s.sequential()
}

/// VGG with `convs[i]` 3x3 convolutions in block i (64, 128, 256, 512, 512 channels).
/// torchvision names: features.N, classifier.N.
func vgg(_ convs: [Int], _ input: [Int], _ classes: Int) throws -> Layer {
    var f = Stack(input: input)
    var channels = input[0]
    for (block, count) in convs.enumerated() {
        let out = [64, 128, 256, 512, 512][block]
        for _ in 0..<count {
            try f.add(Conv2D(channels, out, kernelSize: 3, padding: 1)); try f.add(ReLU())
            channels = out
        }
        try f.add(MaxPool2d(kernelSize: 2, stride: 2))
    }
    var c = Stack(input: [f.flatCount])
    try c.add(Linear(f.flatCount, 4096)); try c.add(ReLU()); try c.add(c.dropout(0.5))
    try c.add(Linear(4096, 4096)); try c.add(ReLU()); try c.add(c.dropout(0.5))
    try c.add(Linear(4096, classes))
    return Sequential([f.sequential(), Flatten(), c.sequential()], names: ["features", "flatten", "classifier"])
}

func networkInNetwork(_ input: [Int], _ classes: Int) throws -> Layer {
    func ninBlock(_ i: Int, _ o: Int, _ k: Int, _ st: Int, _ p: Int) throws -> Layer {
        Sequential([try Conv2D(i, o, kernelSize: k, stride: st, padding: p), ReLU(),
                    try Conv2D(o, o, kernelSize: 1), ReLU(), try Conv2D(o, o, kernelSize: 1), ReLU()])
    }
    var s = Stack(input: input)
    try s.add(ninBlock(input[0], 96, 11, 4, 0)); try s.add(MaxPool2d(kernelSize: 3, stride: 2))
    try s.add(ninBlock(96, 256, 5, 1, 2)); try s.add(MaxPool2d(kernelSize: 3, stride: 2))
    try s.add(ninBlock(256, 384, 3, 1, 1)); try s.add(MaxPool2d(kernelSize: 3, stride: 2))
    try s.add(s.dropout(0.5)); try s.add(ninBlock(384, classes, 3, 1, 1))
    try s.add(GlobalAvgPool2d()); try s.add(Flatten())
    return s.sequential()
}

/// torchvision's BasicConv2d: conv (no bias) + BN (eps 0.001) + ReLU.
func basicConv(_ i: Int, _ o: Int, _ k: Int, stride: Int = 1, padding: Int = 0) throws -> Layer {
    Sequential([try Conv2D(i, o, kernelSize: k, stride: stride, padding: padding, bias: false),
                try BatchNorm2d(o, eps: 0.001), ReLU()], names: ["conv", "bn", "relu"])
}

/// Inception block (torchvision): 1x1 | 1x1→3x3 | 1x1→3x3 | maxpool→1x1, concatenated.
func inception(_ i: Int, _ c1: Int, _ c3r: Int, _ c3: Int, _ c5r: Int, _ c5: Int, _ pool: Int) throws -> Layer {
    try Concat(branches: [
        ("branch1", try basicConv(i, c1, 1)),
        ("branch2", Sequential([try basicConv(i, c3r, 1), try basicConv(c3r, c3, 3, padding: 1)])),
        ("branch3", Sequential([try basicConv(i, c5r, 1), try basicConv(c5r, c5, 3, padding: 1)])),
        ("branch4", Sequential([try MaxPool2d(kernelSize: 3, stride: 1, padding: 1), try basicConv(i, pool, 1)])),
    ])
}

func googLeNet(_ input: [Int], _ classes: Int) throws -> Layer {
    var s = Stack(input: input)
    // torchvision uses ceil_mode pooling; with floor mode and padding 1 the
    // shapes at 224x224 are the same (112 → 56 → 28 → 14 → 7).
    try s.add(basicConv(input[0], 64, 7, stride: 2, padding: 3), name: "conv1")
    try s.add(MaxPool2d(kernelSize: 3, stride: 2, padding: 1), name: "maxpool1")
    try s.add(basicConv(64, 64, 1), name: "conv2")
    try s.add(basicConv(64, 192, 3, padding: 1), name: "conv3")
    try s.add(MaxPool2d(kernelSize: 3, stride: 2, padding: 1), name: "maxpool2")
    try s.add(inception(192, 64, 96, 128, 16, 32, 32), name: "inception3a")
    try s.add(inception(256, 128, 128, 192, 32, 96, 64), name: "inception3b")
    try s.add(MaxPool2d(kernelSize: 3, stride: 2, padding: 1), name: "maxpool3")
    try s.add(inception(480, 192, 96, 208, 16, 48, 64), name: "inception4a")
    try s.add(inception(512, 160, 112, 224, 24, 64, 64), name: "inception4b")
    try s.add(inception(512, 128, 128, 256, 24, 64, 64), name: "inception4c")
    try s.add(inception(512, 112, 144, 288, 32, 64, 64), name: "inception4d")
    try s.add(inception(528, 256, 160, 320, 32, 128, 128), name: "inception4e")
    try s.add(MaxPool2d(kernelSize: 2, stride: 2), name: "maxpool4")
    try s.add(inception(832, 256, 160, 320, 32, 128, 128), name: "inception5a")
    try s.add(inception(832, 384, 192, 384, 48, 128, 128), name: "inception5b")
    try s.add(GlobalAvgPool2d(), name: "avgpool"); try s.add(Flatten(), name: "flatten")
    try s.add(s.dropout(0.2), name: "dropout"); try s.add(Linear(1024, classes), name: "fc")
    return s.sequential()
}

func resnet18(_ input: [Int], _ classes: Int) throws -> Layer {
    var s = Stack(input: input)
    try s.add(Conv2D(input[0], 64, kernelSize: 7, stride: 2, padding: 3, bias: false), name: "conv1")
    try s.add(BatchNorm2d(64), name: "bn1"); try s.add(ReLU(), name: "relu")
    try s.add(MaxPool2d(kernelSize: 3, stride: 2, padding: 1), name: "maxpool")
    var channels = 64
    for (index, out) in [64, 128, 256, 512].enumerated() {
        let stride = index == 0 ? 1 : 2
        let layer = Sequential([try basicBlock(channels, out, stride: stride, names: .torchvision),
                                try basicBlock(out, out, stride: 1, names: .torchvision)])
        try s.add(layer, name: "layer\(index + 1)")
        channels = out
    }
    try s.add(GlobalAvgPool2d(), name: "avgpool"); try s.add(Flatten(), name: "flatten")
    try s.add(Linear(512, classes), name: "fc")
    return s.sequential()
}

func densenet121(_ input: [Int], _ classes: Int) throws -> Layer {
    let growth = 32, bottleneck = 4
    var f = Stack(input: input)
    try f.add(Conv2D(input[0], 64, kernelSize: 7, stride: 2, padding: 3, bias: false), name: "conv0")
    try f.add(BatchNorm2d(64), name: "norm0"); try f.add(ReLU(), name: "relu0")
    try f.add(MaxPool2d(kernelSize: 3, stride: 2, padding: 1), name: "pool0")
    var channels = 64
    for (blockIndex, layerCount) in [6, 12, 24, 16].enumerated() {
        var denseLayers: [Layer] = [], names: [String] = []
        for l in 0..<layerCount {
            // x → cat(x, conv2(relu(norm2(conv1(relu(norm1(x)))))))
            let body = Sequential([
                try BatchNorm2d(channels), ReLU(), try Conv2D(channels, bottleneck * growth, kernelSize: 1, bias: false),
                try BatchNorm2d(bottleneck * growth), ReLU(),
                try Conv2D(bottleneck * growth, growth, kernelSize: 3, padding: 1, bias: false),
            ], names: ["norm1", "relu1", "conv1", "norm2", "relu2", "conv2"])
            denseLayers.append(try Concat(branches: [("input", Identity()), ("new", body)]))
            names.append("denselayer\(l + 1)")
            channels += growth
        }
        try f.add(Sequential(denseLayers, names: names), name: "denseblock\(blockIndex + 1)")
        if blockIndex != 3 {
            let transition = Sequential([
                try BatchNorm2d(channels), ReLU(), try Conv2D(channels, channels / 2, kernelSize: 1, bias: false),
                try AvgPool2d(kernelSize: 2, stride: 2),
            ], names: ["norm", "relu", "conv", "pool"])
            try f.add(transition, name: "transition\(blockIndex + 1)")
            channels /= 2
        }
    }
    try f.add(BatchNorm2d(channels), name: "norm5"); try f.add(ReLU(), name: "relu5")
    return Sequential([f.sequential(), GlobalAvgPool2d(), Flatten(), try Linear(channels, classes)],
                      names: ["features", "avgpool", "flatten", "classifier"])
}
