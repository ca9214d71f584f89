import CnnCore
import CnnTraining
import Foundation

// Learning curves as a self-contained SVG: two panels (loss, accuracy) of
// train and test curves against epoch, drawn from a run directory's
// metrics.jsonl. No plotting library; the SVG is plain text a browser,
// rsvg-convert or an editor can open.

/// The fields of a metrics.jsonl line the curves need. Other fields
/// (timings, fractions; more are added over time) are ignored, so runs
/// written by older and newer versions plot alike.
public struct CurvePoint: Decodable, Equatable {
    public var epoch: Int
    public var trainLoss: Double
    public var trainAccuracy: Double
    public var testLoss: Double
    public var testAccuracy: Double
    /// The learning rate of the epoch, when the line has it.
    public var lr: Double?

    /// The file format's keys (snake_case, as PyTorch users and older runs write them).
    enum CodingKeys: String, CodingKey, CaseIterable {
        case epoch, trainLoss = "train_loss", trainAccuracy = "train_accuracy", testLoss = "test_loss"
        case testAccuracy = "test_accuracy", lr
    }
}

/// Reads a metrics.jsonl file: one JSON object per epoch, per line.
///
/// Throws `CnnError.io` if the file is missing or unreadable and
/// `CnnError.invalidData` naming the file and the 1-based line if it is
/// empty or a line is not a complete metrics object. Blank lines are skipped.
public func readMetricsLines(path: String) throws -> [CurvePoint] {
    guard FileManager.default.fileExists(atPath: path) else {
        throw CnnError.io(file: path, reason: "no such file (is this a cnn-dist run directory?)")
    }
    guard let data = FileManager.default.contents(atPath: path) else {
        throw CnnError.io(file: path, reason: "cannot read the file")
    }
    let decoder = EpochMetrics.decoder
    var metrics: [CurvePoint] = []
    for (index, line) in data.split(separator: 0x0A, omittingEmptySubsequences: false).enumerated() {
        let text = line.last == 0x0D ? line.dropLast() : line
        if text.allSatisfy({ $0 == 0x20 || $0 == 0x09 }) { continue }
        do {
            metrics.append(try decoder.decode(CurvePoint.self, from: Data(text)))
        } catch let DecodingError.keyNotFound(key, _) {
            throw CnnError.invalidData(file: path, reason: "line \(index + 1): missing field '\(key.stringValue)'")
        } catch let DecodingError.typeMismatch(_, context) {
            let field = context.codingPath.map(\.stringValue).joined(separator: ".")
            throw CnnError.invalidData(file: path, reason: "line \(index + 1): field '\(field)' has the wrong type")
        } catch let DecodingError.valueNotFound(_, context) {
            let field = context.codingPath.map(\.stringValue).joined(separator: ".")
            throw CnnError.invalidData(file: path, reason: "line \(index + 1): field '\(field)' is null")
        } catch {
            let shown = String(decoding: text.prefix(60), as: UTF8.self)
            throw CnnError.invalidData(file: path, reason:
                "line \(index + 1): not a JSON metrics object: \(shown)\(text.count > 60 ? "..." : "")")
        }
    }
    guard !metrics.isEmpty else {
        throw CnnError.invalidData(file: path, reason: "no epochs recorded yet (the file is empty)")
    }
    return metrics
}

/// One curve: a name for the legend, a colour, and (x, y) points.
public struct PlotSeries {
    public var name: String
    public var color: String
    public var points: [(x: Double, y: Double)]
    public var dashed: Bool

    public init(name: String, color: String, points: [(x: Double, y: Double)], dashed: Bool = false) {
        self.name = name
        self.color = color
        self.points = points
        self.dashed = dashed
    }
}

/// One panel: a title, axis labels and curves.
public struct PlotPanel {
    public var title: String
    public var xLabel: String
    public var yLabel: String
    public var series: [PlotSeries]

    public init(title: String, xLabel: String, yLabel: String, series: [PlotSeries]) {
        self.title = title
        self.xLabel = xLabel
        self.yLabel = yLabel
        self.series = series
    }
}

/// The loss and accuracy panels of a run's metrics, and a learning-rate panel when the
/// lines have "lr", titled `title`, as an SVG document.
public func learningCurvesSVG(_ metrics: [CurvePoint], title: String) -> String {
    svgDocument(title: title, panels: learningCurvePanels([(name: "", metrics: metrics)]))
}

