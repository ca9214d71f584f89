import CnnCore
import CnnLayers
import Foundation
import Yams

/// A network defined in a YAML model file (the format: configs/models/README.md).
///
///     name: resnet20
///     input: [3, 32, 32]          # default C, H, W
///     classes: 10                 # default class count
///     define:                     # optional reusable blocks with parameters
///       block:
///         params: {out: ~, stride: 1}      # ~ = required
///         layer: {type: residual, shortcut: auto, activation: relu, branch: [...]}
///     layers:
///       - {type: conv, out: 16, kernel: 3, padding: 1, bias: false}
///       - relu
///       - {type: repeat, count: 3, first: {stride: 2}, layer: {type: block, out: 32}}
///
/// Shapes are inferred layer by layer (in channels, Linear in_features); children get
/// their `name` or their index as in nn.Sequential, so parameters come out as PyTorch
/// state_dict keys. Errors name the file, the line and the field.
public struct ModelDefinition {
    /// The model's name (`name:` in the file, else the file name without extension).
    public let name: String
    /// One line describing it (`summary:`), possibly empty.
    public let summary: String
    /// C, H, W the model was designed for, if the file says.
    public let defaultInput: [Int]?
    /// Classes the model was designed for, if the file says.
    public let defaultClasses: Int?
    /// Where it was read from (for error messages).
    public let file: String
    let layers: [Node]
    let layersMark: Mark?
    let templates: [String: ModelTemplate]

    /// The layer tree for inputs of `input` (C, H, W) and `classes` outputs.
    /// Throws `CnnError.invalidData` naming the file, the line and the field.
    public func build(input: [Int], classes: Int) throws -> Layer {
        var builder = ModelBuilder(file: file, classes: classes, templates: templates)
        var shape = [1] + input
        let children = try builder.buildList(layers, path: "layers", shape: &shape, depth: 0)
        guard !children.isEmpty else {
            throw builder.error(nil, "layers", "the model has no layers")
        }
        return Sequential(children.map(\.layer), names: children.map(\.name))
    }
}

/// Reads model files.
public enum ModelFile {
    /// Largest model file accepted, in bytes.
    public static let maxBytes = 1 << 20
    /// Deepest nesting of YAML lists and mappings accepted.
    public static let maxDepth = 64
    /// Most YAML nodes visited while building (counts alias expansions, so a
    /// "billion laughs" file is refused instead of exhausting memory).
    public static let maxNodes = 500_000
    /// Most layers one model may have after repetition.
    public static let maxLayers = 100_000
    /// Largest `count` of a repeat block.
    public static let maxRepeat = 10_000
    /// Largest size, stride, padding or dilation (kernel, pool, pad options).
    public static let maxSize = 1 << 16
    /// Largest channel or feature count.
    public static let maxChannels = 1 << 24
    /// Most elements per sample a layer may output, and most parameters and buffer
    /// elements a model may hold: beyond them sizes would overflow or exhaust memory.
    public static let maxElements = 1 << 31

    /// True when `name` names a model file rather than a zoo model.
    public static func isPath(_ name: String) -> Bool {
        name.hasSuffix(".yaml") || name.hasSuffix(".yml")
    }

    /// Reads and checks the model file at `path`.
    public static func load(path: String) throws -> ModelDefinition {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else {
            throw CnnError.io(file: path, reason: "model file not found")
        }
        guard !isDirectory.boolValue else { throw CnnError.io(file: path, reason: "is a directory, not a model file") }
        let attributes = (try? FileManager.default.attributesOfItem(atPath: path)) ?? [:]
        // A FIFO or device would block or never end: only regular files are read.
        guard attributes[.type] as? FileAttributeType == .typeRegular else {
            throw CnnError.io(file: path, reason: "not a regular file")
        }
        if let size = attributes[.size] as? Int, size > maxBytes {
            throw CnnError.invalidData(file: path, reason: "model file of \(size) bytes exceeds the limit of \(maxBytes)")
        }
        guard let data = FileManager.default.contents(atPath: path) else {
            throw CnnError.io(file: path, reason: "cannot read the model file")
        }
        guard let text = String(data: data, encoding: .utf8) else {
            throw CnnError.invalidData(file: path, reason: "model file is not UTF-8 text")
        }
        let stem = ((path as NSString).lastPathComponent as NSString).deletingPathExtension
        return try parse(yaml: text, file: path, defaultName: stem)
    }

    /// Parses model-file text; `file` names it in errors.
    public static func parse(yaml text: String, file: String, defaultName: String = "model") throws -> ModelDefinition {
        guard text.utf8.count <= maxBytes else {
            throw CnnError.invalidData(file: file, reason: "model file of \(text.utf8.count) bytes exceeds the limit of \(maxBytes)")
        }
        // The YAML composer recurses once per nesting level: refuse deep nesting before it runs.
        if let (line, depth) = excessiveNesting(text, limit: maxDepth) {
            throw CnnError.invalidData(file: "\(file):\(line)",
                                       reason: "nesting deeper than \(maxDepth) levels (at least \(depth))")
        }
        let root: Node
        do {
            guard let node = try Yams.compose(yaml: text) else {
                throw CnnError.invalidData(file: file, reason: "empty model file")
            }
            root = node
        } catch let error as CnnError {
            throw error
        } catch {
            throw CnnError.invalidData(file: file, reason: "not valid YAML: \(yamlErrorSummary(error))")
        }
        var budget = maxNodes
        try checkTree(root, file: file, depth: 0, budget: &budget)
        return try definition(from: root, file: file, defaultName: defaultName)
    }

