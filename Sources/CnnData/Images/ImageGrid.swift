// Pictures of float maps (kernel outputs, filters, feature maps, saliency): the one place
// where floats become bytes and tiles become a grid, for `cnn-dist show`, `eval`'s
// pictures and TensorBoard's image summaries.
//
// Scaling (torchvision's make_grid(normalize=True) followed by save_image): a map with
// minimum `min` and maximum `max` (over the finite values of the whole grid, or of each
// tile with scale-each) becomes
//     byte = floor((v - min) / (max - min) * 255 + 0.5), clamped to 0...255,
// computed in Double from the Float values. A constant map (max == min) and NaN give 0.
// torchvision divides by (max - min + 1e-5); we divide by (max - min) exactly, so the
// maximum maps to 255 rather than to 254.99... rounded.
//
// Layout (make_grid's, plus an optional label strip above each tile): tiles are placed
// row by row, `columns` per row, each in a cell of the largest tile's size times `zoom`
// (nearest-neighbour: every value is repeated zoom x zoom times), with `padding` pixels of
// `padValue` around and between cells. With labels, each cell has a strip of
// `ImageGrid.labelHeight` pixels above it holding its label in a 3x5 bitmap font (white),
// cut to the cell's width. Tile i sits at
//     x = padding + (i % columns) * (cellWidth + padding)
//     y = padding + (i / columns) * (labelHeight + cellHeight + padding) + labelHeight.
import CnnCore

/// The linear map from a float range onto 0...255 (see the file comment).
public struct MapScale: Equatable, Sendable, CustomStringConvertible {
    public var min: Float
    public var max: Float

    public init(min: Float, max: Float) {
        self.min = min
        self.max = max
    }

    /// The range of the finite values in `values` (0...0 when there are none).
    public static func of<S: Sequence>(_ values: S) -> MapScale where S.Element == Float {
        var lo = Float.infinity, hi = -Float.infinity
        for v in values where v.isFinite {
            if v < lo { lo = v }
            if v > hi { hi = v }
        }
        return lo <= hi ? MapScale(min: lo, max: hi) : MapScale(min: 0, max: 0)
    }

    /// The byte `v` maps to.
    @inline(__always)
    public func byte(_ v: Float) -> UInt8 {
        guard max > min, !v.isNaN else { return 0 }
        let t = (Double(v) - Double(min)) / (Double(max) - Double(min)) * 255 + 0.5
        return UInt8(Swift.max(0, Swift.min(255, t.rounded(.down))))
    }

    /// "min -0.25 max 1.5" with enough digits to give the Floats back exactly.
    public var description: String { "min \(min) max \(max)" }

    /// The formula, for PNG text metadata.
    public static let formula = "byte = floor((v - min) / (max - min) * 255 + 0.5) clamped to 0..255; 0 when max == min"
}

/// Tiles, a grid of tiles, and its labels.
public enum ImageGrid {
    /// Height of the label strip above each tile when labels are drawn.
    public static let labelHeight = 7
    /// make_grid's defaults.
    public static let defaultColumns = 8
    public static let defaultPadding = 2

    /// A grey tile of `height` x `width` values (row-major) scaled by `scale`.
    public static func greyTile(_ values: ArraySlice<Float>, height: Int, width: Int, scale: MapScale) -> Image8 {
        precondition(values.count == height * width, "greyTile: \(values.count) values for \(height)x\(width)")
        return Image8(width: width, height: height, channels: 1, pixels: values.map { scale.byte($0) })
    }

    /// An RGB tile from 3 planes (CHW) of `height` x `width` values, scaled by `scale`.
    public static func rgbTile(_ chw: ArraySlice<Float>, height: Int, width: Int, scale: MapScale) -> Image8 {
        precondition(chw.count == 3 * height * width, "rgbTile: \(chw.count) values for 3x\(height)x\(width)")
        return Image8(chw: chw.map { scale.byte($0) }, channels: 3, height: height, width: width)
    }

    /// The grid's size and where tile `index` goes (top-left corner of its zoomed pixels).
    public struct Layout: Equatable, Sendable {
        public var columns: Int, rows: Int
        public var cellWidth: Int, cellHeight: Int
        public var padding: Int, labelHeight: Int
        public var width: Int { padding + columns * (cellWidth + padding) }
        public var height: Int { padding + rows * (labelHeight + cellHeight + padding) }

        public func origin(of index: Int) -> (x: Int, y: Int) {
            (padding + (index % columns) * (cellWidth + padding),
             padding + (index / columns) * (labelHeight + cellHeight + padding) + labelHeight)
        }
    }

    public static func layout(tiles: [Image8], labelled: Bool, columns: Int = defaultColumns,
                              padding: Int = defaultPadding, zoom: Int = 1) -> Layout {
        let cols = Swift.max(1, Swift.min(columns, tiles.count))
        return Layout(columns: cols, rows: (tiles.count + cols - 1) / cols,
                      cellWidth: (tiles.map(\.width).max() ?? 0) * zoom, cellHeight: (tiles.map(\.height).max() ?? 0) * zoom,
                      padding: padding, labelHeight: labelled ? labelHeight : 0)
    }

