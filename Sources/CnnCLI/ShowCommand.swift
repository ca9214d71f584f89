import ArgumentParser
import CnnCore
import CnnData
import CnnLayers
import CnnTraining
import Foundation

/// `cnn-dist show kernels|filters|activations|saliency`: pictures of what convolutions and a
/// trained network compute, as PNG files whose tEXt metadata states the scaling.
public struct ShowCommand: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "show",
        abstract: "Draw kernels applied to an image, learned filters, feature maps and saliency as PNG.",
        discussion: """
            Float maps become bytes as torchvision's make_grid(normalize=True) + save_image do:
            byte = floor((v - min) / (max - min) * 255 + 0.5), min and max over the grid (or over each
            tile of a kernel panel). The PNG's tEXt chunks hold the title, "scale" (min and max) and
            "scale-formula".
            """,
        subcommands: [ShowKernelsCommand.self, ShowFiltersCommand.self, ShowActivationsCommand.self,
                      ShowSaliencyCommand.self])

    public init() {}
}

/// A named 2-D kernel.
public struct NamedKernel: Equatable, Sendable {
    public var label: String
    public var height: Int, width: Int
    /// Row-major height x width values.
    public var values: [Float]

    public init(label: String, rows: [[Float]]) {
        self.label = label
        height = rows.count
        width = rows.first?.count ?? 0
        values = rows.flatMap { $0 }
    }

    /// The kernels of the notes. Emboss is the usual 3x3 one (the notes print its first
    /// row with four entries, [2, -1, 1, 0], which is not a kernel). Shift moves the image
    /// right by one pixel (as a cross-correlation, which is what Conv2d computes).
    public static let classics: [NamedKernel] = [
        NamedKernel(label: "identity", rows: [[0, 0, 0], [0, 1, 0], [0, 0, 0]]),
        NamedKernel(label: "shift right", rows: [[0, 0, 0], [1, 0, 0], [0, 0, 0]]),
        NamedKernel(label: "box blur", rows: [[Float]](repeating: [1 / 9, 1 / 9, 1 / 9], count: 3)),
        NamedKernel(label: "gaussian", rows: [[1, 2, 1], [2, 4, 2], [1, 2, 1]].map { $0.map { $0 / 16 } }),
        NamedKernel(label: "sharpen", rows: [[0, -1, 0], [-1, 5, -1], [0, -1, 0]]),
        NamedKernel(label: "laplacian", rows: [[0, 1, 0], [1, -4, 1], [0, 1, 0]]),
        NamedKernel(label: "emboss", rows: [[-2, -1, 0], [-1, 1, 1], [0, 1, 2]]),
        NamedKernel(label: "edges", rows: [[-1, -1, -1], [-1, 8, -1], [-1, -1, -1]]),
        NamedKernel(label: "horizontal", rows: [[-1, -1, -1], [0, 0, 0], [1, 1, 1]]),
        NamedKernel(label: "vertical", rows: [[-1, 0, 1], [-1, 0, 1], [-1, 0, 1]]),
        NamedKernel(label: "sobel x", rows: [[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]]),
        NamedKernel(label: "sobel y", rows: [[-1, -2, -1], [0, 0, 0], [1, 2, 1]]),
    ]

    /// Parses "a,b,c;d,e,f;g,h,i" (rows separated by ';', values by ','; a value may be a
    /// fraction p/q). Throws naming `option` for anything else.
    public static func parse(_ text: String, label: String, option: String = "--kernel") throws -> NamedKernel {
        func bad(_ reason: String) -> CnnError { .invalidArgument(layer: "show kernels", argument: option, value: text, reason: reason) }
        let rows = try text.split(separator: ";", omittingEmptySubsequences: false).map { row in
            try row.split(separator: ",", omittingEmptySubsequences: false).map { field -> Float in
                let item = field.trimmingCharacters(in: .whitespaces)
                let parts = item.split(separator: "/", omittingEmptySubsequences: false)
                guard (1...2).contains(parts.count), let p = Double(parts[0]), p.isFinite else {
                    throw bad("'\(item)' is not a number (a kernel is rows 'a,b,c' separated by ';')")
                }
                guard parts.count == 2 else { return Float(p) }
                guard let q = Double(parts[1]), q != 0, q.isFinite else { throw bad("'\(item)' is not a fraction p/q with q != 0") }
                return Float(p / q)
            }
        }
        guard let width = rows.first?.count, width > 0, rows.allSatisfy({ $0.count == width }) else {
            throw bad("rows have \(rows.map { String($0.count) }.joined(separator: ", ")) values; every row needs the same number")
        }
        return NamedKernel(label: label, rows: rows)
    }
}

/// One kernel's output on an image: C x outH x outW.
public struct KernelMap {
    public var kernel: NamedKernel
    public var shape: [Int]
    public var values: [Float]
}

/// Applies each kernel to every channel of `input` (C x H x W values) with our Conv2D
/// (depthwise: groups = C, the same kernel on each channel, no bias).
public func applyKernels(_ kernels: [NamedKernel], to input: [Float], shape: [Int], stride: Int,
                         padding: ConvPadding, flip: Bool) throws -> [KernelMap] {
    let (c, h, w) = (shape[0], shape[1], shape[2])
    let x = Tensor(shape: [1, c, h, w], values: input)
    return try kernels.map { kernel in
        let conv = try Conv2D(inChannels: c, outChannels: c, kernelSize: (kernel.height, kernel.width), stride: (stride, stride),
                              padding: padding, groups: c, bias: false, flipKernel: flip, name: kernel.label)
        let outShape = try conv.outputShape(for: [1, c, h, w])
        let store = ParameterStore(root: conv)
        for ch in 0..<c {
            for (i, v) in kernel.values.enumerated() { store.parameters.data[ch * kernel.values.count + i] = v }
        }
        let y = conv.forward(x, context: ExecutionContext(training: false))
        return KernelMap(kernel: kernel, shape: Array(outShape.dropFirst()), values: y.toArray())
    }
}