    static func definition(from root: Node, file: String, defaultName: String) throws -> ModelDefinition {
        func bad(_ node: Node?, _ field: String, _ message: String) -> CnnError {
            modelFileError(file: file, node: node, field: field, message: message)
        }
        guard let top = root.mapping else { throw bad(root, "(top level)", "must be a mapping with a 'layers' list") }
        let allowed = ["name", "summary", "input", "classes", "define", "layers"]
        for (key, _) in top {
            guard let k = key.string, allowed.contains(k) else {
                throw bad(key, key.string ?? "(key)", "unknown field; allowed: \(allowed.joined(separator: ", "))")
            }
        }
        var name = defaultName
        if let n = top["name"] {
            guard let s = n.scalar?.string, !s.isEmpty, s.count <= 200 else { throw bad(n, "name", "must be a non-empty string") }
            name = s
        }
        var summary = ""
        if let s = top["summary"] {
            guard let text = s.scalar?.string else { throw bad(s, "summary", "must be a string") }
            summary = text
        }
        var input: [Int]? = nil
        if let i = top["input"] {
            input = try parseInputShape(i, file: file)
        }
        var classes: Int? = nil
        if let c = top["classes"] {
            guard let v = c.int, v >= 2 else { throw bad(c, "classes", "must be an integer >= 2") }
            classes = v
        }
        var templates: [String: ModelTemplate] = [:]
        if let d = top["define"] {
            guard let m = d.mapping else { throw bad(d, "define", "must be a mapping of block names to definitions") }
            for (key, value) in m {
                guard let blockName = key.string, !blockName.isEmpty else { throw bad(key, "define", "block names must be strings") }
                guard !ModelBuilder.builtinTypes.contains(blockName) else {
                    throw bad(key, "define.\(blockName)", "'\(blockName)' is a built-in layer type; choose another name")
                }
                templates[blockName] = try ModelTemplate(name: blockName, node: value, file: file)
            }
        }
        guard let layersNode = top["layers"] else { throw bad(root, "layers", "missing; a model file needs a 'layers' list") }
        guard let layers = layersNode.sequence else { throw bad(layersNode, "layers", "must be a list of layers") }
        return ModelDefinition(name: name, summary: summary, defaultInput: input, defaultClasses: classes, file: file,
                               layers: Array(layers), layersMark: layersNode.mark, templates: templates)
    }

    static func parseInputShape(_ node: Node, file: String) throws -> [Int] {
        var values: [Int]? = nil
        if let seq = node.sequence {
            let ints = seq.compactMap(\.int)
            if ints.count == seq.count { values = ints }
        } else if let s = node.scalar?.string {
            let parts = s.split(separator: "x").map { Int($0.trimmingCharacters(in: .whitespaces)) }
            if parts.allSatisfy({ $0 != nil }) { values = parts.map { $0! } }
        }
        guard let v = values, v.count == 3, v.allSatisfy({ $0 > 0 && $0 <= 1 << 16 }) else {
            throw modelFileError(file: file, node: node, field: "input",
                                 message: "must be C x H x W: [C, H, W] or \"CxHxW\" with positive sizes")
        }
        return v
    }

    /// Depth and size of the composed tree, before anything walks it recursively for real.
    static func checkTree(_ node: Node, file: String, depth: Int, budget: inout Int) throws {
        budget -= 1
        guard budget >= 0 else {
            throw modelFileError(file: file, node: node, field: "(document)",
                                 message: "more than \(maxNodes) YAML nodes (aliases count each time they are used)")
        }
        guard depth <= maxDepth else {
            throw modelFileError(file: file, node: node, field: "(document)", message: "nesting deeper than \(maxDepth) levels")
        }
        switch node {
        case .scalar: break
        case .sequence(let s): for child in s { try checkTree(child, file: file, depth: depth + 1, budget: &budget) }
        case .mapping(let m):
            for (k, v) in m {
                try checkTree(k, file: file, depth: depth + 1, budget: &budget)
                try checkTree(v, file: file, depth: depth + 1, budget: &budget)
            }
        }
    }

    /// A conservative pre-scan: (line, depth) of the first place where flow brackets or
    /// block indicators ("- ", "? ", indentation) nest beyond `limit` (indentation is
    /// allowed 8 columns per level), else nil. Quotes and comments are skipped.
    static func excessiveNesting(_ text: String, limit: Int) -> (Int, Int)? {
        var flow = 0, line = 1, column = 0, leading = true, leadingIndicators = 0
        var quote: UInt8? = nil, comment = false, previous: UInt8 = 10
        for byte in text.utf8 {
            if byte == 10 {
                line += 1; column = 0; leading = true; leadingIndicators = 0; comment = false
                if quote == UInt8(ascii: "'") { quote = nil }   // single-quoted scalars rarely span lines; stay conservative
                previous = byte
                continue
            }
            column += 1
            if comment { previous = byte; continue }
            if let q = quote {
                if byte == q { quote = nil }
                previous = byte
                continue
            }
            switch byte {
            case UInt8(ascii: "\""), UInt8(ascii: "'"):
                if previous == 32 || previous == 10 || previous == 9 || leading || previous == UInt8(ascii: "[")
                    || previous == UInt8(ascii: "{") || previous == UInt8(ascii: ",") || previous == UInt8(ascii: ":") {
                    quote = byte
                }
                leading = false
            case UInt8(ascii: "#") where previous == 32 || previous == 9 || leading:
                comment = true
            case UInt8(ascii: "["), UInt8(ascii: "{"):
                flow += 1
                leading = false
                if flow > limit { return (line, flow) }
            case UInt8(ascii: "]"), UInt8(ascii: "}"):
                flow = max(0, flow - 1)
                leading = false
            case 32, 9:
                break
            case UInt8(ascii: "-"), UInt8(ascii: "?"), UInt8(ascii: ":"):
                if leading { leadingIndicators += 1 }
            default:
                if leading {
                    leading = false
                    if leadingIndicators > limit || column > 8 * limit { return (line, max(leadingIndicators, column / 8)) }
                }
            }
            previous = byte
        }
        return nil
    }
}

