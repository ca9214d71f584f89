import ArgumentParser
import CnnCore
import CnnData
import CnnModels
import CnnTraining
import Foundation

/// The image `path` as the checkpoint's model takes it: decoded, resized and centre-cropped
/// as predict does, CHW bytes.
func modelInputPixels(_ path: String, loaded: LoadedModel) throws -> [UInt8] {
    try ImageDecoder().decodeInput(path, shape: loaded.model.inputShape)
}

/// `path` with "-<tag>" before its extension ("out.png", "conv1" -> "out-conv1.png").
func taggedPath(_ path: String, _ tag: String) -> String {
    let ext = (path as NSString).pathExtension
    let stem = ext.isEmpty ? path : String(path.dropLast(ext.count + 1))
    let safe = String(tag.map { $0.isLetter || $0.isNumber || $0 == "." || $0 == "_" || $0 == "-" ? $0 : "_" })
    return stem + "-" + safe + (ext.isEmpty ? ".png" : "." + ext)
}

public struct ShowFiltersCommand: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "filters",
        abstract: "Draw a convolution's learned filters as a grid (PNG), scaled as make_grid(normalize=True).",
        discussion: """
            One scale (min and max of the whole weight) for every tile. A layer with 3 input channels
            gives one RGB tile per filter (input channel 0 red, 1 green, 2 blue); others one grey tile
            per filter and input channel, a row per filter.
            """)

    @Option(help: "Model checkpoint (.safetensors written by cnn-dist train).") var checkpoint: String
    @Option(help: "Convolution layer (state_dict prefix, e.g. features.0; default the first).") var layer: String?
    @Option(help: "PNG file to write.") var output: String
    @Option(help: "Nearest-neighbour enlargement (default: tiles at least 24 pixels).") var zoom: Int?

    public init() {}

    public func validate() throws {
        if let zoom, zoom < 1 { throw ValidationError("--zoom must be at least 1, got \(zoom)") }
    }

    public func run() throws {
        let loaded = try loadModelCheckpoint(path: checkpoint)
        let names = convolutionLayerNames(loaded.model)
        guard let name = layer ?? names.first else {
            throw CnnError.invalidArgument(layer: loaded.model.name, argument: "--layer", value: "(default)",
                                           reason: "the model has no convolution")
        }
        guard names.contains(name), let weight = layerWeight(loaded.model, name: name) else {
            throw CnnError.invalidArgument(layer: loaded.model.name, argument: "--layer", value: name,
                                           reason: "not a convolution of this model; they are " + names.joined(separator: ", "))
        }
        let picture = try filterPicture(weight: weight.values, shape: weight.shape, layer: name, zoom: zoom)
        try writeFileAtomically(try picture.png(), to: output)
        print("show filters: \(name) \(formatShape(weight.shape)) -> \(output) (\(picture.image.width)x\(picture.image.height), \(MapScale.of(weight.values)))")
    }
}

public struct ShowActivationsCommand: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "activations",
        abstract: "Draw the feature maps of chosen layers for one image, one grid (PNG) per layer.",
        discussion: """
            The image is decoded, resized and normalised as predict does. Layers are state_dict
            prefixes reached through Sequential containers (blocks such as residual ones count as one
            layer); default: every convolution reached that way. With one layer the grid goes to
            --output; with several, to --output with "-<layer>" before the extension. One scale per grid.
            """)

    @Option(help: "Model checkpoint (.safetensors written by cnn-dist train).") var checkpoint: String
    @Option(help: "Image (PNG or JPEG).") var input: String
    @Option(help: "Layer whose output to draw (repeatable).") var layer: [String] = []
    @Option(help: "PNG file to write (see the discussion for several layers).") var output: String
    @Option(help: "Nearest-neighbour enlargement (default: tiles at least 32 pixels).") var zoom: Int?

    public init() {}

    public func validate() throws {
        if let zoom, zoom < 1 { throw ValidationError("--zoom must be at least 1, got \(zoom)") }
    }

    public func run() throws {
        let loaded = try loadModelCheckpoint(path: checkpoint)
        let probe = ModelProbe(model: loaded.model)
        let convs = Set(convolutionLayerNames(loaded.model))
        let names = layer.isEmpty ? probe.steps.map(\.name).filter { convs.contains($0) } : layer
        guard !names.isEmpty else { throw ValidationError("the model has no convolution reached through Sequential; name layers with --layer") }
        let indices = try names.map { try probe.stepIndex($0) }
        let x = ModelProbe.input(pixels: try modelInputPixels(input, loaded: loaded), shape: loaded.model.inputShape,
                                 statistics: loaded.statistics)
        let (_, outputs) = probe.forward(x, capture: Set(indices))
        for (name, index) in zip(names, indices) {
            let out = outputs[index]!
            let picture = try featureMapPicture(values: out.values, shape: out.shape, layer: name, zoom: zoom)
            let path = names.count == 1 ? output : taggedPath(output, name)
            try writeFileAtomically(try picture.png(), to: path)
            print("show activations: \(name) \(formatShape(out.shape)) -> \(path) (\(MapScale.of(out.values)))")
        }
    }
}

