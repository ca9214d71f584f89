// What a network computes, as pictures: learned filters, feature maps, input-gradient
// saliency and Grad-CAM. Used by `cnn-dist show` and by the TensorBoard image summaries,
// so both scale and lay out the same way (ImageGrid, MapScale).
//
// Layers are addressed by their PyTorch state_dict prefix ("features.0"). A model's
// Sequential containers are looked through: their children, recursively, run one after
// the other exactly as Sequential.forward runs them, so the output of any layer reached
// that way can be captured, and a backward pass can stop at it. A block that is not a
// Sequential (a residual block, a concatenation) is one step: its output can be
// captured, the layers inside it cannot.
import CnnCore
import CnnData
import CnnLayers
import CnnModels
import Foundation

/// A picture with the PNG text metadata that says how its bytes were scaled.
public struct Picture {
    public var image: Image8
    public var text: [(key: String, value: String)]

    public init(image: Image8, text: [(key: String, value: String)]) {
        self.image = image
        self.text = text
    }

    /// The PNG with the text as tEXt chunks; tEXt holds Latin-1 only, so other characters
    /// (a class name in another script) become '?'.
    public func png() throws -> [UInt8] {
        func latin1(_ s: String) -> String {
            String(String.UnicodeScalarView(s.unicodeScalars.map { $0.value <= 255 && $0.value != 0 ? $0 : "?" }))
        }
        return try ImageEncoder.png(image, text: text.map { (latin1($0.key), latin1($0.value)) })
    }
}

/// The metadata of a picture whose tiles share one scale.
func scaleText(title: String, scale: MapScale) -> [(key: String, value: String)] {
    [("Title", title), ("Software", "cnn-dist"), ("scale", scale.description), ("scale-formula", MapScale.formula)]
}

/// The metadata of a picture whose tiles have a scale each: one line per tile, "i label: min a max b".
func scaleText(title: String, labels: [String], scales: [MapScale]) -> [(key: String, value: String)] {
    let lines = zip(labels, scales).enumerated().map { "\($0.offset) \($0.element.0): \($0.element.1)" }
    return [("Title", title), ("Software", "cnn-dist"), ("scale", lines.joined(separator: "\n")),
            ("scale-formula", MapScale.formula)]
}

/// Nearest-neighbour zoom that brings the larger side of a `side`-pixel tile to at least `target`.
public func autoZoom(side: Int, target: Int) -> Int { max(1, target / max(1, side)) }

/// The steps a forward pass goes through, Sequential containers looked through (see the file comment).
public func modelSteps(_ model: Model) -> [(name: String, layer: Layer)] {
    var steps: [(name: String, layer: Layer)] = []
    func visit(_ layer: Layer, name: String) {
        if let sequential = layer as? Sequential {
            for (child, sub) in zip(sequential.names, sequential.layers) {
                visit(sub, name: name.isEmpty ? child : name + "." + child)
            }
        } else {
            steps.append((name.isEmpty ? model.name : name, layer))
        }
    }
    visit(model.root, name: "")
    return steps
}

/// The weight of layer `name` (its state_dict "<name>.weight") and its shape, or nil.
public func layerWeight(_ model: Model, name: String) -> (values: [Float], shape: [Int])? {
    guard let entry = model.store.parameterEntries.first(where: { $0.name == name + ".weight" }) else { return nil }
    let start = model.store.parameters.data + entry.offset
    return (Array(UnsafeBufferPointer(start: start, count: entry.count)), entry.shape)
}

/// The names of the layers with a 4-D weight (convolutions), in state_dict order.
public func convolutionLayerNames(_ model: Model) -> [String] {
    model.store.parameterEntries.filter { $0.name.hasSuffix(".weight") && $0.shape.count == 4 }
        .map { String($0.name.dropLast(".weight".count)) }
}