/// A block declared under `define:`: parameters with defaults (nil = required) and the
/// layer(s) it stands for, with "$param" placeholders.
struct ModelTemplate {
    let name: String
    let params: [(name: String, defaultValue: Node?)]
    /// `layer:` (one layer, which the instance's name renames) or `layers:` (inserted in place).
    let body: Node
    let isList: Bool
    let mark: Mark?

    init(name: String, node: Node, file: String) throws {
        func bad(_ n: Node?, _ field: String, _ message: String) -> CnnError {
            modelFileError(file: file, node: n, field: "define.\(name)\(field.isEmpty ? "" : "." + field)", message: message)
        }
        guard let m = node.mapping else { throw bad(node, "", "must be a mapping with 'params' and 'layer' or 'layers'") }
        for (key, _) in m where !["params", "layer", "layers"].contains(key.string ?? "") {
            throw bad(key, key.string ?? "", "unknown field; allowed: params, layer, layers")
        }
        var params: [(String, Node?)] = []
        if let p = m["params"] {
            guard let pm = p.mapping else { throw bad(p, "params", "must be a mapping of parameter names to defaults (~ = required)") }
            for (k, v) in pm {
                guard let pname = k.string, pname.range(of: "^[A-Za-z_][A-Za-z0-9_]*$", options: .regularExpression) != nil else {
                    throw bad(k, "params", "parameter names must be identifiers")
                }
                guard !["type", "name", "i", "i0"].contains(pname) else {
                    throw bad(k, "params.\(pname)", "'\(pname)' is reserved")
                }
                params.append((pname, v.null != nil ? nil : v))
            }
        }
        switch (m["layer"], m["layers"]) {
        case let (l?, nil): body = l; isList = false
        case let (nil, l?):
            guard l.sequence != nil else { throw bad(l, "layers", "must be a list of layers") }
            body = l; isList = true
        default: throw bad(node, "", "needs exactly one of 'layer' (one layer) or 'layers' (a list)")
        }
        self.name = name
        self.params = params.map { (name: $0.0, defaultValue: $0.1) }
        self.mark = node.mark
    }
}

/// Builds layers from the YAML nodes, tracking the shape (batch 1) as it goes.
struct ModelBuilder {
    let file: String
    let classes: Int
    let templates: [String: ModelTemplate]
    private var dropoutKeys: UInt64 = 0
    private var layerCount = 0
    private var elementCount = 0
    private var nodeBudget = ModelFile.maxNodes

    init(file: String, classes: Int, templates: [String: ModelTemplate]) {
        self.file = file
        self.classes = classes
        self.templates = templates
    }

    static let activationTypes = ["relu", "leaky_relu", "elu", "sigmoid", "tanh", "softmax"]
    static let builtinTypes: Set<String> = Set(activationTypes + [
        "conv", "conv2d", "linear", "batchnorm", "batchnorm1d", "batchnorm2d", "maxpool", "avgpool",
        "global_avgpool", "global_maxpool", "adaptive_avgpool", "flatten", "dropout", "identity", "lrn", "pad",
        "sequential", "residual", "concat", "repeat", "aux",
    ])

    func error(_ node: Node?, _ field: String, _ message: String) -> CnnError {
        modelFileError(file: file, node: node, field: field, message: message)
    }

    /// Refuses outputs and parameter totals beyond `ModelFile.maxElements`, counting with
    /// overflow checks (a hostile file could otherwise make the sizes wrap or exhaust memory).
    mutating func checkSizes(_ layer: Layer, spec: LayerSpec, output: [Int]) throws {
        func product(_ dims: [Int]) -> Int? {
            var p = 1
            for d in dims {
                let (q, o) = p.multipliedReportingOverflow(by: d)
                if o || q > ModelFile.maxElements { return nil }
                p = q
            }
            return p
        }
        guard product(Array(output.dropFirst())) != nil else {
            throw error(spec.node, spec.path, "output \(formatShape(Array(output.dropFirst()))) exceeds \(ModelFile.maxElements) elements per sample")
        }
        // Leaves only: a composite's children were counted when they were built.
        guard layer.children.isEmpty else { return }
        for t in layer.parameterSpecs + layer.bufferSpecs {
            guard let n = product(t.shape), case let (sum, o) = elementCount.addingReportingOverflow(n), !o,
                  sum <= ModelFile.maxElements else {
                throw error(spec.node, spec.path, "the model exceeds \(ModelFile.maxElements) parameter and buffer elements")
            }
            elementCount = sum
        }
    }

    /// Whether `e` already names a place in this file (thrown by a nested layer).
    func isLocated(_ e: CnnError) -> Bool {
        switch e {
        case .invalidData(let f, _): return f.hasPrefix(file)
        case .shapeMismatch(let layer, _, _): return layer.hasPrefix(file)
        default: return false
        }
    }

