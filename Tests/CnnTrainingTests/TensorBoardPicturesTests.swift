import CnnCore
import CnnData
import CnnDistributed
import CnnModels
import CnnTraining
import Foundation
import XCTest

/// Image and histogram summaries read back with the independent reader of TensorBoardTests:
/// the PNGs decode to the pictures `show` draws of the final weights, the histograms hold
/// the counts, sums and numpy-style buckets of each tensor.
final class TensorBoardPicturesTests: XCTestCase {
    struct Summaries {
        var images: [String: [(step: Int64, height: Int, width: Int, colorspace: Int, png: [UInt8])]] = [:]
        var histograms: [String: [(step: Int64, fields: [Int: [Double]])]] = [:]
    }

    static func doubles(_ field: TensorBoardTests.Field) -> [Double] {
        switch field {
        case let .fixed64(bits): return [Double(bitPattern: bits)]
        case let .bytes(b): return stride(from: 0, to: b.count, by: 8).map { Double(bitPattern: TensorBoardTests.uint(b, $0, 8)) }
        default: return []
        }
    }

    static func summaries(_ file: String) -> Summaries {
        var out = Summaries()
        for record in TensorBoardTests.records(Array(FileManager.default.contents(atPath: file)!)) {
            guard let event = TensorBoardTests.decode(record) else { XCTFail("bad event"); continue }
            var step: Int64 = 0
            for case let (2, .varint(v)) in event { step = Int64(bitPattern: v) }
            for case let (5, .bytes(summary)) in event {
                for case let (1, .bytes(valueBytes)) in TensorBoardTests.decode(summary) ?? [] {
                    let value = TensorBoardTests.decode(valueBytes) ?? []
                    var tag = ""
                    for case let (1, .bytes(b)) in value { tag = String(decoding: b, as: UTF8.self) }
                    for case let (4, .bytes(imageBytes)) in value {
                        var h = 0, w = 0, c = 0, png: [UInt8] = []
                        for (n, f) in TensorBoardTests.decode(imageBytes) ?? [] {
                            switch (n, f) {
                            case let (1, .varint(v)): h = Int(v)
                            case let (2, .varint(v)): w = Int(v)
                            case let (3, .varint(v)): c = Int(v)
                            case let (4, .bytes(b)): png = b
                            default: XCTFail("unexpected Image field \(n)")
                            }
                        }
                        out.images[tag, default: []].append((step, h, w, c, png))
                    }
                    for case let (5, .bytes(histo)) in value {
                        var fields: [Int: [Double]] = [:]
                        for (n, f) in TensorBoardTests.decode(histo) ?? [] { fields[n, default: []] += doubles(f) }
                        out.histograms[tag, default: []].append((step, fields))
                    }
                }
            }
        }
        return out
    }

    func testEpochImagesAndHistograms() throws {
        let dir = NSTemporaryDirectory() + "cnn-dist-tbp-\(UUID().uuidString)"
        addTeardownBlock { try? FileManager.default.removeItem(atPath: dir) }
        var config = TrainingConfig()
        config.model = "lenet5"; config.dataset = .synthetic; config.syntheticCount = 64; config.batchSize = 32
        config.epochs = 2; config.testLimit = 16
        var trainer: Trainer?
        try LocalWorld.run(size: 1) { comm in
            let t = try Trainer(config: config, communicator: comm, runDirectory: dir, log: { _ in })
            _ = try t.run()
            trainer = t
        }
        let model = try XCTUnwrap(trainer).model
        let files = try TensorBoardTests.eventFiles(in: dir)
        XCTAssertEqual(files.count, 1)
        let s = Self.summaries(files[0])
        let conv = try XCTUnwrap(convolutionLayerNames(model).first)
        XCTAssertEqual(Set(s.images.keys), ["filters/" + conv, "feature_maps/" + conv])
        XCTAssertEqual(Set(s.histograms.keys), Set(model.store.parameterEntries.flatMap { ["weights/" + $0.name, "gradients/" + $0.name] }))

        // The last epoch's filters are the final weights, drawn as `show filters` draws them.
        let filters = try XCTUnwrap(s.images["filters/" + conv])
        XCTAssertEqual(filters.map(\.step), [1, 2])
        let weight = try XCTUnwrap(layerWeight(model, name: conv))
        let expected = try filterPicture(weight: weight.values, shape: weight.shape, layer: conv)
        let decoded = try ImageDecoder().decode(filters[1].png, file: "summary")
        XCTAssertEqual(decoded, expected.image)
        XCTAssertEqual([filters[1].height, filters[1].width, filters[1].colorspace],
                       [expected.image.height, expected.image.width, expected.image.channels])
        let text = try ImageDecoder.pngText(filters[1].png, file: "summary")
        XCTAssertEqual(text.first { $0.key == "scale" }?.value, MapScale.of(weight.values).description)

        // Feature maps of the first test image through the final model.
        let test = try XCTUnwrap(trainer).testSet
        let stats = try XCTUnwrap(trainer).statistics
        let size = model.inputShape.reduce(1, *)
        let probe = ModelProbe(model: model)
        let index = try probe.stepIndex(conv)
        let x = ModelProbe.input(pixels: Array(test.pixels[0..<size]), shape: model.inputShape, statistics: stats)
        let out = probe.forward(x, capture: [index]).outputs[index]!
        let maps = try featureMapPicture(values: out.values, shape: out.shape, layer: conv)
        XCTAssertEqual(try ImageDecoder().decode(XCTUnwrap(s.images["feature_maps/" + conv]?.last).png, file: "maps"), maps.image)

        // Histograms: count, sum, min, max and numpy.histogram(bins=30) buckets, computed here.
        for entry in model.store.parameterEntries {
            for (kind, base) in [("weights/", model.store.parameters.data), ("gradients/", model.store.gradients.data)] {
                let values = (0..<entry.count).map { Double(base[entry.offset + $0]) }
                let h = try XCTUnwrap(s.histograms[kind + entry.name]?.last, kind + entry.name)
                XCTAssertEqual(h.step, 2)
                XCTAssertEqual(h.fields[3], [Double(entry.count)])
                XCTAssertEqual(h.fields[1], [values.min()!])
                XCTAssertEqual(h.fields[2], [values.max()!])
                XCTAssertEqual(h.fields[4]![0], values.reduce(0, +), accuracy: 1e-9 * max(1, values.map(abs).reduce(0, +)))
                XCTAssertEqual(h.fields[5]![0], values.map { $0 * $0 }.reduce(0, +), accuracy: 1e-9 * max(1, values.map { $0 * $0 }.reduce(0, +)))
                let limits = try XCTUnwrap(h.fields[6]), counts = try XCTUnwrap(h.fields[7])
                XCTAssertEqual(limits.count, 30); XCTAssertEqual(counts.count, 30)
                XCTAssertEqual(counts.reduce(0, +), Double(entry.count))
                var lo = values.min()!, hi = values.max()!
                if lo == hi { lo -= 0.5; hi += 0.5 }
                XCTAssertEqual(limits.last, hi)
                var mine = [Double](repeating: 0, count: 30)
                for v in values { mine[min(29, Int((v - lo) / (hi - lo) * 30))] += 1 }
                XCTAssertEqual(counts, mine, kind + entry.name)
            }
        }
        // Gradients of the last step are not all zero.
        XCTAssertTrue(s.histograms.filter { $0.key.hasPrefix("gradients/") }.contains { $0.value.last!.fields[2]![0] > 0 })
    }
}
