import CnnCore
import CnnData
import CnnTraining
import Foundation

// The learning-curve panels as a PNG: the same geometry, axes and series as the SVG
// (svgDocument / svgPanel), drawn on an RGB raster with the 3x5 bitmap font at twice its
// size. A data point (x, y) of a panel falls on the pixel
//     column = floor(left + (x - xlo) / (xhi - xlo) * (right - left) + 0.5)
//     row    = floor(bottom - (y - ylo) / (yhi - ylo) * (bottom - top) + 0.5)
// with the numbers the PNG's "axes" text gives for that panel; a 5 x 5 marker of the
// series colour is centred there, markers drawn after every line (later series on top).

/// An RGB raster with the few drawing operations the plots need.
struct Raster {
    let width: Int, height: Int
    var pixels: [UInt8]

    init(width: Int, height: Int) {
        self.width = width
        self.height = height
        pixels = [UInt8](repeating: 255, count: width * height * 3)
    }

    mutating func set(_ x: Int, _ y: Int, _ rgb: [UInt8]) {
        guard x >= 0, y >= 0, x < width, y < height else { return }
        let i = (y * width + x) * 3
        pixels[i] = rgb[0]; pixels[i + 1] = rgb[1]; pixels[i + 2] = rgb[2]
    }

    mutating func fill(_ x0: Int, _ y0: Int, _ x1: Int, _ y1: Int, _ rgb: [UInt8]) {
        for y in y0...y1 { for x in x0...x1 { set(x, y, rgb) } }
    }

    /// A Bresenham line, `thickness` pixels (extra rows below), dashed as `dash` (on, off) steps.
    mutating func line(_ x0: Int, _ y0: Int, _ x1: Int, _ y1: Int, _ rgb: [UInt8], thickness: Int = 1, dash: (Int, Int)? = nil) {
        var x = x0, y = y0
        let dx = abs(x1 - x0), dy = -abs(y1 - y0), sx = x0 < x1 ? 1 : -1, sy = y0 < y1 ? 1 : -1
        var err = dx + dy, step = 0
        while true {
            if dash.map({ step % ($0.0 + $0.1) < $0.0 }) ?? true {
                for t in 0..<thickness { set(x + (dx < -dy ? t : 0), y + (dx < -dy ? 0 : t), rgb) }
            }
            step += 1
            if x == x1 && y == y1 { break }
            let e2 = 2 * err
            if e2 >= dy { err += dy; x += sx }
            if e2 <= dx { err += dx; y += sy }
        }
    }

    /// Text in the bitmap font at `size` times its pixels; anchor "start", "middle" or "end".
    mutating func text(_ string: String, x: Int, y: Int, size: Int = 2, anchor: String = "start", rgb: [UInt8] = [0, 0, 0]) {
        let textWidth = ImageGrid.textWidth(string) * size
        let left = anchor == "middle" ? x - textWidth / 2 : anchor == "end" ? x - textWidth : x
        var glyphs = [UInt8](repeating: 0, count: max(1, ImageGrid.textWidth(string)) * 5)
        ImageGrid.drawText(string, into: &glyphs, imageWidth: max(1, ImageGrid.textWidth(string)), channels: 1, x: 0, y: 0,
                           maxWidth: Int.max / 2)
        let w = max(1, ImageGrid.textWidth(string))
        for gy in 0..<5 {
            for gx in 0..<w where glyphs[gy * w + gx] != 0 {
                fill(left + gx * size, y + gy * size, left + gx * size + size - 1, y + gy * size + size - 1, rgb)
            }
        }
    }
}

/// "#1f77b4" as RGB bytes (black if malformed).
func rgbColor(_ hex: String) -> [UInt8] {
    let digits = hex.hasPrefix("#") ? String(hex.dropFirst()) : hex
    guard digits.count == 6, let v = UInt32(digits, radix: 16) else { return [0, 0, 0] }
    return [UInt8(v >> 16), UInt8((v >> 8) & 0xFF), UInt8(v & 0xFF)]
}