/// Colours of overlaid runs, in order (matplotlib's tab10).
let runColors = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]

/// Loss, accuracy and (when any line has "lr") learning-rate panels. One run (`name` unused):
/// train blue, test red dashed, lr green. Several runs: a colour per run, series "NAME train"
/// (solid) and "NAME test" (dashed), and "NAME" in the learning-rate panel.
public func learningCurvePanels(_ runs: [(name: String, metrics: [CurvePoint])]) -> [PlotPanel] {
    func points(_ metrics: [CurvePoint], _ value: (CurvePoint) -> Double) -> [(x: Double, y: Double)] {
        metrics.map { (x: Double($0.epoch), y: value($0)) }
    }
    var loss: [PlotSeries] = [], accuracy: [PlotSeries] = [], rates: [PlotSeries] = []
    let single = runs.count == 1
    for (i, run) in runs.enumerated() {
        let train = single ? "#1f77b4" : runColors[i % runColors.count], test = single ? "#d62728" : train
        let prefix = single ? "" : run.name + " "
        loss += [PlotSeries(name: prefix + "train", color: train, points: points(run.metrics) { $0.trainLoss }),
                 PlotSeries(name: prefix + "test", color: test, points: points(run.metrics) { $0.testLoss }, dashed: true)]
        accuracy += [PlotSeries(name: prefix + "train", color: train, points: points(run.metrics) { $0.trainAccuracy }),
                     PlotSeries(name: prefix + "test", color: test, points: points(run.metrics) { $0.testAccuracy }, dashed: true)]
        if run.metrics.contains(where: { $0.lr != nil }) {
            rates.append(PlotSeries(name: single ? "lr" : run.name, color: single ? "#2ca02c" : train,
                                    points: points(run.metrics) { $0.lr ?? .nan }))
        }
    }
    var panels = [PlotPanel(title: "Loss", xLabel: "epoch", yLabel: "loss", series: loss),
                  PlotPanel(title: "Accuracy", xLabel: "epoch", yLabel: "accuracy", series: accuracy)]
    if !rates.isEmpty { panels.append(PlotPanel(title: "Learning rate", xLabel: "epoch", yLabel: "lr", series: rates)) }
    return panels
}

/// Panels side by side under a title, each with axes, ticks, grid, labels and a legend.
public func svgDocument(title: String, panels: [PlotPanel], panelWidth: Double = 480, panelHeight: Double = 380) -> String {
    let titleHeight = 40.0
    let width = panelWidth * Double(max(1, panels.count)), height = panelHeight + titleHeight
    var svg = """
    <?xml version="1.0" encoding="UTF-8"?>
    <svg xmlns="http://www.w3.org/2000/svg" width="\(fmt(width))" height="\(fmt(height))" \
    viewBox="0 0 \(fmt(width)) \(fmt(height))" font-family="DejaVu Sans, Helvetica, Arial, sans-serif">
    <rect width="100%" height="100%" fill="white"/>
    <text x="\(fmt(width / 2))" y="26" text-anchor="middle" font-size="17" font-weight="bold">\(xmlEscape(title))</text>

    """
    for (i, panel) in panels.enumerated() {
        svg += svgPanel(panel, originX: Double(i) * panelWidth, originY: titleHeight, width: panelWidth, height: panelHeight)
    }
    svg += "</svg>\n"
    return svg
}

