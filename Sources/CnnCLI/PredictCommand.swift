import ArgumentParser
import Foundation
import CnnCore
import CnnData
import CnnTraining

/// `cnn-dist predict --checkpoint PATH --input FILE --output FILE.safetensors`.
public struct PredictCommand: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "predict",
        abstract: "Run a checkpoint on an images file; write logits and predicted classes as safetensors.",
        discussion: """
            The input is an IDX images file (as Fashion-MNIST's, raw or gzipped; magic 0x803 N,H,W or
            0x804 N,C,H,W) or a CIFAR-10 binary batch file (its labels are ignored). Images are normalised
            with the checkpoint's statistics. The output holds "logits" [N, classes] F32 and
            "predictions" [N] I64 (the first highest logit), and is written atomically.
            """)

    @Option(help: "Model checkpoint (.safetensors written by cnn-dist train).") var checkpoint: String
    @Option(help: "Images: a JPEG or PNG file, a folder of them, an IDX file (raw or .gz) or a CIFAR-10 binary batch.")
    var input: String
    @Option(help: "Output: .safetensors (logits and predictions), or for JPEG/PNG inputs .csv or .json (top-k classes).")
    var output: String?
    @Option(name: .customLong("top-k"), help: "Classes printed per image for JPEG/PNG inputs.") var topK = 5
    @Option(help: "Input format: auto, idx, cifar10.") var format = "auto"
    @Option(name: .customLong("batch-size"), help: "Images per forward pass.") var batchSize = 256
    @Option(help: "GEMM arithmetic of convolution and linear layers (bf16 needs AVX512_BF16).")
    var precision: ComputePrecision = .fp32

    public init() {}

    public func validate() throws {
        if batchSize < 1 { throw ValidationError("--batch-size must be at least 1, got \(batchSize)") }
        if PredictInputFormat(rawValue: format) == nil {
            throw ValidationError("--format must be auto, idx or cifar10, got '\(format)'")
        }
    }

    public func run() throws {
        try Preflight.checkPrecision(precision, what: "predict --precision bf16")
        let loaded = try loadModelCheckpoint(path: checkpoint)
        if let files = try imageInputs(input) {
            try predictImages(files, loaded: loaded)
            return
        }
        guard let output else { throw ValidationError("--output FILE.safetensors is required for IDX and CIFAR-10 inputs") }
        let model = loaded.model
        let images = try readImageFile(path: input, format: PredictInputFormat(rawValue: format) ?? .auto)
        guard images.shape == model.inputShape else {
            throw CnnError.invalidData(file: input, reason:
                "holds \(formatShape(images.shape)) images but the checkpoint's \(model.name) takes \(formatShape(model.inputShape))")
        }
        let logits = try predictLogits(model: model, pixels: images.pixels, count: images.count,
                                       statistics: loaded.statistics, batchSize: batchSize,
                                       arithmetic: GemmArithmetic(precision))
        let classes = model.classCount
        var predictions = [Int64](repeating: 0, count: images.count)
        for i in 0..<images.count {
            var best = 0
            for k in 1..<classes where logits[i * classes + k] > logits[i * classes + best] { best = k }
            predictions[i] = Int64(best)
        }
        let tensors = logits.withUnsafeBufferPointer {
            [SafeTensor(name: "logits", floats: $0, shape: [images.count, classes]),
             SafeTensor(name: "predictions", int64s: predictions, shape: [images.count])]
        }
        let bytes = try SafeTensors.encode(tensors, metadata: [
            "checkpoint": checkpoint, "input": input, "model": model.name, "format": "cnn-dist-predictions",
        ])
        do {
            try writeFileAtomically(bytes, to: output)
        } catch let error as CnnError {
            throw CnnError.io(file: output, reason: "cannot write the predictions: \(error)")
        }
        print("\(model.name): \(images.count) images of \(input) -> \(output) (logits \(images.count)x\(classes), predictions)")
    }
}