    // MARK: Lists, repetition, templates

    /// The named children a list of layer specs produces (repeats and list templates expand in
    /// place; an `activation:` option adds a sibling). Unnamed children get their index.
    mutating func buildList(_ nodes: [Node], path: String, shape: inout [Int], depth: Int) throws -> [(name: String, layer: Layer)] {
        var out: [(name: String, layer: Layer)] = []
        var seen: [String: Node] = [:]
        for (index, node) in nodes.enumerated() {
            let itemPath = "\(path)[\(index)]"
            for (name, layer, nameNode) in try buildItem(node, path: itemPath, shape: &shape, depth: depth) {
                let finalName = name ?? String(out.count)
                if seen[finalName] != nil {
                    throw error(nameNode ?? node, "\(itemPath).name", "duplicate child name '\(finalName)' in this list (state_dict keys would collide)")
                }
                seen[finalName] = nameNode ?? node
                out.append((finalName, layer))
            }
        }
        return out
    }

    /// One spec of a list: zero or more (explicit name, layer, name node).
    mutating func buildItem(_ node: Node, path: String, shape: inout [Int], depth: Int) throws -> [(String?, Layer, Node?)] {
        guard depth <= ModelFile.maxDepth else {
            throw error(node, path, "blocks nest deeper than \(ModelFile.maxDepth) levels (a block that uses itself?)")
        }
        nodeBudget -= 1
        guard nodeBudget >= 0 else { throw error(node, path, "the model expands to more than \(ModelFile.maxNodes) specs") }
        let spec = try LayerSpec(node, path: path, builder: self)
        if spec.type == "repeat" { return try buildRepeat(spec, shape: &shape, depth: depth) }
        if let template = templates[spec.type] {
            let expanded = try instantiate(template, spec)
            if template.isList {
                if let n = spec.nameNode { throw error(n, "\(path).name", "block '\(spec.type)' inserts a list of layers and takes no name") }
                var items: [(String?, Layer, Node?)] = []
                for (i, child) in (expanded.sequence.map(Array.init) ?? []).enumerated() {
                    items += try buildItem(child, path: "\(path)(\(spec.type))[\(i)]", shape: &shape, depth: depth + 1)
                }
                return items
            }
            var items = try buildItem(expanded, path: "\(path)(\(spec.type))", shape: &shape, depth: depth + 1)
            if let name = spec.name, !items.isEmpty { items[0].0 = name; items[0].2 = spec.nameNode }
            return items
        }
        if spec.type != "residual" && spec.has("activation") { spec.used.insert("activation") }
        let layer = try buildLayer(spec, shape: &shape, depth: depth)
        var items: [(String?, Layer, Node?)] = [(spec.name, layer, spec.nameNode)]
        if let activationNode = spec.fields["activation"], spec.type != "residual" {
            let act = try LayerSpec(activationNode, path: "\(path).activation", builder: self)
            guard Self.activationTypes.contains(act.type) else {
                throw error(activationNode, "\(path).activation", "must be one of \(Self.activationTypes.joined(separator: ", "))")
            }
            items.append((act.name, try buildLayer(act, shape: &shape, depth: depth + 1), act.nameNode))
        }
        return items
    }

    mutating func buildRepeat(_ spec: LayerSpec, shape: inout [Int], depth: Int) throws -> [(String?, Layer, Node?)] {
        let count = try spec.int("count", min: 0, max: ModelFile.maxRepeat)
        if let n = spec.nameNode { throw error(n, "\(spec.path).name", "repeat inserts its layers in place and takes no name") }
        let single = spec.fields["layer"], list = spec.fields["layers"]
        spec.used.formUnion(["layer", "layers", "first"])
        guard (single == nil) != (list == nil) else {
            throw error(spec.node, spec.path, "repeat needs exactly one of 'layer' (one layer) or 'layers' (a list)")
        }
        let first = spec.fields["first"]
        if let first {
            guard first.mapping != nil, single?.mapping != nil else {
                throw error(first, "\(spec.path).first", "must be a mapping of fields that override 'layer' (a mapping) in the first repetition")
            }
        }
        try spec.checkAllUsed()
        var items: [(String?, Layer, Node?)] = []
        for i in 0..<count {
            let vars = ["i": Node(String(i + 1)), "i0": Node(String(i))]
            if let single {
                var body = try substitute(single, vars)
                if i == 0, let first, let m = body.mapping, let overrides = try substitute(first, vars).mapping {
                    let replaced = Set(overrides.compactMap { $0.key.string })
                    let pairs = m.filter { !replaced.contains($0.key.string ?? "") }.map { ($0.key, $0.value) }
                        + overrides.map { ($0.key, $0.value) }
                    body = .mapping(Node.Mapping(pairs, m.tag, m.style, m.mark))
                }
                items += try buildItem(body, path: "\(spec.path).layer#\(i + 1)", shape: &shape, depth: depth + 1)
            } else if let list = list?.sequence {
                for (j, child) in list.enumerated() {
                    items += try buildItem(try substitute(child, vars), path: "\(spec.path).layers#\(i + 1)[\(j)]",
                                           shape: &shape, depth: depth + 1)
                }
            }
        }
        return items
    }

