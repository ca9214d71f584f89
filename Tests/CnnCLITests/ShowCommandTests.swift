import CnnCLI
import CnnCore
import CnnData
import CnnLayers
import CnnModels
import CnnTraining
import Foundation
import XCTest

/// `cnn-dist show`: every PNG is decoded with our libpng reader and its pixels compared with
/// the documented scaling, byte = floor((v - min) / (max - min) * 255 + 0.5), of maps computed
/// here by plain loops.
final class ShowCommandTests: XCTestCase {
    private func temporaryDirectory() throws -> String {
        let dir = NSTemporaryDirectory() + "cnn-dist-show-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        addTeardownBlock { try? FileManager.default.removeItem(atPath: dir) }
        return dir
    }

    private func run(_ arguments: [String]) throws {
        var command = try CnnDist.parseAsRoot(arguments)
        try command.run()
    }

    /// The documented scaling, written out independently of MapScale.
    private func expectedByte(_ v: Double, min lo: Double, max hi: Double) -> UInt8 {
        hi > lo ? UInt8(Swift.max(0, Swift.min(255, ((v - lo) / (hi - lo) * 255 + 0.5).rounded(.down)))) : 0
    }

    /// Checks tile `index` of a grid (tiles `width` x `height` values, one channel, zoom `zoom`)
    /// against `values` scaled to [lo, hi].
    private func assertTile(_ image: Image8, layout: ImageGrid.Layout, index: Int, values: [Double], width: Int, height: Int,
                            zoom: Int, min lo: Double, max hi: Double, channel: Int = 0, file: StaticString = #filePath, line: UInt = #line) {
        let (x0, y0) = layout.origin(of: index)
        var mismatches = 0
        for y in 0..<(height * zoom) {
            for x in 0..<(width * zoom) {
                let got = image.pixels[((y0 + y) * image.width + x0 + x) * image.channels + channel]
                let want = expectedByte(values[(y / zoom) * width + x / zoom], min: lo, max: hi)
                if got != want {
                    mismatches += 1
                    if mismatches <= 3 { XCTFail("tile \(index) (\(x / zoom), \(y / zoom)): \(got) != \(want)", file: file, line: line) }
                }
            }
        }
        XCTAssertEqual(mismatches, 0, "tile \(index)", file: file, line: line)
    }

    private func decodePNG(_ path: String) throws -> (image: Image8, text: [String: String]) {
        let bytes = try FileBytes.read(path)
        let text = Dictionary(try ImageDecoder.pngText(bytes, file: path).map { ($0.key, $0.value) }, uniquingKeysWith: { a, _ in a })
        return (try ImageDecoder().decode(bytes, file: path), text)
    }

    private func writeGreyPNG(_ values: [[Int]], offset: Int, to path: String) throws {
        let pixels = values.flatMap { $0.map { UInt8($0 + offset) } }
        try writeFileAtomically(try ImageEncoder.png(Image8(width: values[0].count, height: values.count, channels: 1, pixels: pixels)), to: path)
    }

    // The notes' 7x7 worked example: box kernel (all ones), stride 2, zero padding 1.
    static let notes7x7 = [[1, -2, -1, 5, 3, 2, 1], [1, 3, -1, 4, 3, 3, 1], [1, -2, 1, 6, 3, 3, 2], [2, -2, 2, 5, 2, 1, 0],
                           [0, 3, -2, 5, 4, 1, 2], [1, 2, -3, 1, 1, 2, -1], [1, -2, -1, 1, 2, 1, 1]]
    /// The true feature map. The three slides print three different ones, each with errors:
    /// slide 1 has 19 at (0,2) (true 20); slide 2 has 19 at (0,2), 15 at (1,1), 9 at (3,2);
    /// slide 3 has 13 at (2,1) (true 11), 7 at (2,3) (true 5), 7 at (3,2) (true 8).
    static let notes7x7Map = [[3, 8, 20, 7], [3, 16, 30, 10], [6, 11, 22, 5], [2, -2, 8, 3]]
    static let notes7x7Slides = [[[3, 8, 19, 7], [3, 16, 30, 10], [6, 11, 22, 5], [2, -2, 8, 3]],
                                 [[3, 8, 19, 7], [3, 15, 30, 10], [6, 11, 22, 5], [2, -2, 9, 3]],
                                 [[3, 8, 20, 7], [3, 16, 30, 10], [6, 13, 22, 7], [2, -2, 7, 3]]]