    /// The grid of `tiles` (1- or 3-channel; the grid is RGB if any tile is), labelled when
    /// `labels` is given (one per tile). See the file comment for the layout.
    public static func make(tiles: [Image8], labels: [String]? = nil, columns: Int = defaultColumns,
                            padding: Int = defaultPadding, zoom: Int = 1, padValue: UInt8 = 0) -> Image8 {
        precondition(!tiles.isEmpty && zoom >= 1 && padding >= 0, "ImageGrid.make: no tiles, or zoom < 1")
        precondition(labels == nil || labels!.count == tiles.count, "ImageGrid.make: one label per tile")
        let channels = tiles.contains { $0.channels == 3 } ? 3 : 1
        let g = layout(tiles: tiles, labelled: labels != nil, columns: columns, padding: padding, zoom: zoom)
        var pixels = [UInt8](repeating: padValue, count: g.width * g.height * channels)
        for (i, tile) in tiles.enumerated() {
            let (x0, y0) = g.origin(of: i)
            for y in 0..<(tile.height * zoom) {
                for x in 0..<(tile.width * zoom) {
                    let src = ((y / zoom) * tile.width + x / zoom) * tile.channels
                    let dst = ((y0 + y) * g.width + x0 + x) * channels
                    for c in 0..<channels { pixels[dst + c] = tile.pixels[src + (tile.channels == 3 ? c : 0)] }
                }
            }
            if let labels {
                drawText(labels[i], into: &pixels, imageWidth: g.width, channels: channels,
                         x: x0, y: y0 - labelHeight + 1, maxWidth: g.cellWidth)
            }
        }
        return Image8(width: g.width, height: g.height, channels: channels, pixels: pixels)
    }

    /// Nearest-neighbour enlargement by an integer factor.
    public static func zoomed(_ image: Image8, by zoom: Int) -> Image8 {
        guard zoom > 1 else { return image }
        let w = image.width * zoom, h = image.height * zoom, c = image.channels
        var out = [UInt8](repeating: 0, count: w * h * c)
        for y in 0..<h {
            for x in 0..<w {
                for k in 0..<c { out[(y * w + x) * c + k] = image.pixels[((y / zoom) * image.width + x / zoom) * c + k] }
            }
        }
        return Image8(width: w, height: h, channels: c, pixels: out)
    }

    /// Width in pixels of `text` in the bitmap font (4 per character, the last column blank).
    public static func textWidth(_ text: String) -> Int { text.count * 4 }

    /// Draws `text` in white in the 3x5 font with its top-left corner at (x, y), characters
    /// that would cross `maxWidth` left out.
    public static func drawText(_ text: String, into pixels: inout [UInt8], imageWidth: Int, channels: Int,
                                x: Int, y: Int, maxWidth: Int, value: UInt8 = 255) {
        let imageHeight = pixels.count / Swift.max(1, imageWidth * channels)
        for (n, character) in text.uppercased().enumerated() {
            let left = x + 4 * n
            guard left + 3 <= x + maxWidth else { break }
            let rows = font[character] ?? font["?"]!
            for (r, bits) in rows.enumerated() {
                for col in 0..<3 where bits & (4 >> col) != 0 {
                    let px = left + col, py = y + r
                    guard px >= 0, py >= 0, px < imageWidth, py < imageHeight else { continue }
                    for c in 0..<channels { pixels[(py * imageWidth + px) * channels + c] = value }
                }
            }
        }
    }

    /// 3x5 glyphs: five rows of three bits, the high bit on the left.
    static let font: [Character: [UInt8]] = [
        "A": [2, 5, 7, 5, 5], "B": [6, 5, 6, 5, 6], "C": [3, 4, 4, 4, 3], "D": [6, 5, 5, 5, 6],
        "E": [7, 4, 6, 4, 7], "F": [7, 4, 6, 4, 4], "G": [3, 4, 5, 5, 3], "H": [5, 5, 7, 5, 5],
        "I": [7, 2, 2, 2, 7], "J": [1, 1, 1, 5, 2], "K": [5, 5, 6, 5, 5], "L": [4, 4, 4, 4, 7],
        "M": [5, 7, 7, 5, 5], "N": [6, 5, 5, 5, 5], "O": [2, 5, 5, 5, 2], "P": [6, 5, 6, 4, 4],
        "Q": [2, 5, 5, 6, 3], "R": [6, 5, 6, 5, 5], "S": [3, 4, 2, 1, 6], "T": [7, 2, 2, 2, 2],
        "U": [5, 5, 5, 5, 7], "V": [5, 5, 5, 5, 2], "W": [5, 5, 7, 7, 5], "X": [5, 5, 2, 5, 5],
        "Y": [5, 5, 2, 2, 2], "Z": [7, 1, 2, 4, 7],
        "0": [7, 5, 5, 5, 7], "1": [2, 6, 2, 2, 7], "2": [6, 1, 2, 4, 7], "3": [6, 1, 2, 1, 6],
        "4": [5, 5, 7, 1, 1], "5": [7, 4, 6, 1, 6], "6": [3, 4, 7, 5, 7], "7": [7, 1, 2, 2, 2],
        "8": [7, 5, 7, 5, 7], "9": [7, 5, 7, 1, 6],
        " ": [0, 0, 0, 0, 0], "-": [0, 0, 7, 0, 0], "_": [0, 0, 0, 0, 7], ".": [0, 0, 0, 0, 2],
        ",": [0, 0, 0, 2, 4], ":": [0, 2, 0, 2, 0], "/": [1, 1, 2, 4, 4], "(": [1, 2, 2, 2, 1],
        ")": [4, 2, 2, 2, 4], "=": [0, 7, 0, 7, 0], "+": [0, 2, 7, 2, 0], ">": [4, 2, 1, 2, 4],
        "<": [1, 2, 4, 2, 1], "%": [5, 1, 2, 4, 5], "?": [6, 1, 2, 0, 2], "#": [5, 7, 5, 7, 5],
        "'": [2, 2, 0, 0, 0], "*": [5, 2, 7, 2, 5],
    ]
}