/// One panel's group: frame, grid, ticks, tick labels, axis labels, curves, legend.
func svgPanel(_ panel: PlotPanel, originX: Double, originY: Double, width: Double, height: Double) -> String {
    // Plot area inside the panel: room on the left for tick labels and the y label, below for the x label.
    let left = originX + 70, right = originX + width - 20
    let top = originY + 30, bottom = originY + height - 50
    let finite = panel.series.flatMap(\.points).filter { $0.x.isFinite && $0.y.isFinite }
    let xs = finite.map(\.x), ys = finite.map(\.y)
    let xAxis = niceAxis(min: xs.min() ?? 0, max: xs.max() ?? 1, integer: true)
    let yAxis = niceAxis(min: ys.min() ?? 0, max: ys.max() ?? 1, integer: false)
    func px(_ x: Double) -> Double { left + (x - xAxis.lower) / (xAxis.upper - xAxis.lower) * (right - left) }
    func py(_ y: Double) -> Double { bottom - (y - yAxis.lower) / (yAxis.upper - yAxis.lower) * (bottom - top) }

    var out = "<g class=\"panel\">\n"
    out += "<text x=\"\(fmt((left + right) / 2))\" y=\"\(fmt(originY + 18))\" text-anchor=\"middle\" font-size=\"15\">"
        + "\(xmlEscape(panel.title))</text>\n"
    // Grid and ticks: a grey grid line, a black tick and a label per tick.
    func line(_ x1: Double, _ y1: Double, _ x2: Double, _ y2: Double, _ stroke: String) -> String {
        "<line x1=\"\(fmt(x1))\" y1=\"\(fmt(y1))\" x2=\"\(fmt(x2))\" y2=\"\(fmt(y2))\" stroke=\"\(stroke)\"/>\n"
    }
    func label(_ x: Double, _ y: Double, _ anchor: String, _ text: String) -> String {
        "<text x=\"\(fmt(x))\" y=\"\(fmt(y))\" text-anchor=\"\(anchor)\" font-size=\"12\">\(text)</text>\n"
    }
    for (t, x) in xAxis.ticks.map({ ($0, px($0)) }) {
        out += line(x, top, x, bottom, "#e5e5e5") + line(x, bottom, x, bottom + 5, "black")
            + label(x, bottom + 19, "middle", tickLabel(t, step: xAxis.step))
    }
    for (t, y) in yAxis.ticks.map({ ($0, py($0)) }) {
        out += line(left, y, right, y, "#e5e5e5") + line(left - 5, y, left, y, "black")
            + label(left - 8, y + 4, "end", tickLabel(t, step: yAxis.step))
    }
    out += "<rect x=\"\(fmt(left))\" y=\"\(fmt(top))\" width=\"\(fmt(right - left))\" height=\"\(fmt(bottom - top))\" "
        + "fill=\"none\" stroke=\"black\"/>\n"
    // Axis labels.
    out += "<text x=\"\(fmt((left + right) / 2))\" y=\"\(fmt(bottom + 40))\" text-anchor=\"middle\" font-size=\"13\">"
        + "\(xmlEscape(panel.xLabel))</text>\n"
    let yLabelX = originX + 18, yLabelY = (top + bottom) / 2
    out += "<text x=\"\(fmt(yLabelX))\" y=\"\(fmt(yLabelY))\" text-anchor=\"middle\" font-size=\"13\" "
        + "transform=\"rotate(-90 \(fmt(yLabelX)) \(fmt(yLabelY)))\">\(xmlEscape(panel.yLabel))</text>\n"
    // Curves: a polyline per run of finite points, and a marker at each point
    // (so a single epoch still shows).
    for s in panel.series {
        let dash = s.dashed ? " stroke-dasharray=\"6 3\"" : ""
        var runs: [[(x: Double, y: Double)]] = [[]]
        for p in s.points {
            if p.x.isFinite && p.y.isFinite { runs[runs.count - 1].append(p) } else if !runs[runs.count - 1].isEmpty { runs.append([]) }
        }
        for run in runs where !run.isEmpty {
            let coordinates = run.map { "\(fmt(px($0.x))),\(fmt(py($0.y)))" }.joined(separator: " ")
            out += "<polyline class=\"series\" data-series=\"\(xmlEscape(s.name))\" points=\"\(coordinates)\" fill=\"none\" "
                + "stroke=\"\(s.color)\" stroke-width=\"2\"\(dash)/>\n"
        }
        let radius = s.points.count > 60 ? 1.5 : 3
        for p in s.points where p.x.isFinite && p.y.isFinite {
            out += "<circle cx=\"\(fmt(px(p.x)))\" cy=\"\(fmt(py(p.y)))\" r=\"\(fmt(radius))\" fill=\"\(s.color)\"/>\n"
        }
    }
    // Legend in the corner of the plot area the curves cross least, on a white box.
    let rowHeight = 18.0, legendWidth = legendBoxWidth(panel), legendHeight = rowHeight * Double(panel.series.count) + 8
    let pixelSeries = panel.series.map { $0.points.filter { $0.x.isFinite && $0.y.isFinite }.map { (x: px($0.x), y: py($0.y)) } }
    let corners = [(right - legendWidth - 8, top + 8), (right - legendWidth - 8, bottom - legendHeight - 8),
                   (left + 8, top + 8), (left + 8, bottom - legendHeight - 8)]
    let (legendX, legendY) = corners.min { a, b in
        legendOverlap(pixelSeries, x: a.0, y: a.1, width: legendWidth, height: legendHeight)
            < legendOverlap(pixelSeries, x: b.0, y: b.1, width: legendWidth, height: legendHeight)
    }!
    out += "<rect x=\"\(fmt(legendX))\" y=\"\(fmt(legendY))\" width=\"\(fmt(legendWidth))\" "
        + "height=\"\(fmt(legendHeight))\" fill=\"white\" fill-opacity=\"0.85\" stroke=\"#999999\"/>\n"
    for (i, s) in panel.series.enumerated() {
        let y = legendY + 4 + rowHeight * (Double(i) + 0.5)
        let dash = s.dashed ? " stroke-dasharray=\"6 3\"" : ""
        out += "<line x1=\"\(fmt(legendX + 6))\" y1=\"\(fmt(y))\" x2=\"\(fmt(legendX + 32))\" y2=\"\(fmt(y))\" "
            + "stroke=\"\(s.color)\" stroke-width=\"2\"\(dash)/>\n"
        out += "<text x=\"\(fmt(legendX + 38))\" y=\"\(fmt(y + 4))\" font-size=\"12\">\(xmlEscape(s.name))</text>\n"
    }
    out += "</g>\n"
    return out
}