/// The learned filters of a convolution's weight [K, C, kh, kw] as make_grid(normalize=True)
/// draws them: one scale for the whole weight; with C == 3 one RGB tile per filter (8 per
/// row), otherwise one grey tile per (filter, input channel), a row per filter (C per row,
/// or 8 when C == 1). `zoom` nil: tiles enlarged to at least 24 pixels.
public func filterPicture(weight: [Float], shape: [Int], layer: String, zoom: Int? = nil) throws -> Picture {
    guard shape.count == 4, weight.count == shape.reduce(1, *), !weight.isEmpty else {
        throw CnnError.invalidArgument(layer: layer, argument: "weight", value: formatShape(shape),
                                       reason: "filters are drawn from a 4-D convolution weight [out, in, kh, kw]")
    }
    let (k, c, kh, kw) = (shape[0], shape[1], shape[2], shape[3])
    let scale = MapScale.of(weight)
    let plane = kh * kw
    var tiles: [Image8] = []
    if c == 3 {
        for f in 0..<k { tiles.append(ImageGrid.rgbTile(weight[(f * 3 * plane)..<((f + 1) * 3 * plane)], height: kh, width: kw, scale: scale)) }
    } else {
        for p in 0..<(k * c) { tiles.append(ImageGrid.greyTile(weight[(p * plane)..<((p + 1) * plane)], height: kh, width: kw, scale: scale)) }
    }
    let columns = c == 3 || c == 1 ? ImageGrid.defaultColumns : c
    let image = ImageGrid.make(tiles: tiles, columns: columns, zoom: zoom ?? autoZoom(side: max(kh, kw), target: 24))
    return Picture(image: image, text: scaleText(title: "filters of \(layer), weight \(formatShape(shape))", scale: scale))
}

/// Feature maps [C, H, W] of one image as a grid of C grey tiles (8 per row), one scale for
/// all (make_grid(normalize=True)). `zoom` nil: tiles enlarged to at least 32 pixels.
public func featureMapPicture(values: [Float], shape: [Int], layer: String, zoom: Int? = nil) throws -> Picture {
    guard shape.count == 3, values.count == shape.reduce(1, *), !values.isEmpty else {
        throw CnnError.invalidArgument(layer: layer, argument: "output", value: formatShape(shape),
                                       reason: "feature maps are drawn from a C x H x W output (a convolution, pooling or activation layer)")
    }
    let (c, h, w) = (shape[0], shape[1], shape[2])
    let scale = MapScale.of(values)
    let tiles = (0..<c).map { ImageGrid.greyTile(values[($0 * h * w)..<(($0 + 1) * h * w)], height: h, width: w, scale: scale) }
    let image = ImageGrid.make(tiles: tiles, zoom: zoom ?? autoZoom(side: max(h, w), target: 32))
    return Picture(image: image, text: scaleText(title: "feature maps of \(layer), \(formatShape(shape))", scale: scale))
}

/// Runs a model step by step (see the file comment) in evaluation mode, keeping the outputs
/// of chosen steps, and takes gradients of one logit back to them and to the input.
public final class ModelProbe {
    public let model: Model
    public let steps: [(name: String, layer: Layer)]
    private let context = ExecutionContext(training: false)

    public init(model: Model) {
        self.model = model
        self.steps = modelSteps(model)
    }

    /// The step called `name`, or an error listing the names there are.
    public func stepIndex(_ name: String) throws -> Int {
        if let i = steps.firstIndex(where: { $0.name == name }) { return i }
        throw CnnError.invalidArgument(layer: model.name, argument: "--layer", value: name,
                                       reason: "no such layer; the layers are " + steps.map(\.name).joined(separator: ", "))
    }

    /// Normalised input [1, C, H, W] from CHW bytes, as the evaluation batches normalise it.
    public static func input(pixels: [UInt8], shape: [Int], statistics: ChannelStatistics) -> Tensor {
        let plane = shape[1] * shape[2]
        let t = Tensor(shape: [1] + shape)
        for c in 0..<shape[0] {
            for i in 0..<plane { t.data[c * plane + i] = statistics.normalize(pixels[c * plane + i], channel: c) }
        }
        return t
    }

    /// One forward pass: the logits and a copy of the outputs (one sample: shape without the batch) of `capture`.
    public func forward(_ input: Tensor, capture: Set<Int> = []) -> (logits: [Float], outputs: [Int: (values: [Float], shape: [Int])]) {
        // Each step's own output: a ReLU fused into a BatchNorm hands on the other layer's.
        MemoryPlan.unfused(model.root) { forwardSteps(input, capture: capture) }
    }

    private func forwardSteps(_ input: Tensor, capture: Set<Int>) -> (logits: [Float], outputs: [Int: (values: [Float], shape: [Int])]) {
        var x = input
        var outputs: [Int: (values: [Float], shape: [Int])] = [:]
        for (i, step) in steps.enumerated() {
            x = step.layer.forward(x, context: context)
            if capture.contains(i) { outputs[i] = (x.toArray(), Array(x.shape.dropFirst())) }
        }
        return (x.toArray(), outputs)
    }