    /// The template's body with its parameters replaced by the instance's arguments.
    func instantiate(_ template: ModelTemplate, _ spec: LayerSpec) throws -> Node {
        var vars: [String: Node] = [:]
        for (key, value) in spec.fields where key != "type" && key != "name" {
            guard template.params.contains(where: { $0.name == key }) else {
                throw error(spec.keyNodes[key] ?? spec.node, "\(spec.path).\(key)",
                            "block '\(template.name)' has no parameter '\(key)'; its parameters: "
                                + (template.params.isEmpty ? "none" : template.params.map(\.name).joined(separator: ", ")))
            }
            vars[key] = value
        }
        for p in template.params where vars[p.name] == nil {
            guard let d = p.defaultValue else {
                throw error(spec.node, "\(spec.path).\(p.name)", "block '\(template.name)' needs parameter '\(p.name)'")
            }
            vars[p.name] = d
        }
        return try substitute(template.body, vars)
    }

    /// Replaces "$name" in scalars: a scalar that is exactly "$name" becomes the argument's
    /// node; inside a longer string the argument's text is spliced in.
    func substitute(_ node: Node, _ vars: [String: Node]) throws -> Node {
        switch node {
        case .scalar(let s):
            guard s.string.contains("$") else { return node }
            if s.string.hasPrefix("$"), let whole = vars[String(s.string.dropFirst())] { return whole }
            var text = s.string
            for name in vars.keys.sorted(by: { $0.count > $1.count }) {
                guard text.contains("$" + name), let v = vars[name]?.scalar?.string else { continue }
                text = text.replacingOccurrences(of: "$" + name, with: v)
            }
            return .scalar(Node.Scalar(text, .implicit, s.style, s.mark))
        case .sequence(var seq):
            for i in seq.indices { seq[i] = try substitute(seq[i], vars) }
            return .sequence(seq)
        case .mapping(let m):
            var pairs: [(Node, Node)] = []
            for (k, v) in m { pairs.append((k, try substitute(v, vars))) }
            return .mapping(Node.Mapping(pairs, m.tag, m.style, m.mark))
        }
    }

    // MARK: Layers

    mutating func buildLayer(_ spec: LayerSpec, shape: inout [Int], depth: Int) throws -> Layer {
        layerCount += 1
        guard layerCount <= ModelFile.maxLayers else {
            throw error(spec.node, spec.path, "the model has more than \(ModelFile.maxLayers) layers")
        }
        let layer: Layer
        do {
            layer = try makeLayer(spec, shape: shape, depth: depth)
            try spec.checkAllUsed()
        } catch let e as CnnError {
            if isLocated(e) { throw e }
            throw error(spec.node, spec.path, "\(spec.type) on input \(formatShape(Array(shape.dropFirst()))): \(e)")
        }
        do {
            shape = try layer.outputShape(for: shape)
        } catch let e as CnnError {
            // The input does not fit this layer: a shape error (Model reports it against the
            // input it was asked for), still naming the file, the line and the layer.
            let line = spec.node.mark.map { ":\($0.line)" } ?? ""
            throw CnnError.shapeMismatch(layer: "\(file)\(line): \(spec.path) (\(spec.type))",
                                         expected: "a shape it accepts (\(e))", got: formatShape(Array(shape.dropFirst())))
        }
        try checkSizes(layer, spec: spec, output: shape)
        return layer
    }