extension PredictCommand {
    /// The JPEG / PNG files `path` names (itself, or the images under a folder,
    /// sorted); nil for other files (IDX, CIFAR-10).
    func imageInputs(_ path: String) throws -> [String]? {
        if FileBytes.isDirectory(path) {
            let base = path.hasSuffix("/") ? String(path.dropLast()) : path
            guard let walker = FileManager.default.enumerator(atPath: base) else {
                throw CnnError.io(file: path, reason: "cannot list the folder")
            }
            let files = walker.compactMap { $0 as? String }
                .filter { ImageFolderIndex.imageExtensions.contains(($0 as NSString).pathExtension.lowercased()) }
                .sorted().map { "\(base)/\($0)" }
            guard !files.isEmpty else { throw CnnError.invalidData(file: path, reason: "holds no JPEG or PNG images") }
            return files
        }
        let head = Array(try FileBytes.read(path).prefix(8))
        let png: [UInt8] = [0x89, 0x50, 0x4E, 0x47], jpeg: [UInt8] = [0xFF, 0xD8, 0xFF]
        return head.starts(with: png) || head.starts(with: jpeg) ? [path] : nil
    }

    /// Top-k classes with names and softmax probabilities, per image.
    func predictImages(_ files: [String], loaded: LoadedModel) throws {
        let model = loaded.model
        let decoder = ImageDecoder()
        let pixels = try files.flatMap { try decoder.decodeInput($0, shape: model.inputShape) }
        let logits = try predictLogits(model: model, pixels: pixels, count: files.count, statistics: loaded.statistics,
                                       batchSize: batchSize, arithmetic: GemmArithmetic(precision))
        let classes = model.classCount
        let names = loaded.classNames
        var rows: [[String: Any]] = []
        for (i, file) in files.enumerated() {
            let row = Array(logits[i * classes ..< (i + 1) * classes]).map(Double.init)
            let top = row.max() ?? 0
            let exps = row.map { Foundation.exp($0 - top) }
            let total = exps.reduce(0, +)
            let ranked = exps.indices.sorted { exps[$0] > exps[$1] }.prefix(max(1, min(topK, classes)))
            let entries = ranked.map { k -> [String: Any] in
                ["class": k, "name": names?[k] ?? String(k), "probability": exps[k] / total]
            }
            rows.append(["file": file, "top": entries])
            print(file + ": " + entries.map { String(format: "%@ %.3f", $0["name"] as! String, $0["probability"] as! Double) }
                .joined(separator: ", "))
        }
        guard let output else { return }
        let bytes: [UInt8]
        if output.hasSuffix(".json") {
            bytes = Array(try JSONSerialization.data(withJSONObject: rows, options: [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]))
        } else {
            var text = "file," + (1...max(1, min(topK, classes))).map { "class\($0),probability\($0)" }.joined(separator: ",") + "\n"
            for row in rows {
                let top = row["top"] as! [[String: Any]]
                text += csvField(row["file"] as! String) + ","
                    + top.map { csvField($0["name"] as! String) + String(format: ",%.6f", $0["probability"] as! Double) }
                        .joined(separator: ",") + "\n"
            }
            bytes = Array(text.utf8)
        }
        try writeFileAtomically(bytes, to: output)
    }
}

/// A CSV field, quoted when it holds a comma, quote or newline.
private func csvField(_ text: String) -> String {
    text.contains(where: { $0 == "," || $0 == "\"" || $0 == "\n" }) ? "\"" + text.replacingOccurrences(of: "\"", with: "\"\"") + "\"" : text
}

/// How `readImageFile` interprets a file.
public enum PredictInputFormat: String, CaseIterable, Sendable {
    /// IDX if the file starts with an IDX images magic, else CIFAR-10 binary.
    case auto
    /// IDX images (0x00000803: N, H, W; 0x00000804: N, C, H, W).
    case idx
    /// CIFAR-10 binary records: 1 label byte + 3×32×32 pixels.
    case cifar10
}