    func testKernelsReproduceTheNotes7x7Example() throws {
        let dir = try temporaryDirectory()
        // Signed values as an image: byte = v + 128, read back with --offset 128.
        try writeGreyPNG(Self.notes7x7, offset: 128, to: dir + "/x.png")
        try run(["show", "kernels", "--input", dir + "/x.png", "--output", dir + "/k.png", "--values", dir + "/k.json",
                 "--kernel", "1,1,1;1,1,1;1,1,1", "--stride", "2", "--padding", "1", "--offset", "128", "--zoom", "3"])
        let json = try JSONSerialization.jsonObject(with: try XCTUnwrap(FileManager.default.contents(atPath: dir + "/k.json"))) as! [String: Any]
        let map = (json["maps"] as! [[String: Any]])[0]
        XCTAssertEqual(map["shape"] as? [Int], [1, 4, 4])
        let values = (map["values"] as! [Double])
        XCTAssertEqual(values, Self.notes7x7Map.flatMap { $0.map(Double.init) })
        for slide in Self.notes7x7Slides { XCTAssertNotEqual(values, slide.flatMap { $0.map(Double.init) }) }

        let (image, text) = try decodePNG(dir + "/k.png")
        XCTAssertEqual(image.channels, 1)
        let tiles = [Image8(width: 7, height: 7, channels: 1, pixels: [UInt8](repeating: 0, count: 49)),
                     Image8(width: 4, height: 4, channels: 1, pixels: [UInt8](repeating: 0, count: 16))]
        let layout = ImageGrid.layout(tiles: tiles, labelled: true, columns: 4, zoom: 3)
        XCTAssertEqual([image.width, image.height], [layout.width, layout.height])
        assertTile(image, layout: layout, index: 0, values: Self.notes7x7.flatMap { $0.map(Double.init) }, width: 7, height: 7,
                   zoom: 3, min: -3, max: 6)
        assertTile(image, layout: layout, index: 1, values: Self.notes7x7Map.flatMap { $0.map(Double.init) }, width: 4, height: 4,
                   zoom: 3, min: -2, max: 30)
        XCTAssertEqual(text["scale"], "0 input: min -3.0 max 6.0\n1 kernel 1: min -2.0 max 30.0")
        XCTAssertEqual(text["scale-formula"], MapScale.formula)
    }

