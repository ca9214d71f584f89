import CnnCLI
import CnnData
import Foundation
#if canImport(FoundationXML)
import FoundationXML
#endif
import XCTest

/// Runs `cnn-dist plot` on metrics.jsonl files written here and parses the SVG it writes.
final class PlotCommandTests: XCTestCase {
    private func temporaryDirectory() throws -> String {
        let dir = NSTemporaryDirectory() + "cnn-dist-plot-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        addTeardownBlock { try? FileManager.default.removeItem(atPath: dir) }
        return dir
    }

    /// One metrics.jsonl line as the trainer writes it (sorted keys).
    private func metricsLine(epoch: Int, trainLoss: Double, testLoss: Double, trainAccuracy: Double, testAccuracy: Double) -> String {
        "{\"allreduce_wait_fraction\":0.01,\"data_wait_fraction\":0.002,\"epoch\":\(epoch),\"images_per_second\":1200,"
            + "\"lr\":0.05,\"seconds\":50,\"test_accuracy\":\(testAccuracy),\"test_loss\":\(testLoss),"
            + "\"train_accuracy\":\(trainAccuracy),\"train_loss\":\(trainLoss)}"
    }

    private func runPlot(_ arguments: [String]) throws {
        var command = try CnnDist.parseAsRoot(["plot"] + arguments)
        try command.run()
    }

    /// The SVG's elements: name and attributes, in document order.
    private final class Collector: NSObject, XMLParserDelegate {
        var elements: [(name: String, attributes: [String: String])] = []
        var text = ""
        func parser(_ parser: XMLParser, didStartElement name: String, namespaceURI: String?, qualifiedName: String?,
                    attributes: [String: String] = [:]) {
            elements.append((name, attributes))
        }
        func parser(_ parser: XMLParser, foundCharacters string: String) { text += string }
    }

    func testPlotWritesTwoPanelsWithTrainAndTestPolylines() throws {
        let dir = try temporaryDirectory()
        let lines = (1...5).map { e in
            metricsLine(epoch: e, trainLoss: 1.0 / Double(e), testLoss: 1.1 / Double(e),
                        trainAccuracy: 0.7 + 0.04 * Double(e), testAccuracy: 0.68 + 0.04 * Double(e))
        }
        // Fields the plot does not use, present or not, do not matter (older and newer runs plot alike).
        let withExtraField = lines.enumerated().map { $0 == 4 ? $1.replacingOccurrences(of: "{", with: "{\"forward_fraction\":0.4,") : $1 }
        try (withExtraField.joined(separator: "\n") + "\n").write(toFile: dir + "/metrics.jsonl", atomically: true, encoding: .utf8)
        try "{\"model\": \"lenet5\", \"dataset\": \"fashion-mnist\", \"epochs\": 5}"
            .write(toFile: dir + "/config.json", atomically: true, encoding: .utf8)
        try runPlot([dir])

        let data = try XCTUnwrap(FileManager.default.contents(atPath: dir + "/curves.svg"))
        XCTAssertGreaterThan(data.count, 1000)
        let parser = XMLParser(data: data)
        let collector = Collector()
        parser.delegate = collector
        XCTAssertTrue(parser.parse(), "well-formed XML: \(parser.parserError.map { "\($0)" } ?? "")")
        XCTAssertEqual(collector.elements.first?.name, "svg")
        let polylines = collector.elements.filter { $0.name == "polyline" }
        // Loss, accuracy, and the learning-rate panel (the lines have "lr").
        XCTAssertEqual(polylines.map { $0.attributes["data-series"] ?? "" }, ["train", "test", "train", "test", "lr"])
        for p in polylines {
            let points = (p.attributes["points"] ?? "").split(separator: " ")
            XCTAssertEqual(points.count, 5)
            for point in points {
                let xy = point.split(separator: ",").compactMap { Double($0) }
                XCTAssertEqual(xy.count, 2, "\(point)")
                XCTAssertTrue(xy.allSatisfy(\.isFinite))
            }
        }
        // Loss falls, so train loss's y coordinate (SVG y grows downward) rises epoch by epoch.
        let lossY = (polylines[0].attributes["points"] ?? "").split(separator: " ").map { Double($0.split(separator: ",")[1])! }
        XCTAssertEqual(lossY, lossY.sorted())
        XCTAssertTrue(collector.text.contains("lenet5 on fashion-mnist"), collector.text)
        for label in ["Loss", "Accuracy", "Learning rate", "epoch", "loss", "accuracy", "train", "test", "lr"] {
            XCTAssertTrue(collector.text.contains(label), "missing \(label)")
        }

        // --output elsewhere, and a run with one epoch still draws (one-point polylines and markers).
        try (lines[0] + "\n").write(toFile: dir + "/metrics.jsonl", atomically: true, encoding: .utf8)
        try runPlot([dir, "--output", dir + "/one.svg"])
        let one = try String(contentsOfFile: dir + "/one.svg", encoding: .utf8)
        XCTAssertEqual(one.components(separatedBy: "<polyline").count - 1, 5)
        XCTAssertEqual(one.components(separatedBy: "<circle").count - 1, 5)
        XCTAssertFalse(one.contains("nan") || one.contains("inf"), "no non-finite coordinates")
    }