/// Unlabelled images: N×C×H×W bytes, CHW per image.
public struct ImageFile: Equatable {
    public var pixels: [UInt8]
    public var count: Int
    /// C, H, W.
    public var shape: [Int]
}

/// Reads the images of an IDX images file or a CIFAR-10 binary batch file
/// (raw or gzipped, detected by content). Labels in a CIFAR-10 file are
/// skipped unchecked. Throws `CnnError.invalidData` / `.io` naming the file.
public func readImageFile(path: String, format: PredictInputFormat = .auto) throws -> ImageFile {
    let (bytes, compressed) = try FileBytes.readDecompressing(path)
    let what = compressed ? "decompressed bytes" : "bytes"
    func bad(_ reason: String) -> CnnError { CnnError.invalidData(file: path, reason: reason) }
    func be32(_ o: Int) -> Int { Int(bytes[o]) << 24 | Int(bytes[o + 1]) << 16 | Int(bytes[o + 2]) << 8 | Int(bytes[o + 3]) }
    let looksIDX = bytes.count >= 4 && bytes[0] == 0 && bytes[1] == 0 && bytes[2] == 0x08 && (bytes[3] == 3 || bytes[3] == 4)
    var chosen = format
    if chosen == .auto { chosen = looksIDX ? .idx : .cifar10 }

    if chosen == .idx {
        guard bytes.count >= 4 else { throw bad("too short for an IDX header: \(bytes.count) \(what)") }
        guard looksIDX else {
            let magic = (0..<4).map { String(format: "%02x", bytes[$0]) }.joined()
            throw bad("magic 0x\(magic) is not an IDX images file (0x00000803 or 0x00000804)"
                      + (magic == "00000801" ? "; this looks like a labels file" : ""))
        }
        let rank = Int(bytes[3]), headerSize = 4 + 4 * rank
        guard bytes.count >= headerSize else { throw bad("truncated IDX header: \(bytes.count) \(what), expected \(headerSize)") }
        let dims = (0..<rank).map { be32(4 + 4 * $0) }
        let shape = rank == 3 ? [1, dims[1], dims[2]] : [dims[1], dims[2], dims[3]]
        guard shape.allSatisfy({ $0 > 0 && $0 <= 65_536 }) else {
            throw bad("invalid image dimensions \(dims.map(String.init).joined(separator: "x"))")
        }
        let (expected, overflow) = dims[0].multipliedReportingOverflow(by: shape.reduce(1, *))
        guard !overflow, bytes.count - headerSize == expected else {
            throw bad("expected \(overflow ? "an impossible number of" : String(expected)) \(what) of pixels for \(dims[0]) images of "
                      + "\(formatShape(shape)) after the \(headerSize)-byte header, found \(bytes.count - headerSize)"
                      + (bytes.count - headerSize < expected ? " (truncated)" : ""))
        }
        return ImageFile(pixels: Array(bytes[headerSize...]), count: dims[0], shape: shape)
    }

    let record = ImageDataset.cifar10RecordSize, imageSize = record - 1
    guard !bytes.isEmpty, bytes.count % record == 0 else {
        throw bad("neither an IDX images file nor CIFAR-10 binary: \(bytes.count) \(what) is not a positive multiple "
                  + "of the \(record)-byte CIFAR-10 record")
    }
    let count = bytes.count / record
    var pixels = [UInt8](repeating: 0, count: count * imageSize)
    bytes.withUnsafeBufferPointer { src in
        pixels.withUnsafeMutableBufferPointer { dst in
            for i in 0..<count {
                (dst.baseAddress! + i * imageSize).update(from: src.baseAddress! + i * record + 1, count: imageSize)
            }
        }
    }
    return ImageFile(pixels: pixels, count: count, shape: [3, 32, 32])
}