    // The notes' 6x6 example: two 3x3 filters, stride 1, no padding.
    func testKernelsReproduceTheNotes6x6Example() throws {
        let dir = try temporaryDirectory()
        let image6 = [[1, 0, 0, 0, 0, 1], [0, 1, 0, 0, 1, 0], [0, 0, 1, 1, 0, 0], [1, 0, 0, 0, 1, 0], [0, 1, 0, 0, 1, 0], [0, 0, 1, 0, 1, 0]]
        let filter1 = [[3, -1, -3, -1], [-3, 1, 0, -3], [-3, -3, 0, 1], [3, -2, -2, -1]]
        let filter2 = [[-1, -1, -1, -1], [-1, -1, -2, 1], [-1, -1, -2, 1], [-1, 0, -4, 3]]
        try writeGreyPNG(image6, offset: 0, to: dir + "/x.png")
        try run(["show", "kernels", "--input", dir + "/x.png", "--output", dir + "/k.png", "--values", dir + "/k.json",
                 "--kernel", "1,-1,-1;-1,1,-1;-1,-1,1", "--kernel=-1,1,-1;-1,1,-1;-1,1,-1", "--padding", "0"])
        let json = try JSONSerialization.jsonObject(with: try XCTUnwrap(FileManager.default.contents(atPath: dir + "/k.json"))) as! [String: Any]
        let maps = json["maps"] as! [[String: Any]]
        XCTAssertEqual(maps[0]["values"] as? [Double], filter1.flatMap { $0.map(Double.init) })
        XCTAssertEqual(maps[1]["values"] as? [Double], filter2.flatMap { $0.map(Double.init) })

        let (image, text) = try decodePNG(dir + "/k.png")
        // Default zoom: tiles of at least 64 pixels, 64 / 6 = 10.
        let tiles = [(6, 6), (4, 4), (4, 4)].map { Image8(width: $0.0, height: $0.1, channels: 1, pixels: [UInt8](repeating: 0, count: $0.0 * $0.1)) }
        let layout = ImageGrid.layout(tiles: tiles, labelled: true, columns: 4, zoom: 10)
        XCTAssertEqual([image.width, image.height], [layout.width, layout.height])
        assertTile(image, layout: layout, index: 0, values: image6.flatMap { $0.map(Double.init) }, width: 6, height: 6, zoom: 10, min: 0, max: 1)
        assertTile(image, layout: layout, index: 1, values: filter1.flatMap { $0.map(Double.init) }, width: 4, height: 4, zoom: 10, min: -3, max: 3)
        assertTile(image, layout: layout, index: 2, values: filter2.flatMap { $0.map(Double.init) }, width: 4, height: 4, zoom: 10, min: -4, max: 3)
        XCTAssertEqual(text["scale"]?.split(separator: "\n").last, "2 kernel 2: min -4.0 max 3.0")
    }

    /// The notes' cross-correlation example gives 14 top-left; --flip (true convolution) 3*1 + 2*2 + 1*3 = 10.
    func testFlipGivesTrueConvolution() throws {
        let dir = try temporaryDirectory()
        let image = [[1, 0, 0, 0, 0, 1], [0, 2, 0, 0, 1, 0], [0, 0, 3, 1, 0, 0], [1, 0, 0, 0, 1, 0], [0, 1, 0, 0, 1, 0], [0, 0, 1, 0, 1, 0]]
        try writeGreyPNG(image, offset: 0, to: dir + "/x.png")
        for (flip, want) in [(false, 14.0), (true, 10.0)] {
            try run(["show", "kernels", "--input", dir + "/x.png", "--output", dir + "/k.png", "--values", dir + "/k.json",
                     "--kernel", "1,-1,-1;-1,2,-1;-1,-1,3", "--padding", "0"] + (flip ? ["--flip"] : []))
            let json = try JSONSerialization.jsonObject(with: try XCTUnwrap(FileManager.default.contents(atPath: dir + "/k.json"))) as! [String: Any]
            XCTAssertEqual(((json["maps"] as! [[String: Any]])[0]["values"] as! [Double])[0], want, "flip \(flip)")
        }
    }