    private mutating func makeLayer(_ spec: LayerSpec, shape: [Int], depth: Int) throws -> Layer {
        let channels = shape.count >= 2 ? shape[1] : 0
        switch spec.type {
        case "conv", "conv2d":
            guard shape.count == 4 else { throw spec.bad("type", "a 2-D convolution needs (C, H, W) input, got \(formatShape(Array(shape.dropFirst())))") }
            let out = try spec.channels("out", input: channels, classes: classes)
            let kernel = try spec.pair("kernel")
            let stride = try spec.pair("stride", default: (1, 1))
            let dilation = try spec.pair("dilation", default: (1, 1))
            return try Conv2D(inChannels: channels, outChannels: out, kernelSize: kernel, stride: stride,
                              padding: try spec.convPadding(), dilation: dilation,
                              groups: try spec.int("groups", default: 1, min: 1),
                              bias: try spec.bool("bias", default: true), paddingMode: try spec.paddingMode("padding_mode"),
                              flipKernel: try spec.bool("flip", default: false))
        case "linear":
            let features = shape.dropFirst().reduce(1, *)
            return try Linear(features, try spec.channels("out", input: features, classes: classes),
                              bias: try spec.bool("bias", default: true))
        case "batchnorm", "batchnorm1d", "batchnorm2d":
            let eps = try spec.float("eps", default: 1e-5), momentum = try spec.float("momentum", default: 0.1)
            let affine = try spec.bool("affine", default: true)
            let twoD = spec.type == "batchnorm2d" || (spec.type == "batchnorm" && shape.count == 4)
            return twoD ? try BatchNorm2d(channels, eps: eps, momentum: momentum, affine: affine)
                        : try BatchNorm1d(channels, eps: eps, momentum: momentum, affine: affine)
        case "relu": return ReLU()
        case "leaky_relu": return LeakyReLU(negativeSlope: try spec.float("slope", default: 0.01))
        case "elu": return ELU(alpha: try spec.float("alpha", default: 1))
        case "sigmoid": return Sigmoid()
        case "tanh": return Tanh()
        case "softmax": return Softmax()
        case "identity": return Identity()
        case "flatten": return Flatten()
        case "global_avgpool": return GlobalAvgPool2d()
        case "global_maxpool": return GlobalMaxPool2d()
        case "adaptive_avgpool":
            let (h, w) = try spec.pair("size")
            return try AdaptiveAvgPool2d(outputHeight: h, outputWidth: w)
        case "maxpool", "avgpool":
            let kernel = try spec.pair("kernel")
            let stride = spec.has("stride") ? try spec.pair("stride") : kernel
            let padding = try spec.pair("padding", default: (0, 0), min: 0)
            return spec.type == "maxpool" ? try MaxPool2d(kernelSize: kernel, stride: stride, padding: padding)
                                          : try AvgPool2d(kernelSize: kernel, stride: stride, padding: padding)
        case "dropout":
            let p = try spec.float("p", default: 0.5)
            let key: UInt64
            if spec.has("key") { key = UInt64(try spec.int("key", min: 0)) } else { dropoutKeys += 1; key = dropoutKeys }
            return try Dropout(p: p, key: key)
        case "lrn":
            return try LocalResponseNorm(size: try spec.int("size", min: 1), alpha: try spec.float("alpha", default: 1e-4),
                                         beta: try spec.float("beta", default: 0.75), k: try spec.float("k", default: 1))
        case "pad":
            let (t, b, l, r) = try spec.sides("padding")
            return try Pad2d(top: t, bottom: b, left: l, right: r, mode: try spec.paddingMode("mode"),
                             value: try spec.float("value", default: 0))
        case "sequential":
            var s = shape
            let children = try buildList(try spec.list("layers"), path: "\(spec.path).layers", shape: &s, depth: depth + 1)
            guard !children.isEmpty else { throw spec.bad("layers", "a sequential block needs at least one layer") }
            return Sequential(children.map(\.layer), names: children.map(\.name))
        case "aux":
            var s = shape
            let children = try buildList(try spec.list("layers"), path: "\(spec.path).layers", shape: &s, depth: depth + 1)
            guard !children.isEmpty else { throw spec.bad("layers", "an auxiliary head needs at least one layer") }
            guard s == [shape[0], classes] else {
                throw spec.bad("layers", "an auxiliary head must end with 'classes' outputs (\(classes)), got \(formatShape(Array(s.dropFirst())))")
            }
            let weight = try spec.float("weight", default: 0.3)
            guard weight >= 0 else { throw spec.bad("weight", "must be >= 0") }
            return try AuxiliaryHead(head: Sequential(children.map(\.layer), names: children.map(\.name)), weight: weight)
        case "concat" where spec.has("layers"):
            // y = cat(x, layers(x)) with the layers named as this block's own children.
            guard !spec.has("branches") else { throw spec.bad("layers", "give either 'branches' or 'layers', not both") }
            var s = shape
            let children = try buildList(try spec.list("layers"), path: "\(spec.path).layers", shape: &s, depth: depth + 1)
            guard !children.isEmpty else { throw spec.bad("layers", "needs at least one layer") }
            let names = Set(children.map(\.name))
            let input = "input"
            guard !names.contains(input) else { throw spec.bad("layers", "'\(input)' names the kept input; rename that layer") }
            let block = Concat(branches: [(input, Identity()), ("layers", Sequential(children.map(\.layer), names: children.map(\.name)))],
                               inlined: ["layers"])
            _ = try block.outputShape(for: shape)
            return block
        case "concat":
            let branchNodes = try spec.list("branches")
            guard !branchNodes.isEmpty else { throw spec.bad("branches", "needs at least one branch") }
            var branches: [(String, Layer)] = []
            for (i, b) in branchNodes.enumerated() {
                let (name, layer) = try buildBranch(b, path: "\(spec.path).branches[\(i)]", shape: shape, depth: depth + 1)
                let finalName = name ?? String(i)
                guard !branches.contains(where: { $0.0 == finalName }) else {
                    throw error(b, "\(spec.path).branches[\(i)].name", "duplicate branch name '\(finalName)'")
                }
                branches.append((finalName, layer))
            }
            return Concat(branches: branches)
        case "residual":
            var s = shape
            let branch = try buildList(try spec.list("branch"), path: "\(spec.path).branch", shape: &s, depth: depth + 1)
            guard !branch.isEmpty else { throw spec.bad("branch", "a residual block needs at least one layer in its branch") }
            let shortcutName = try spec.string("shortcut_name", default: "shortcut")
            var shortcut: (String, Layer)? = nil
            if let sc = spec.fields["shortcut"] {
                spec.used.insert("shortcut")
                let mode = sc.scalar?.string
                switch mode {
                case "identity": break
                case "projection", "auto":
                    if mode == "projection" || s != shape {
                        shortcut = (shortcutName, try projection(from: shape, to: s, spec: spec))
                    }
                default:
                    let (name, layer) = try buildBranch(sc, path: "\(spec.path).shortcut", shape: shape, depth: depth + 1)
                    shortcut = (name ?? shortcutName, layer)
                }
            }
            var activation: Layer? = nil
            if let a = spec.fields["activation"] {
                spec.used.insert("activation")
                let act = try LayerSpec(a, path: "\(spec.path).activation", builder: self)
                guard Self.activationTypes.contains(act.type) else {
                    throw error(a, "\(spec.path).activation", "must be one of \(Self.activationTypes.joined(separator: ", "))")
                }
                var t = s
                activation = try buildLayer(act, shape: &t, depth: depth + 1)
            }
            let block = Residual(branch: branch, shortcut: shortcut, activation: activation)
            _ = try block.outputShape(for: shape)
            return block
        default:
            if spec.type == "repeat" || templates[spec.type] != nil {
                throw spec.bad("type", "'\(spec.type)' cannot stand alone here")
            }
            throw spec.bad("type", "unknown layer type '\(spec.type)'; known: \(Self.builtinTypes.sorted().joined(separator: ", "))"
                + (templates.isEmpty ? "" : "; defined: \(templates.keys.sorted().joined(separator: ", "))"))
        }
    }

