import CnnCLI
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
        XCTAssertEqual(polylines.map { $0.attributes["data-series"] ?? "" }, ["train", "test", "train", "test"])
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
        for label in ["Loss", "Accuracy", "epoch", "loss", "accuracy", "train", "test"] {
            XCTAssertTrue(collector.text.contains(label), "missing \(label)")
        }

        // --output elsewhere, and a run with one epoch still draws (one-point polylines and markers).
        try (lines[0] + "\n").write(toFile: dir + "/metrics.jsonl", atomically: true, encoding: .utf8)
        try runPlot([dir, "--output", dir + "/one.svg"])
        let one = try String(contentsOfFile: dir + "/one.svg", encoding: .utf8)
        XCTAssertEqual(one.components(separatedBy: "<polyline").count - 1, 4)
        XCTAssertEqual(one.components(separatedBy: "<circle").count - 1, 4)
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
}