/// The labelled panel of the input and its kernel maps, each tile with its own scale.
public func kernelPanel(input: [Float], shape: [Int], maps: [KernelMap], columns: Int, zoom: Int?) -> Picture {
    func tile(_ values: [Float], _ s: [Int], _ scale: MapScale) -> Image8 {
        s[0] == 3 ? ImageGrid.rgbTile(values[...], height: s[1], width: s[2], scale: scale)
            : ImageGrid.greyTile(values[...], height: s[1], width: s[2], scale: scale)
    }
    var labels = ["input"], scales = [MapScale.of(input)]
    var tiles = [tile(input, shape, scales[0])]
    for map in maps {
        let scale = MapScale.of(map.values)
        labels.append(map.kernel.label)
        scales.append(scale)
        tiles.append(tile(map.values, map.shape, scale))
    }
    let side = tiles.map { max($0.width, $0.height) }.max() ?? 1
    let image = ImageGrid.make(tiles: tiles, labels: labels, columns: columns, zoom: zoom ?? autoZoom(side: side, target: 64))
    return Picture(image: image, text: [("Title", "kernels applied to an image"), ("Software", "cnn-dist"),
                                        ("scale", zip(labels, scales).enumerated().map { "\($0.offset) \($0.element.0): \($0.element.1)" }
                                            .joined(separator: "\n")),
                                        ("scale-formula", MapScale.formula)])
}

public struct ShowKernelsCommand: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "kernels",
        abstract: "Apply the classic kernels (or your own) to an image with our convolution; write one labelled PNG panel.",
        discussion: """
            Pixels are taken as their byte values minus --offset (so a grey PNG with byte v + 128 and
            --offset 128 holds the signed matrix v of a worked example). Each kernel runs on every
            channel (depthwise Conv2d, no bias), stride --stride, padding --padding (same: output
            ceil(size / stride), k/2 zeros on each side for an odd kernel at stride 1). The first tile is the input; every tile is scaled by its
            own min and max. --values writes the exact maps as JSON.
            Kernels: identity, shift right, box blur, gaussian, sharpen, laplacian, emboss, edges,
            horizontal, vertical, sobel x, sobel y; or only the --kernel ones when given.
            """)

    @Option(help: "Image (PNG or JPEG, grey or RGB).") var input: String
    @Option(help: "PNG file to write.") var output: String
    @Option(help: ArgumentHelp("Your own kernel, rows separated by ';' (repeatable; write --kernel=-1,... when it starts with '-').", valueName: "a,b,c;d,e,f;...")) var kernel: [String] = []
    @Option(help: "Stride.") var stride = 1
    @Option(help: "Zero padding on each side, or 'same'.") var padding = "same"
    @Option(help: "Value subtracted from every pixel byte.") var offset: Double = 0
    @Flag(help: "True convolution (kernel flipped) instead of PyTorch's cross-correlation.") var flip = false
    @Option(help: "Tiles per row.") var columns = 4
    @Option(help: "Nearest-neighbour enlargement (default: tiles at least 64 pixels).") var zoom: Int?
    @Option(help: ArgumentHelp("Also write the maps' exact values as JSON.", valueName: "OUT.json")) var values: String?

    public init() {}

    public func validate() throws {
        if stride < 1 { throw ValidationError("--stride must be at least 1, got \(stride)") }
        if padding != "same" && (Int(padding) ?? -1) < 0 { throw ValidationError("--padding must be 'same' or an integer >= 0, got '\(padding)'") }
        if columns < 1 { throw ValidationError("--columns must be at least 1, got \(columns)") }
        if let zoom, zoom < 1 { throw ValidationError("--zoom must be at least 1, got \(zoom)") }
    }

    public func run() throws {
        let image = try ImageDecoder().decodeFile(input)
        let shape = [image.channels, image.height, image.width]
        let pixels = image.chwFloat(scale: 1).map { $0 - Float(offset) }
        let kernels = kernel.isEmpty ? NamedKernel.classics
            : try kernel.enumerated().map { try NamedKernel.parse($0.element, label: "kernel \($0.offset + 1)") }
        let pad: ConvPadding = Int(padding).map { .explicit(top: $0, bottom: $0, left: $0, right: $0) } ?? .same
        let maps = try applyKernels(kernels, to: pixels, shape: shape, stride: stride, padding: pad, flip: flip)
        let picture = kernelPanel(input: pixels, shape: shape, maps: maps, columns: columns, zoom: zoom)
        try writeFileAtomically(try picture.png(), to: output)
        if let values {
            let object: [String: Any] = [
                "input": ["shape": shape, "values": pixels.map(Double.init)],
                "stride": stride, "padding": padding, "flip": flip,
                "maps": maps.map { ["label": $0.kernel.label, "kernel": $0.kernel.values.map(Double.init),
                                    "kernel_shape": [$0.kernel.height, $0.kernel.width],
                                    "shape": $0.shape, "values": $0.values.map(Double.init)] as [String: Any] },
            ]
            try writeFileAtomically(Array(try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])), to: values)
        }
        print("show kernels: \(maps.count) kernels on \(input) (\(formatShape(shape))) -> \(output) (\(picture.image.width)x\(picture.image.height))")
    }
}
