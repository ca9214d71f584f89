// CSV pixel datasets in the layout of Kaggle's Sign-Language-MNIST and Fashion-MNIST CSVs:
//   label,pixel1,pixel2,...,pixelN        (a header line)
//   3,107,118,127,...                     (one image per line)
// The label column is the one named "label" (any case), else the first. Pixels are
// integers 0...255 in CHW order (for 1 channel: row after row). Without a given shape a
// 1-channel image is square (N must be a perfect square). A first line whose fields are
// all numbers is data (a file without a header). Empty lines are skipped; CRLF is fine.
// Every malformed value is an error naming the file, the line and the column.
import CnnCore

public enum CSVPixels {
    /// Loads a CSV pixel file as a dataset of `channels` × height × width images.
    /// - height, width: the image size; nil for both infers a square from the column count.
    /// - classCount: nil takes the largest label + 1 (Sign-Language-MNIST has 24 classes
    ///   labelled 0...24 without 9, so 25).
    public static func load(path: String, name: String? = nil, channels: Int = 1, height: Int? = nil,
                            width: Int? = nil, classCount: Int? = nil) throws -> ImageDataset {
        let (bytes, _) = try FileBytes.readDecompressing(path)
        return try parse(bytes, file: path, name: name ?? "csv \(path)", channels: channels, height: height,
                         width: width, classCount: classCount)
    }

    /// Parses CSV text already in memory (see `load`).
    public static func parse(_ bytes: [UInt8], file: String, name: String, channels: Int = 1, height: Int? = nil,
                             width: Int? = nil, classCount: Int? = nil) throws -> ImageDataset {
        guard channels > 0, (height == nil) == (width == nil), (height ?? 1) > 0, (width ?? 1) > 0 else {
            throw CnnError.invalidArgument(layer: "CSVPixels", argument: "shape",
                                           value: "\(channels)x\(height.map(String.init) ?? "?")x\(width.map(String.init) ?? "?")",
                                           reason: "give positive channels and both height and width, or neither")
        }
        var lines = [(number: Int, range: Range<Int>)]()
        var start = 0, number = 1
        for i in 0...bytes.count where i == bytes.count || bytes[i] == UInt8(ascii: "\n") {
            var end = i
            if end > start && bytes[end - 1] == UInt8(ascii: "\r") { end -= 1 }
            if end > start && !bytes[start..<end].allSatisfy({ $0 == 32 || $0 == 9 }) { lines.append((number, start..<end)) }
            start = i + 1
            number += 1
        }
        guard let first = lines.first else { throw CnnError.invalidData(file: file, reason: "empty CSV file") }
        let headerFields = split(bytes, first.range)
        let hasHeader = !headerFields.allSatisfy { integer(bytes, $0) != nil }
        let columns = headerFields.count
        var labelColumn = 0
        if hasHeader, let named = headerFields.firstIndex(where: {
            String(decoding: bytes[$0], as: UTF8.self).trimmingWhitespace().lowercased() == "label" }) {
            labelColumn = named
        }
        let pixelCount = columns - 1
        guard pixelCount > 0, pixelCount % channels == 0 else {
            throw CnnError.invalidData(file: file, reason: "line \(first.number): \(columns) columns do not hold a label and \(channels)-channel images")
        }
        let h: Int, w: Int
        if let height, let width {
            h = height; w = width
            guard channels * h * w == pixelCount else {
                throw CnnError.invalidData(file: file, reason:
                    "line \(first.number): \(pixelCount) pixel columns, but \(channels)x\(h)x\(w) images need \(channels * h * w)")
            }
        } else {
            let side = Int(Double(pixelCount / channels).squareRoot().rounded())
            guard side * side * channels == pixelCount else {
                throw CnnError.invalidData(file: file, reason:
                    "line \(first.number): \(pixelCount) pixel columns are not \(channels) square images; give the image height and width")
            }
            h = side; w = side
        }
        let dataLines = hasHeader ? lines.dropFirst() : lines[...]
        var pixels = [UInt8](repeating: 0, count: dataLines.count * pixelCount)
        var labels = [Int32]()
        labels.reserveCapacity(dataLines.count)
        for (row, line) in dataLines.enumerated() {
            let fields = split(bytes, line.range)
            guard fields.count == columns else {
                throw CnnError.invalidData(file: file, reason: "line \(line.number): \(fields.count) columns, expected \(columns) as in line \(first.number)")
            }
            var p = row * pixelCount
            for (column, field) in fields.enumerated() {
                guard let value = integer(bytes, field) else {
                    let text = String(decoding: bytes[field], as: UTF8.self)
                    throw CnnError.invalidData(file: file, reason: "line \(line.number), column \(column + 1): '\(text.prefix(20))' is not an integer")
                }
                if column == labelColumn {
                    guard value >= 0 && value < Int(Int32.max) else {
                        throw CnnError.invalidData(file: file, reason: "line \(line.number), column \(column + 1): label \(value) is negative")
                    }
                    labels.append(Int32(value))
                } else {
                    guard value >= 0 && value <= 255 else {
                        throw CnnError.invalidData(file: file, reason: "line \(line.number), column \(column + 1): pixel \(value) is outside 0...255")
                    }
                    pixels[p] = UInt8(value)
                    p += 1
                }
            }
        }
        guard !labels.isEmpty else { throw CnnError.invalidData(file: file, reason: "no data lines after the header") }
        let largest = Int(labels.max()!)
        let classes = classCount ?? largest + 1
        if largest >= classes {
            let line = dataLines[labels.firstIndex(of: Int32(largest))! + dataLines.startIndex].number
            throw CnnError.invalidData(file: file, reason: "line \(line): label \(largest) is not below the \(classes) classes")
        }
        return ImageDataset(name: name, source: file, pixels: pixels, labels: labels, channels: channels,
                            height: h, width: w, classCount: classes)
    }

    /// The byte ranges of the comma-separated fields of a line.
    static func split(_ bytes: [UInt8], _ range: Range<Int>) -> [Range<Int>] {
        var fields = [Range<Int>]()
        var start = range.lowerBound
        for i in range where bytes[i] == UInt8(ascii: ",") {
            fields.append(start..<i)
            start = i + 1
        }
        fields.append(start..<range.upperBound)
        return fields
    }

    /// A decimal integer with optional surrounding blanks, or nil.
    static func integer(_ bytes: [UInt8], _ range: Range<Int>) -> Int? {
        var i = range.lowerBound, end = range.upperBound
        while i < end && (bytes[i] == 32 || bytes[i] == 9) { i += 1 }
        while end > i && (bytes[end - 1] == 32 || bytes[end - 1] == 9) { end -= 1 }
        guard i < end, end - i <= 10 else { return nil }
        var value = 0
        for j in i..<end {
            let d = Int(bytes[j]) - 48
            guard d >= 0 && d <= 9 else { return nil }
            value = value * 10 + d
        }
        return value
    }
}