/// The legend's width: room for the longest series name (about 7 pixels a character), at least 80.
func legendBoxWidth(_ panel: PlotPanel) -> Double {
    max(80, 44 + 7 * Double(panel.series.map(\.name.count).max() ?? 0))
}

/// How much of the curves (sampled along each segment, in pixels) falls inside a legend box.
func legendOverlap(_ series: [[(x: Double, y: Double)]], x: Double, y: Double, width: Double, height: Double) -> Int {
    var hits = 0
    func inside(_ px: Double, _ py: Double) -> Bool { px >= x - 4 && px <= x + width + 4 && py >= y - 4 && py <= y + height + 4 }
    for points in series {
        if points.count == 1, inside(points[0].x, points[0].y) { hits += 1 }
        for (a, b) in zip(points, points.dropFirst()) {
            for k in 0...20 {
                let t = Double(k) / 20
                if inside(a.x + (b.x - a.x) * t, a.y + (b.y - a.y) * t) { hits += 1 }
            }
        }
    }
    return hits
}

/// An axis range widened to round numbers, and ticks on it at a 1-2-5 step (about 5 of them).
func niceAxis(min lo: Double, max hi: Double, integer: Bool) -> (lower: Double, upper: Double, step: Double, ticks: [Double]) {
    var lo = lo, hi = hi
    if hi - lo < 1e-12 {
        // A flat series (or one point): give it some room.
        let pad = integer ? 1 : Swift.max(abs(lo) * 0.05, 1e-3)
        lo -= pad
        hi += pad
    }
    let rough = (hi - lo) / 5
    let magnitude = pow(10, floor(log10(rough)))
    var step = magnitude * ([1.0, 2, 5, 10].first { $0 * magnitude >= rough } ?? 10)
    if integer { step = Swift.max(1, step.rounded()) }
    let lower = floor(lo / step) * step, upper = ceil(hi / step) * step
    var ticks: [Double] = []
    var t = lower
    while t <= upper + step * 1e-9 {
        ticks.append(abs(t) < step * 1e-9 ? 0 : t)
        t += step
    }
    return (lower, upper, step, ticks)
}

/// A tick value with as many decimals as the step needs.
func tickLabel(_ value: Double, step: Double) -> String {
    let decimals = step >= 1 ? 0 : Swift.min(6, Int(ceil(-log10(step) - 1e-9)))
    return String(format: "%.\(decimals)f", value)
}

/// Coordinates with at most two decimals, no trailing zeros.
func fmt(_ value: Double) -> String {
    var s = String(format: "%.2f", value)
    while s.hasSuffix("0") { s.removeLast() }
    if s.hasSuffix(".") { s.removeLast() }
    return s == "-0" ? "0" : s
}

func xmlEscape(_ text: String) -> String {
    text.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;")
        .replacingOccurrences(of: ">", with: "&gt;").replacingOccurrences(of: "\"", with: "&quot;")
}