    /// Saliency and Grad-CAM for `classIndex` (nil: the predicted class) on one input [1, C, H, W].
    /// - saliency: max over channels of |d logit / d input|, H x W (Simonyan et al.).
    /// - Grad-CAM at step `camStep` (nil: the last step with a C x H x W output larger than
    ///   1 x 1, so not a global pooling): with A its
    ///   output and G = d logit / dA, cam = ReLU(sum_k mean_ij(G_k) * A_k), h x w (Selvaraju et al.).
    public func attribution(_ input: Tensor, classIndex: Int? = nil, camStep: Int? = nil) throws
        -> (predicted: Int, logits: [Float], saliency: [Float], cam: [Float], camShape: [Int], camStep: Int) {
        let shapes = try steps.reduce(into: [input.shape]) { $0.append(try $1.layer.outputShape(for: $0.last!)) }
        let camIndex: Int
        if let camStep { camIndex = camStep } else {
            guard let last = shapes.indices.dropFirst().last(where: { shapes[$0].count == 4 && shapes[$0][2] * shapes[$0][3] > 1 }) else {
                throw CnnError.invalidArgument(layer: model.name, argument: "--layer", value: "(default)",
                                               reason: "no layer has a C x H x W output for Grad-CAM")
            }
            camIndex = last - 1
        }
        guard shapes[camIndex + 1].count == 4 else {
            throw CnnError.invalidArgument(layer: steps[camIndex].name, argument: "--layer", value: steps[camIndex].name,
                                           reason: "Grad-CAM needs a C x H x W output, this layer gives \(formatShape(Array(shapes[camIndex + 1].dropFirst())))")
        }
        // Forward and backward unfused (see `forward`): the gradient at the chosen step is that step's.
        return try MemoryPlan.unfused(model.root) { try attribution(input, classIndex: classIndex, camIndex: camIndex) }
    }

    private func attribution(_ input: Tensor, classIndex: Int?, camIndex: Int) throws
        -> (predicted: Int, logits: [Float], saliency: [Float], cam: [Float], camShape: [Int], camStep: Int) {
        let (logits, outputs) = forwardSteps(input, capture: [camIndex])
        let predicted = logits.indices.max { logits[$0] < logits[$1] || (logits[$0] == logits[$1] && $0 > $1) } ?? 0
        let target = classIndex ?? predicted
        model.store.zeroGradients()
        let saved = context.needsInputGradient
        context.needsInputGradient = true
        defer { context.needsInputGradient = saved; model.store.zeroGradients() }
        var dy = Tensor(shape: [1, logits.count])
        dy.data[target] = 1
        var camGradient: [Float] = []
        for i in steps.indices.reversed() {
            dy = steps[i].layer.backward(dy, context: context)
            // After step i's backward, dy is the gradient of step i - 1's output.
            if i - 1 == camIndex { camGradient = dy.toArray() }
        }
        // Saliency: the input gradient.
        let (c, h, w) = (input.shape[1], input.shape[2], input.shape[3])
        let dx = dy.toArray()
        var saliency = [Float](repeating: 0, count: h * w)
        for ch in 0..<c { for p in 0..<(h * w) { saliency[p] = max(saliency[p], abs(dx[ch * h * w + p])) } }
        // Grad-CAM.
        let a = outputs[camIndex]!
        let (k, ah, aw) = (a.shape[0], a.shape[1], a.shape[2])
        var cam = [Float](repeating: 0, count: ah * aw)
        if camGradient.count == a.values.count {
            for ch in 0..<k {
                var alpha: Float = 0
                for p in 0..<(ah * aw) { alpha += camGradient[ch * ah * aw + p] }
                alpha /= Float(ah * aw)
                for p in 0..<(ah * aw) { cam[p] += alpha * a.values[ch * ah * aw + p] }
            }
            for p in cam.indices { cam[p] = max(0, cam[p]) }
        }
        return (predicted, logits, saliency, cam, [ah, aw], camIndex)
    }
}

/// Nearest-neighbour resampling of an h x w map to H x W: out(y, x) = in(y * h / H, x * w / W).
public func resampleNearest(_ values: [Float], height h: Int, width w: Int, toHeight H: Int, width W: Int) -> [Float] {
    var out = [Float](repeating: 0, count: H * W)
    for y in 0..<H { for x in 0..<W { out[y * W + x] = values[(y * h / H) * w + x * w / W] } }
    return out
}