/// The panels side by side under a title as a PNG picture (see the file comment).
func learningCurvesPicture(title: String, panels: [PlotPanel], panelWidth: Int = 480, panelHeight: Int = 380) -> Picture {
    let titleHeight = 40
    var r = Raster(width: panelWidth * max(1, panels.count), height: panelHeight + titleHeight)
    r.text(title, x: r.width / 2, y: 12, size: 3, anchor: "middle")
    var axes: [String] = [], seriesLines: [String] = []
    var markers: [(x: Int, y: Int, rgb: [UInt8])] = []
    for (i, panel) in panels.enumerated() {
        let originX = i * panelWidth, originY = titleHeight
        let left = originX + 70, right = originX + panelWidth - 20, top = originY + 30, bottom = originY + panelHeight - 50
        let finite = panel.series.flatMap(\.points).filter { $0.x.isFinite && $0.y.isFinite }
        let xAxis = niceAxis(min: finite.map(\.x).min() ?? 0, max: finite.map(\.x).max() ?? 1, integer: true)
        let yAxis = niceAxis(min: finite.map(\.y).min() ?? 0, max: finite.map(\.y).max() ?? 1, integer: false)
        func px(_ x: Double) -> Int {
            Int((Double(left) + (x - xAxis.lower) / (xAxis.upper - xAxis.lower) * Double(right - left) + 0.5).rounded(.down))
        }
        func py(_ y: Double) -> Int {
            Int((Double(bottom) - (y - yAxis.lower) / (yAxis.upper - yAxis.lower) * Double(bottom - top) + 0.5).rounded(.down))
        }
        axes.append("\(i) \(panel.title): x pixels \(left) \(right) data \(xAxis.lower) \(xAxis.upper); "
                    + "y pixels \(bottom) \(top) data \(yAxis.lower) \(yAxis.upper)")
        r.text(panel.title, x: (left + right) / 2, y: originY + 8, size: 2, anchor: "middle")
        let grid: [UInt8] = [0xE5, 0xE5, 0xE5], black: [UInt8] = [0, 0, 0]
        for t in xAxis.ticks {
            let x = px(t)
            r.line(x, top, x, bottom, grid)
            r.line(x, bottom, x, bottom + 5, black)
            r.text(tickLabel(t, step: xAxis.step), x: x, y: bottom + 9, size: 2, anchor: "middle")
        }
        for t in yAxis.ticks {
            let y = py(t)
            r.line(left, y, right, y, grid)
            r.line(left - 5, y, left, y, black)
            r.text(tickLabel(t, step: yAxis.step), x: left - 8, y: y - 5, size: 2, anchor: "end")
        }
        r.line(left, top, right, top, black); r.line(left, bottom, right, bottom, black)
        r.line(left, top, left, bottom, black); r.line(right, top, right, bottom, black)
        r.text(panel.xLabel, x: (left + right) / 2, y: bottom + 30, size: 2, anchor: "middle")
        r.text(panel.yLabel, x: originX + 4, y: originY + 8, size: 2)
        for s in panel.series {
            let rgb = rgbColor(s.color)
            seriesLines.append("\(i) \(s.color) \(s.name)")
            let pts = s.points.filter { $0.x.isFinite && $0.y.isFinite }.map { (px($0.x), py($0.y)) }
            for (a, b) in zip(pts, pts.dropFirst()) { r.line(a.0, a.1, b.0, b.1, rgb, thickness: 2, dash: s.dashed ? (6, 3) : nil) }
            markers += pts.map { ($0.0, $0.1, rgb) }
        }
        // Legend: top-right corner of the plot area.
        let legendWidth = Int(legendBoxWidth(panel)) + 20, rowHeight = 18
        let lx = right - legendWidth - 8, ly = top + 8
        r.fill(lx, ly, lx + legendWidth, ly + rowHeight * panel.series.count + 8, [255, 255, 255])
        r.line(lx, ly, lx + legendWidth, ly, [0x99, 0x99, 0x99])
        r.line(lx, ly + rowHeight * panel.series.count + 8, lx + legendWidth, ly + rowHeight * panel.series.count + 8, [0x99, 0x99, 0x99])
        r.line(lx, ly, lx, ly + rowHeight * panel.series.count + 8, [0x99, 0x99, 0x99])
        r.line(lx + legendWidth, ly, lx + legendWidth, ly + rowHeight * panel.series.count + 8, [0x99, 0x99, 0x99])
        for (k, s) in panel.series.enumerated() {
            let y = ly + 4 + rowHeight * k + rowHeight / 2
            r.line(lx + 6, y, lx + 32, y, rgbColor(s.color), thickness: 2, dash: s.dashed ? (6, 3) : nil)
            r.text(s.name, x: lx + 38, y: y - 5, size: 2)
        }
    }
    for m in markers { r.fill(m.x - 2, m.y - 2, m.x + 2, m.y + 2, m.rgb) }
    let image = Image8(width: r.width, height: r.height, channels: 3, pixels: r.pixels)
    return Picture(image: image, text: [("Title", title), ("Software", "cnn-dist"), ("axes", axes.joined(separator: "\n")),
                                        ("series", seriesLines.joined(separator: "\n")),
                                        ("point-formula", "column = floor(left + (x - xlo) / (xhi - xlo) * (right - left) + 0.5), "
                                            + "row = floor(bottom - (y - ylo) / (yhi - ylo) * (bottom - top) + 0.5); a 5x5 marker centred there")])
}
