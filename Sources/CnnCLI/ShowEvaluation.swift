import CnnCore
import CnnData
import CnnTraining

/// Geometry of the confusion-matrix picture: a grid of `cell` x `cell` squares, row t column p
/// at (left + p * cell, top + t * cell); row labels ("t name") left of it, column labels (the
/// predicted class index) above it.
struct ConfusionLayout: Equatable {
    var cell: Int, left: Int, top: Int, classes: Int
    var width: Int { left + classes * cell + 2 }
    var height: Int { top + classes * cell + 2 }

    init(classes: Int, names: [String], maxCount: Int) {
        self.classes = classes
        cell = max(12, ImageGrid.textWidth(String(maxCount)) + 4, ImageGrid.textWidth(String(classes - 1)) + 2)
        left = (names.indices.map { ImageGrid.textWidth(confusionRowLabel($0, names)) }.max() ?? 0) + 4
        top = 2 * ImageGrid.labelHeight
    }
}

/// "3 cat", or "3" when the class has no name but its index.
func confusionRowLabel(_ t: Int, _ names: [String]) -> String { names[t] == String(t) ? String(t) : "\(t) \(names[t])" }

/// The confusion matrix (rows: true class, columns: predicted) as a grey picture: each cell
/// filled with its count scaled to [0, max count] (the documented MapScale bytes), the count
/// written in it (black on light cells, white on dark) from its (2, 2) pixel; a cell's last
/// row and column are never written on.
func confusionPicture(matrix: [[Int]], names: [String], title: String) -> Picture {
    let classes = matrix.count
    let maxCount = matrix.flatMap { $0 }.max() ?? 0
    let g = ConfusionLayout(classes: classes, names: names, maxCount: maxCount)
    let scale = MapScale(min: 0, max: Float(maxCount))
    var pixels = [UInt8](repeating: 0, count: g.width * g.height)
    ImageGrid.drawText("rows true, columns predicted", into: &pixels, imageWidth: g.width, channels: 1, x: 1, y: 1, maxWidth: g.width)
    for p in 0..<classes {
        ImageGrid.drawText(String(p), into: &pixels, imageWidth: g.width, channels: 1,
                           x: g.left + p * g.cell + 1, y: g.top - ImageGrid.labelHeight + 1, maxWidth: g.cell)
    }
    for t in 0..<classes {
        ImageGrid.drawText(confusionRowLabel(t, names), into: &pixels, imageWidth: g.width, channels: 1,
                           x: 1, y: g.top + t * g.cell + 2, maxWidth: g.left - 2)
        for p in 0..<classes {
            let fill = scale.byte(Float(matrix[t][p]))
            let x0 = g.left + p * g.cell, y0 = g.top + t * g.cell
            for y in y0..<(y0 + g.cell) { for x in x0..<(x0 + g.cell) { pixels[y * g.width + x] = fill } }
            ImageGrid.drawText(String(matrix[t][p]), into: &pixels, imageWidth: g.width, channels: 1,
                               x: x0 + 2, y: y0 + 2, maxWidth: g.cell - 3, value: fill > 127 ? 0 : 255)
        }
    }
    let image = Image8(width: g.width, height: g.height, channels: 1, pixels: pixels)
    return Picture(image: image, text: [
        ("Title", title), ("Software", "cnn-dist"), ("scale", scale.description), ("scale-formula", MapScale.formula),
        ("layout", "cell \(g.cell) left \(g.left) top \(g.top): row t (true) column p (predicted) at (left + p * cell, top + t * cell)"),
        ("classes", names.joined(separator: "\n")),
        ("matrix", matrix.map { $0.map(String.init).joined(separator: " ") }.joined(separator: "\n")),
    ])
}

/// The first `limit` misclassified images of `dataset` (in dataset order) as a labelled grid,
/// each tile the image's bytes as stored (zoomed), labelled "true>predicted" (names cut to
/// the tile's width); the tEXt "misclassified" lists "index true predicted" in full.
func misclassifiedPicture(dataset: ImageDataset, logits: [Float], classes: Int, names: [String], limit: Int,
                          zoom: Int?) -> (picture: Picture?, wrong: Int) {
    let (c, h, w) = (dataset.channels, dataset.height, dataset.width)
    let size = c * h * w
    var tiles: [Image8] = [], labels: [String] = [], lines: [String] = []
    var wrong = 0
    for i in 0..<dataset.count {
        let row = logits[(i * classes)..<((i + 1) * classes)]
        var best = row.startIndex
        for k in row.indices where row[k] > row[best] { best = k }
        let predicted = best - i * classes, truth = Int(dataset.labels[i])
        guard predicted != truth else { continue }
        wrong += 1
        guard tiles.count < limit else { continue }
        tiles.append(Image8(chw: Array(dataset.pixels[(i * size)..<((i + 1) * size)]), channels: c, height: h, width: w))
        labels.append("\(names[truth])>\(names[predicted])")
        lines.append("\(i) \(names[truth]) \(names[predicted])")
    }
    guard !tiles.isEmpty else { return (nil, 0) }
    let image = ImageGrid.make(tiles: tiles, labels: labels, zoom: zoom ?? autoZoom(side: max(h, w), target: 64))
    return (Picture(image: image, text: [("Title", "misclassified test images: true>predicted"), ("Software", "cnn-dist"),
                                         ("misclassified", lines.joined(separator: "\n"))]), wrong)
}