    /// A concat branch or residual shortcut: one spec, or a list (a Sequential).
    private mutating func buildBranch(_ node: Node, path: String, shape: [Int], depth: Int) throws -> (String?, Layer) {
        var s = shape
        if let list = node.sequence {
            let children = try buildList(Array(list), path: path, shape: &s, depth: depth + 1)
            guard !children.isEmpty else { throw error(node, path, "an empty list") }
            return (nil, Sequential(children.map(\.layer), names: children.map(\.name)))
        }
        let items = try buildItem(node, path: path, shape: &s, depth: depth + 1)
        guard let first = items.first else { throw error(node, path, "gives no layer") }
        if items.count == 1 { return (first.0, first.1) }
        // A layer with `activation:` (or a block of several): a Sequential under the first one's name.
        return (first.0, Sequential(items.map(\.1)))
    }

    /// 1x1 convolution (no bias) + BatchNorm mapping `input` to `output`'s channels and size.
    private mutating func projection(from input: [Int], to output: [Int], spec: LayerSpec) throws -> Layer {
        guard input.count == 4, output.count == 4, output[2] > 0, output[3] > 0,
              input[2] % output[2] == 0 || input[2] / output[2] >= 1 else {
            throw spec.bad("shortcut", "a projection shortcut needs (C, H, W) input and output")
        }
        let sh = (input[2] + output[2] - 1) / output[2], sw = (input[3] + output[3] - 1) / output[3]
        let conv = try Conv2D(inChannels: input[1], outChannels: output[1], kernelSize: (1, 1), stride: (sh, sw),
                              padding: .explicit(top: 0, bottom: 0, left: 0, right: 0), bias: false)
        let bn = try BatchNorm2d(output[1])
        layerCount += 2
        let block = Sequential([conv, bn])
        let out = try block.outputShape(for: input)
        guard out == output else {
            throw spec.bad("shortcut", "no 1x1 projection maps \(formatShape(Array(input.dropFirst()))) to the branch output \(formatShape(Array(output.dropFirst())))")
        }
        return block
    }
}

/// One layer spec: a bare type name ("relu") or a mapping with `type`, `name` and options.
/// Reads options with typed errors and remembers which it read, so unknown options are refused.
final class LayerSpec {
    let node: Node
    let path: String
    let type: String
    let name: String?
    let nameNode: Node?
    let fields: [String: Node]
    let keyNodes: [String: Node]
    var used: Set<String> = ["type", "name"]
    let file: String

    init(_ node: Node, path: String, builder: ModelBuilder) throws {
        self.node = node
        self.path = path
        self.file = builder.file
        if let s = node.scalar?.string {
            type = s; name = nil; nameNode = nil; fields = [:]; keyNodes = [:]
            return
        }
        guard let m = node.mapping else {
            throw builder.error(node, path, "a layer must be a type name or a mapping with 'type'")
        }
        var f: [String: Node] = [:], keys: [String: Node] = [:]
        for (k, v) in m {
            guard let key = k.string else { throw builder.error(k, path, "field names must be strings") }
            guard f[key] == nil else { throw builder.error(k, "\(path).\(key)", "given twice") }
            f[key] = v; keys[key] = k
        }
        guard let t = f["type"]?.scalar?.string else {
            throw builder.error(node, "\(path).type", "missing; every layer needs a 'type'")
        }
        type = t
        if let n = f["name"] {
            guard let s = n.scalar?.string, !s.isEmpty, !s.contains("."), s.count <= 200 else {
                throw builder.error(n, "\(path).name", "must be a non-empty string without '.'")
            }
            name = s; nameNode = n
        } else {
            name = nil; nameNode = nil
        }
        fields = f
        keyNodes = keys
    }

    func bad(_ field: String, _ message: String) -> CnnError {
        modelFileError(file: file, node: fields[field] ?? node, field: "\(path).\(field)", message: message)
    }

    func has(_ field: String) -> Bool { fields[field] != nil }

    func checkAllUsed() throws {
        for key in fields.keys.sorted() where !used.contains(key) {
            throw modelFileError(file: file, node: keyNodes[key], field: "\(path).\(key)",
                                 message: "unknown option for a \(type) layer")
        }
    }

    private func value(_ field: String) -> Node? {
        used.insert(field)
        return fields[field]
    }

    func int(_ field: String, default d: Int? = nil, min: Int = Int.min, max: Int = ModelFile.maxChannels) throws -> Int {
        guard let n = value(field) else {
            guard let d else { throw bad(field, "missing; a \(type) layer needs '\(field)'") }
            return d
        }
        guard let v = n.int else { throw bad(field, "must be an integer, got '\(n.scalar?.string ?? "a collection")'") }
        guard v >= min, v <= max else { throw bad(field, "\(v) is out of range \(min == Int.min ? "" : "\(min)")...\(max == Int.max ? "" : "\(max)")") }
        return v
    }