    func testPlotErrorsNameTheFileAndLine() throws {
        let dir = try temporaryDirectory()
        let path = dir + "/metrics.jsonl"
        func message(_ body: () throws -> Void) -> String {
            do { try body() } catch { return "\(error)" }
            XCTFail("expected an error")
            return ""
        }
        let missing = message { try runPlot([dir]) }
        XCTAssertTrue(missing.contains(path) && missing.contains("no such file"), missing)

        try "".write(toFile: path, atomically: true, encoding: .utf8)
        let empty = message { try runPlot([dir]) }
        XCTAssertTrue(empty.contains(path) && empty.contains("empty"), empty)

        let good = metricsLine(epoch: 1, trainLoss: 1, testLoss: 1, trainAccuracy: 0.5, testAccuracy: 0.5)
        try (good + "\n{\"epoch\": 2, \"train_lo").write(toFile: path, atomically: true, encoding: .utf8)
        let corrupt = message { try runPlot([dir]) }
        XCTAssertTrue(corrupt.contains(path) && corrupt.contains("line 2"), corrupt)

        try (good + "\n\n{\"epoch\": 3}\n").write(toFile: path, atomically: true, encoding: .utf8)
        let incomplete = message { try runPlot([dir]) }
        XCTAssertTrue(incomplete.contains("line 3") && incomplete.contains("missing field"), incomplete)
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/curves.svg"))
    }

    /// Lines without "lr" (older runs) draw the two panels only, as before.
    func testNoLearningRatePanelWithoutLR() throws {
        let dir = try temporaryDirectory()
        let line = metricsLine(epoch: 1, trainLoss: 1, testLoss: 1, trainAccuracy: 0.5, testAccuracy: 0.5)
            .replacingOccurrences(of: "\"lr\":0.05,", with: "")
        try (line + "\n").write(toFile: dir + "/metrics.jsonl", atomically: true, encoding: .utf8)
        try runPlot([dir])
        let svg = try String(contentsOfFile: dir + "/curves.svg", encoding: .utf8)
        XCTAssertEqual(svg.components(separatedBy: "<g class=\"panel\">").count - 1, 2)
        XCTAssertFalse(svg.contains("Learning rate"))
    }