public struct ShowSaliencyCommand: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "saliency",
        abstract: "Input-gradient saliency and Grad-CAM of the predicted class for one image (one labelled PNG).",
        discussion: """
            Tiles: the input as the model sees it; saliency = max over channels of |d logit / d pixel|,
            scaled with min 0 and max its maximum; Grad-CAM at --layer (default the last layer with a
            C x H x W output larger than 1 x 1): ReLU(sum_k mean(dlogit/dA_k) A_k), resampled (nearest) to the input size,
            scaled with min 0 and max its maximum. The logit is the predicted class's unless --class.
            """)

    @Option(help: "Model checkpoint (.safetensors written by cnn-dist train).") var checkpoint: String
    @Option(help: "Image (PNG or JPEG).") var input: String
    @Option(help: "PNG file to write.") var output: String
    @Option(help: "Grad-CAM layer (state_dict prefix).") var layer: String?
    @Option(name: .customLong("class"), help: "Class index to explain (default: the predicted one).") var classIndex: Int?
    @Option(help: "Nearest-neighbour enlargement (default: tiles at least 96 pixels).") var zoom: Int?

    public init() {}

    public func validate() throws {
        if let zoom, zoom < 1 { throw ValidationError("--zoom must be at least 1, got \(zoom)") }
    }

    public func run() throws {
        let loaded = try loadModelCheckpoint(path: checkpoint)
        let model = loaded.model
        if let classIndex, !(0..<model.classCount).contains(classIndex) {
            throw ValidationError("--class must lie in 0..<\(model.classCount), got \(classIndex)")
        }
        let probe = ModelProbe(model: model)
        let pixels = try modelInputPixels(input, loaded: loaded)
        let x = ModelProbe.input(pixels: pixels, shape: model.inputShape, statistics: loaded.statistics)
        let result = try probe.attribution(x, classIndex: classIndex, camStep: try layer.map { try probe.stepIndex($0) })
        let picture = saliencyPicture(pixels: pixels, shape: model.inputShape, result: result,
                                      camLayer: probe.steps[result.camStep].name, names: loaded.classNames, zoom: zoom)
        try writeFileAtomically(try picture.png(), to: output)
        let names = loaded.classNames ?? (0..<model.classCount).map(String.init)
        print("show saliency: predicted \(names[result.predicted]) (class \(result.predicted)); explained \(names[classIndex ?? result.predicted]); Grad-CAM at \(probe.steps[result.camStep].name) -> \(output)")
    }
}

/// Input, saliency and Grad-CAM tiles, labelled; the saliency and CAM scales are [0, max].
func saliencyPicture(pixels: [UInt8], shape: [Int], result: (predicted: Int, logits: [Float], saliency: [Float], cam: [Float], camShape: [Int], camStep: Int),
                     camLayer: String, names: [String]?, zoom: Int?) -> Picture {
    let (c, h, w) = (shape[0], shape[1], shape[2])
    let inputTile = Image8(chw: pixels, channels: c, height: h, width: w)
    let salScale = MapScale(min: 0, max: result.saliency.max() ?? 0)
    let cam = resampleNearest(result.cam, height: result.camShape[0], width: result.camShape[1], toHeight: h, width: w)
    let camScale = MapScale(min: 0, max: cam.max() ?? 0)
    let tiles = [inputTile, ImageGrid.greyTile(result.saliency[...], height: h, width: w, scale: salScale),
                 ImageGrid.greyTile(cam[...], height: h, width: w, scale: camScale)]
    let labels = ["input", "saliency", "grad-cam"]
    let image = ImageGrid.make(tiles: tiles, labels: labels, zoom: zoom ?? autoZoom(side: max(h, w), target: 96))
    let predicted = names?[result.predicted] ?? String(result.predicted)
    return Picture(image: image, text: [
        ("Title", "saliency and Grad-CAM (\(camLayer)), predicted \(predicted)"), ("Software", "cnn-dist"),
        ("scale", "0 input: bytes as decoded\n1 saliency: \(salScale)\n2 grad-cam: \(camScale)"),
        ("scale-formula", MapScale.formula)])
}