    /// An output size: an integer, "classes", "in", or "in/N", "in*N", "classes*N"-style arithmetic.
    func channels(_ field: String, input: Int, classes: Int) throws -> Int {
        guard let n = value(field) else { throw bad(field, "missing; a \(type) layer needs '\(field)'") }
        if let v = n.int {
            guard v > 0, v <= ModelFile.maxChannels else { throw bad(field, "must lie in 1...\(ModelFile.maxChannels)") }
            return v
        }
        guard let text = n.scalar?.string else { throw bad(field, "must be an integer, 'classes' or 'in'") }
        let parts = text.split(separator: " ", omittingEmptySubsequences: true).joined()
        func base(_ s: Substring) -> Int? { s == "in" ? input : s == "classes" ? classes : Int(s) }
        var result: Int? = base(Substring(parts))
        for op in ["*", "/", "+", "-"] where result == nil {
            let pieces = parts.split(separator: Character(op), maxSplits: 1)
            if pieces.count == 2, let a = base(pieces[0]), let b = Int(pieces[1]) {
                switch op {
                case "*": let (p, o) = a.multipliedReportingOverflow(by: b); result = o ? nil : p
                case "/": result = b != 0 && a % b == 0 ? a / b : nil
                case "+": let (p, o) = a.addingReportingOverflow(b); result = o ? nil : p
                default: let (p, o) = a.subtractingReportingOverflow(b); result = o ? nil : p
                }
            }
        }
        guard let v = result, v > 0, v <= ModelFile.maxChannels else {
            throw bad(field, "'\(text)' is not an integer in 1...\(ModelFile.maxChannels), 'classes', 'in', or 'in/N'-style (exact) arithmetic")
        }
        return v
    }

    func float(_ field: String, default d: Float) throws -> Float {
        guard let n = value(field) else { return d }
        guard let v = n.float, v.isFinite else { throw bad(field, "must be a number") }
        return Float(v)
    }

    func bool(_ field: String, default d: Bool) throws -> Bool {
        guard let n = value(field) else { return d }
        guard let v = n.bool else { throw bad(field, "must be true or false") }
        return v
    }

    func string(_ field: String, default d: String) throws -> String {
        guard let n = value(field) else { return d }
        guard let s = n.scalar?.string, !s.isEmpty, !s.contains(".") else { throw bad(field, "must be a name without '.'") }
        return s
    }

    func list(_ field: String) throws -> [Node] {
        guard let n = value(field) else { throw bad(field, "missing; a \(type) block needs '\(field)'") }
        guard let s = n.sequence else { throw bad(field, "must be a list") }
        return Array(s)
    }

    /// An integer or [height, width].
    func pair(_ field: String, default d: (Int, Int)? = nil, min: Int = 1) throws -> (Int, Int) {
        guard let n = value(field) else {
            guard let d else { throw bad(field, "missing; a \(type) layer needs '\(field)'") }
            return d
        }
        let limit = ModelFile.maxSize
        if let v = n.int {
            guard v >= min, v <= limit else { throw bad(field, "must lie in \(min)...\(limit)") }
            return (v, v)
        }
        if let s = n.sequence, s.count == 2, let h = s[0].int, let w = s[1].int {
            guard h >= min, w >= min, h <= limit, w <= limit else { throw bad(field, "must lie in \(min)...\(limit)") }
            return (h, w)
        }
        throw bad(field, "must be an integer or [height, width]")
    }

    /// An integer, [vertical, horizontal] or [top, bottom, left, right], all ≥ 0.
    func sides(_ field: String) throws -> (Int, Int, Int, Int) {
        guard let n = value(field) else { throw bad(field, "missing; a \(type) layer needs '\(field)'") }
        let values: [Int]?
        if let v = n.int { values = [v, v, v, v] }
        else if let s = n.sequence, s.allSatisfy({ $0.int != nil }) {
            let v = s.map { $0.int! }
            values = v.count == 2 ? [v[0], v[0], v[1], v[1]] : v.count == 4 ? v : nil
        } else { values = nil }
        guard let v = values, v.allSatisfy({ $0 >= 0 && $0 <= ModelFile.maxSize }) else {
            throw bad(field, "must be an integer in 0...\(ModelFile.maxSize), [vertical, horizontal] or [top, bottom, left, right]")
        }
        return (v[0], v[1], v[2], v[3])
    }

    func convPadding() throws -> ConvPadding {
        guard let n = fields["padding"] else { used.insert("padding"); return .explicit(top: 0, bottom: 0, left: 0, right: 0) }
        if let s = n.scalar?.string, s == "same" || s == "valid" {
            used.insert("padding")
            return s == "same" ? .same : .valid
        }
        let (t, b, l, r) = try sides("padding")
        return .explicit(top: t, bottom: b, left: l, right: r)
    }

    func paddingMode(_ field: String) throws -> PaddingMode {
        guard let n = value(field) else { return .zeros }
        let text = n.scalar?.string ?? ""
        if text == "constant" { return .zeros }
        guard let mode = PaddingMode(rawValue: text) else {
            throw bad(field, "must be one of zeros (constant), reflect, replicate, circular")
        }
        return mode
    }
}

/// A model-file error: "file:line: field: message".
func modelFileError(file: String, node: Node?, field: String, message: String) -> CnnError {
    let location = node?.mark.map { "\(file):\($0.line)" } ?? file
    return .invalidData(file: location, reason: "\(field): \(message)")
}

/// The first line of a Yams error with its position, without the echoed document.
func yamlErrorSummary(_ error: Error) -> String {
    if let y = error as? YamlError {
        switch y {
        case let .scanner(context, problem, mark, _), let .parser(context, problem, mark, _), let .composer(context, problem, mark, _):
            return "line \(mark.line): \(context.map { "\($0.text) " } ?? "")\(problem)"
        default: break
        }
    }
    return String(String(describing: error).prefix(300))
}