    /// The classic kernels on an RGB image: every tile equals a plain-loop cross-correlation
    /// per channel with k/2 zero padding, scaled by its own range; identity reproduces the input.
    func testClassicKernelsOnAnRGBImage() throws {
        let dir = try temporaryDirectory()
        let (h, w) = (9, 11)
        var rng = SplitMix64(seed: 5)
        let pixels = (0..<(h * w * 3)).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
        let source = Image8(width: w, height: h, channels: 3, pixels: pixels)
        try writeFileAtomically(try ImageEncoder.png(source), to: dir + "/x.png")
        try run(["show", "kernels", "--input", dir + "/x.png", "--output", dir + "/k.png", "--zoom", "2"])
        let (image, text) = try decodePNG(dir + "/k.png")
        XCTAssertEqual(image.channels, 3)
        let chw = source.chwFloat(scale: 1).map(Double.init)
        var tiles = [source]
        tiles += NamedKernel.classics.map { _ in source }
        let layout = ImageGrid.layout(tiles: tiles, labelled: true, columns: 4, zoom: 2)
        XCTAssertEqual([image.width, image.height], [layout.width, layout.height])
        let lines = try XCTUnwrap(text["scale"]).split(separator: "\n")
        XCTAssertEqual(lines.count, 13)
        XCTAssertTrue(lines[2].hasPrefix("2 shift right: min "), String(lines[2]))
        for (index, kernel) in NamedKernel.classics.enumerated() {
            var out = [Double](repeating: 0, count: 3 * h * w)
            for c in 0..<3 {
                for y in 0..<h {
                    for x in 0..<w {
                        var s = 0.0
                        for i in 0..<3 {
                            for j in 0..<3 {
                                let yy = y + i - 1, xx = x + j - 1
                                guard yy >= 0, yy < h, xx >= 0, xx < w else { continue }
                                s += Double(kernel.values[i * 3 + j]) * chw[(c * h + yy) * w + xx]
                            }
                        }
                        out[(c * h + y) * w + x] = s
                    }
                }
            }
            if kernel.label == "identity" { XCTAssertEqual(out, chw) }
            if kernel.label == "shift right" {
                // Shifted right by one pixel, zeros coming in on the left.
                for y in 0..<h { XCTAssertEqual(out[y * w + 3], chw[y * w + 2]); XCTAssertEqual(out[y * w], 0) }
            }
            // The scale is over the Float maps; loops in Double agree within rounding of the
            // fractional kernels, so take min and max from the metadata and allow one level there.
            let parts = lines[index + 1].split(separator: " ")
            let lo = Double(parts[parts.count - 3])!, hi = Double(parts[parts.count - 1])!
            XCTAssertEqual(lo, out.min()!, accuracy: 1e-3)
            XCTAssertEqual(hi, out.max()!, accuracy: 1e-3)
            let exact = kernel.values.allSatisfy { $0 == $0.rounded() }
            let (x0, y0) = layout.origin(of: index + 1)
            for c in 0..<3 {
                for y in 0..<h {
                    for x in 0..<w {
                        let got = Int(image.pixels[((y0 + 2 * y) * image.width + x0 + 2 * x + 1) * 3 + c])
                        let want = Int(expectedByte(out[(c * h + y) * w + x], min: lo, max: hi))
                        if exact { XCTAssertEqual(got, want, "\(kernel.label) c\(c) (\(x), \(y))") }
                        else { XCTAssertLessThanOrEqual(abs(got - want), 1, "\(kernel.label) c\(c) (\(x), \(y))") }
                    }
                }
            }
        }
    }

    func testBadKernelsAreNamed() throws {
        let dir = try temporaryDirectory()
        try writeGreyPNG([[1, 2], [3, 4]], offset: 0, to: dir + "/x.png")
        for (text, fragment) in [("1,2;3", "every row needs the same number"), ("1,a", "'a' is not a number"), ("1/0", "fraction")] {
            XCTAssertThrowsError(try run(["show", "kernels", "--input", dir + "/x.png", "--output", dir + "/k.png", "--kernel", text])) {
                XCTAssertTrue("\($0)".contains(fragment) && "\($0)".contains("--kernel"), "\($0)")
            }
        }
        XCTAssertThrowsError(try run(["show", "kernels", "--input", dir + "/missing.png", "--output", dir + "/k.png"])) {
            XCTAssertTrue("\($0)".contains("missing.png"), "\($0)")
        }
    }