    /// Two runs overlaid, as SVG and as PNG. In the PNG every data point's pixel (from the
    /// "axes" text and the documented formula) has the colour of the last series drawn there.
    func testOverlayOfTwoRunsAsSVGAndPNG() throws {
        let base = try temporaryDirectory()
        var runs: [[(Double, Double, Double, Double, Double)]] = []
        for (r, name) in ["runA", "runB"].enumerated() {
            let dir = base + "/" + name
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
            var rows: [(Double, Double, Double, Double, Double)] = []
            for e in 1...(4 + r) {
                let de = Double(e), dr = Double(r)
                let trainLoss: Double = 1.0 / (de + dr), testLoss: Double = 1.2 / de
                let trainAccuracy: Double = 0.5 + 0.05 * de, testAccuracy: Double = 0.45 + 0.06 * (de + dr)
                let lr: Double = 0.1 * pow(0.5, de)
                rows.append((trainLoss, testLoss, trainAccuracy, testAccuracy, lr))
            }
            runs.append(rows)
            let text = rows.enumerated().map { e, v in
                metricsLine(epoch: e + 1, trainLoss: v.0, testLoss: v.1, trainAccuracy: v.2, testAccuracy: v.3)
                    .replacingOccurrences(of: "\"lr\":0.05", with: "\"lr\":\(v.4)")
            }.joined(separator: "\n")
            try (text + "\n").write(toFile: dir + "/metrics.jsonl", atomically: true, encoding: .utf8)
        }
        XCTAssertThrowsError(try runPlot([base + "/runA", base + "/runB"])) { XCTAssertTrue("\($0)".contains("--output"), "\($0)") }
        try runPlot([base + "/runA", base + "/runB", "--output", base + "/both.svg"])
        let svg = try String(contentsOfFile: base + "/both.svg", encoding: .utf8)
        for name in ["runA train", "runA test", "runB train", "runB test", "data-series=\"runA\"", "data-series=\"runB\""] {
            XCTAssertTrue(svg.contains(name), name)
        }
        XCTAssertEqual(svg.components(separatedBy: "<polyline").count - 1, 10)

        try runPlot([base + "/runA", base + "/runB", "--output", base + "/both.png"])
        let bytes = try FileBytes.read(base + "/both.png")
        let image = try ImageDecoder().decode(bytes, file: "both.png")
        let text = Dictionary(try ImageDecoder.pngText(bytes, file: "both.png").map { ($0.key, $0.value) }, uniquingKeysWith: { a, _ in a })
        XCTAssertEqual([image.width, image.height, image.channels], [3 * 480, 420, 3])
        let axes = try XCTUnwrap(text["axes"]).split(separator: "\n").map { line -> [Double] in
            line.split(separator: " ").compactMap { Double($0.trimmingCharacters(in: CharacterSet(charactersIn: ";"))) }
        }
        XCTAssertEqual(axes.count, 3)
        let colors: [[UInt8]] = [[0x1f, 0x77, 0xb4], [0xd6, 0x27, 0x28]]
        for panel in 0..<3 {
            // numbers: index, x left right xlo xhi, y bottom top ylo yhi
            let a = axes[panel]
            let (left, right, xlo, xhi, bottom, top, ylo, yhi) = (a[1], a[2], a[3], a[4], a[5], a[6], a[7], a[8])
            var painted: [Int: [UInt8]] = [:]
            for (r, rows) in runs.enumerated() {
                let values: [[Double]]
                switch panel {
                case 0: values = [rows.map { $0.0 }, rows.map { $0.1 }]
                case 1: values = [rows.map { $0.2 }, rows.map { $0.3 }]
                default: values = [rows.map { $0.4 }]
                }
                for series in values {
                    for (e, y) in series.enumerated() {
                        let cx = Int((left + (Double(e + 1) - xlo) / (xhi - xlo) * (right - left) + 0.5).rounded(.down))
                        let cy = Int((bottom - (y - ylo) / (yhi - ylo) * (bottom - top) + 0.5).rounded(.down))
                        for dy in -2...2 { for dx in -2...2 { painted[(cy + dy) * image.width + cx + dx] = colors[r] } }
                    }
                }
            }
            for (index, rgb) in painted {
                XCTAssertEqual(Array(image.pixels[(index * 3)..<(index * 3 + 3)]), rgb, "panel \(panel) pixel \(index % image.width),\(index / image.width)")
            }
        }
        XCTAssertEqual(Array(image.pixels[0..<3]), [255, 255, 255])
    }
}