    func testFiltersGreyAndColour() throws {
        let dir = try temporaryDirectory()
        for (name, channels) in [("fashion-cnn", 1), ("resnet20", 3)] {
            let model = try Model(name: name)
            model.store.initialize(seed: 3)
            let checkpoint = dir + "/\(name).safetensors"
            try writeModelCheckpoint(model: model, statistics: .unit(channels: channels), to: checkpoint)
            try run(["show", "filters", "--checkpoint", checkpoint, "--output", dir + "/f.png"])
            let (image, text) = try decodePNG(dir + "/f.png")
            let first = try XCTUnwrap(model.store.parameterEntries.first { $0.shape.count == 4 })
            let weight = Array(UnsafeBufferPointer(start: model.store.parameters.data + first.offset, count: first.count)).map(Double.init)
            let (k, c, kh, kw) = (first.shape[0], first.shape[1], first.shape[2], first.shape[3])
            let lo = weight.min()!, hi = weight.max()!
            XCTAssertEqual(text["scale"], "min \(Float(lo)) max \(Float(hi))")
            let zoom = 24 / max(kh, kw)
            let tile = Image8(width: kw, height: kh, channels: 1, pixels: [UInt8](repeating: 0, count: kh * kw))
            let count = c == 3 ? k : k * c
            let layout = ImageGrid.layout(tiles: [Image8](repeating: tile, count: count), labelled: false,
                                          columns: c == 3 || c == 1 ? 8 : c, zoom: zoom)
            XCTAssertEqual([image.width, image.height, image.channels], [layout.width, layout.height, c == 3 ? 3 : 1], name)
            let plane = kh * kw
            if c == 3 {
                for f in 0..<k {
                    for ch in 0..<3 {
                        assertTile(image, layout: layout, index: f, values: Array(weight[((f * 3 + ch) * plane)..<((f * 3 + ch + 1) * plane)]),
                                   width: kw, height: kh, zoom: zoom, min: lo, max: hi, channel: ch)
                    }
                }
            } else {
                for t in 0..<count {
                    assertTile(image, layout: layout, index: t, values: Array(weight[(t * plane)..<((t + 1) * plane)]),
                               width: kw, height: kh, zoom: zoom, min: lo, max: hi)
                }
            }
        }
        XCTAssertThrowsError(try run(["show", "filters", "--checkpoint", dir + "/fashion-cnn.safetensors", "--output", dir + "/f.png",
                                      "--layer", "nope"])) { XCTAssertTrue("\($0)".contains("nope") && "\($0)".contains("--layer"), "\($0)") }
    }

    /// The first convolution's feature maps equal a plain-loop cross-correlation of the
    /// normalised image with the checkpoint's weights plus bias, scaled over the whole grid.
    func testActivationsOfTheFirstConvolution() throws {
        let dir = try temporaryDirectory()
        let model = try Model(name: "fashion-cnn")
        model.store.initialize(seed: 4)
        let stats = ChannelStatistics(mean: [0.3], std: [0.35])
        let checkpoint = dir + "/m.safetensors"
        try writeModelCheckpoint(model: model, statistics: stats, to: checkpoint)
        var rng = SplitMix64(seed: 8)
        let pixels = (0..<(28 * 28)).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
        try writeFileAtomically(try ImageEncoder.png(Image8(width: 28, height: 28, channels: 1, pixels: pixels)), to: dir + "/x.png")
        let convs = convolutionLayerNames(model)
        try run(["show", "activations", "--checkpoint", checkpoint, "--input", dir + "/x.png", "--layer", convs[0],
                 "--output", dir + "/a.png", "--zoom", "1"])
        let (image, text) = try decodePNG(dir + "/a.png")

        let weightEntry = model.store.parameterEntries.first { $0.name == convs[0] + ".weight" }!
        let biasEntry = model.store.parameterEntries.first { $0.name == convs[0] + ".bias" }
        let wt = model.store.parameters.data + weightEntry.offset
        let (k, kh, kw) = (weightEntry.shape[0], weightEntry.shape[2], weightEntry.shape[3])
        let conv = try XCTUnwrap(ModelProbe(model: model).steps.first { $0.name == convs[0] }?.layer as? Conv2D)
        guard case let .explicit(pad, _, _, _) = conv.padding else { return XCTFail("explicit padding expected") }
        let x = pixels.map { Double(stats.normalize($0, channel: 0)) }
        let oh = 28 + 2 * pad - kh + 1, ow = 28 + 2 * pad - kw + 1
        var maps = [Double](repeating: 0, count: k * oh * ow)
        for f in 0..<k {
            for y in 0..<oh {
                for xo in 0..<ow {
                    var s = biasEntry.map { Double(model.store.parameters.data[$0.offset + f]) } ?? 0
                    for i in 0..<kh {
                        for j in 0..<kw {
                            let yy = y + i - pad, xx = xo + j - pad
                            guard yy >= 0, yy < 28, xx >= 0, xx < 28 else { continue }
                            s += Double(wt[(f * kh + i) * kw + j]) * x[yy * 28 + xx]
                        }
                    }
                    maps[(f * oh + y) * ow + xo] = s
                }
            }
        }
        let parts = try XCTUnwrap(text["scale"]).split(separator: " ")
        let lo = Double(parts[1])!, hi = Double(parts[3])!
        XCTAssertEqual(lo, maps.min()!, accuracy: 1e-4)
        XCTAssertEqual(hi, maps.max()!, accuracy: 1e-4)
        let tile = Image8(width: ow, height: oh, channels: 1, pixels: [UInt8](repeating: 0, count: oh * ow))
        let layout = ImageGrid.layout(tiles: [Image8](repeating: tile, count: k), labelled: false, zoom: 1)
        XCTAssertEqual([image.width, image.height], [layout.width, layout.height])
        var off = 0
        for f in 0..<k {
            let (x0, y0) = layout.origin(of: f)
            for y in 0..<oh {
                for xo in 0..<ow {
                    let got = Int(image.pixels[(y0 + y) * image.width + x0 + xo])
                    let want = Int(expectedByte(maps[(f * oh + y) * ow + xo], min: lo, max: hi))
                    // Float accumulation order differs from the loop in Double: allow one level.
                    XCTAssertLessThanOrEqual(abs(got - want), 1)
                    if got != want { off += 1 }
                }
            }
        }
        XCTAssertLessThan(off, k * oh * ow / 100, "more than 1% of pixels one level off")
    }

    /// Saliency and Grad-CAM tiles are the probe's maps scaled to [0, max]; the probe itself is
    /// checked against finite differences in CnnTrainingTests.
    func testSaliencyPanel() throws {
        let dir = try temporaryDirectory()
        let model = try Model(name: "lenet5")
        model.store.initialize(seed: 6)
        let stats = ChannelStatistics(mean: [0.3], std: [0.35])
        let checkpoint = dir + "/m.safetensors"
        try writeModelCheckpoint(model: model, statistics: stats, to: checkpoint)
        let (h, w) = (model.inputShape[1], model.inputShape[2])
        var rng = SplitMix64(seed: 2)
        let pixels = (0..<(h * w)).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
        try writeFileAtomically(try ImageEncoder.png(Image8(width: w, height: h, channels: 1, pixels: pixels)), to: dir + "/x.png")
        try run(["show", "saliency", "--checkpoint", checkpoint, "--input", dir + "/x.png", "--output", dir + "/s.png", "--zoom", "1"])
        let (image, text) = try decodePNG(dir + "/s.png")
        let probe = ModelProbe(model: model)
        let result = try probe.attribution(ModelProbe.input(pixels: pixels, shape: model.inputShape, statistics: stats))
        let logits = model.forward(ModelProbe.input(pixels: pixels, shape: model.inputShape, statistics: stats),
                                   context: ExecutionContext(training: false)).toArray()
        XCTAssertEqual(result.logits, logits)
        XCTAssertEqual(result.predicted, logits.firstIndex(of: logits.max()!))
        let cam = resampleNearest(result.cam, height: result.camShape[0], width: result.camShape[1], toHeight: h, width: w)
        let tile = Image8(width: w, height: h, channels: 1, pixels: pixels)
        let layout = ImageGrid.layout(tiles: [tile, tile, tile], labelled: true, zoom: 1)
        assertTile(image, layout: layout, index: 0, values: pixels.map(Double.init), width: w, height: h, zoom: 1, min: 0, max: 255)
        assertTile(image, layout: layout, index: 1, values: result.saliency.map(Double.init), width: w, height: h, zoom: 1,
                   min: 0, max: Double(result.saliency.max()!))
        assertTile(image, layout: layout, index: 2, values: cam.map(Double.init), width: w, height: h, zoom: 1,
                   min: 0, max: Double(cam.max()!))
        XCTAssertGreaterThan(result.saliency.max()!, 0)
        XCTAssertTrue(text["scale"]!.contains("1 saliency: min 0.0 max \(result.saliency.max()!)"), text["scale"]!)
    }

    /// eval --confusion OUT.png: each cell's fill (its last pixel, never written on) is the count
    /// scaled to [0, max]; the matrix equals the JSON one. --misclassified: the tiles are the
    /// misclassified test images' bytes, in test order, as model.forward decides them.
    func testEvalConfusionPictureAndMisclassifiedGrid() throws {
        let dir = try temporaryDirectory()
        let model = try Model(name: "lenet5")
        model.store.initialize(seed: 12)
        let stats = ChannelStatistics(mean: [0.3], std: [0.35])
        let checkpoint = dir + "/m.safetensors"
        try writeModelCheckpoint(model: model, statistics: stats, to: checkpoint)
        let common = ["--checkpoint", checkpoint, "--dataset", "synthetic", "--synthetic-count", "256", "--seed", "5",
                      "--test-limit", "40"]
        try run(["eval"] + common + ["--confusion", dir + "/c.json"])
        try run(["eval"] + common + ["--confusion", dir + "/c.png", "--misclassified", dir + "/m.png", "--misclassified-limit", "10"])
        let json = try JSONSerialization.jsonObject(with: try XCTUnwrap(FileManager.default.contents(atPath: dir + "/c.json"))) as! [String: Any]
        let matrix = try XCTUnwrap(json["matrix"] as? [[Int]])
        let (picture, text) = try decodePNG(dir + "/c.png")
        XCTAssertEqual(text["matrix"], matrix.map { $0.map(String.init).joined(separator: " ") }.joined(separator: "\n"))
        let layoutWords = try XCTUnwrap(text["layout"]).split(separator: " ")
        let (cell, left, top) = (Int(layoutWords[1])!, Int(layoutWords[3])!, Int(layoutWords[5].dropLast())!)
        let maxCount = Double(matrix.joined().max()!)
        XCTAssertEqual(text["scale"], "min 0.0 max \(Float(maxCount))")
        for t in 0..<10 {
            for p in 0..<10 {
                let x = left + (p + 1) * cell - 1, y = top + (t + 1) * cell - 1
                XCTAssertEqual(picture.pixels[y * picture.width + x], expectedByte(Double(matrix[t][p]), min: 0, max: maxCount), "cell \(t) \(p)")
            }
        }

        var test = try DatasetKind.synthetic.load(.test, DatasetRequest(directory: nil, imageShape: model.inputShape, classes: 10,
                                                                        syntheticCount: 256, seed: 5))
        test = test.subset(0..<40, name: test.name)
        let (batch, _) = BatchAssembler(dataset: test, statistics: stats).batch(indices: 0..<40, epoch: 0)
        let logits = model.forward(batch, context: ExecutionContext(training: false)).toArray()
        let wrong = (0..<40).filter { i in
            let row = Array(logits[(i * 10)..<(i * 10 + 10)])
            return row.firstIndex(of: row.max()!)! != Int(test.labels[i])
        }
        XCTAssertEqual(wrong.count, 40 - matrix.indices.map { matrix[$0][$0] }.reduce(0, +), "\(matrix) \(wrong) \(test.labels)")
        let (grid, gridText) = try decodePNG(dir + "/m.png")
        let lines = try XCTUnwrap(gridText["misclassified"]).split(separator: "\n")
        XCTAssertEqual(lines.map { Int($0.split(separator: " ")[0])! }, Array(wrong.prefix(10)))
        let (h, w) = (model.inputShape[1], model.inputShape[2])
        let zoom = 64 / max(h, w)
        let tile = Image8(width: w, height: h, channels: 1, pixels: [UInt8](repeating: 0, count: h * w))
        let layout = ImageGrid.layout(tiles: [Image8](repeating: tile, count: lines.count), labelled: true, zoom: zoom)
        XCTAssertEqual([grid.width, grid.height], [layout.width, layout.height])
        for (n, i) in wrong.prefix(10).enumerated() {
            let bytes = test.pixels[(i * h * w)..<((i + 1) * h * w)].map(Double.init)
            assertTile(grid, layout: layout, index: n, values: bytes, width: w, height: h, zoom: zoom, min: 0, max: 255)
        }
    }
}
