import ArgumentParser
import CnnCore
import CnnData
import Foundation

/// `cnn-dist bench loader DIR`: images/s of torchvision's ImageNet training transform on
/// one thread, over the JPEG/PNG files of DIR (class folders, as ImageFolder): read the
/// file, decode, RandomResizedCrop(size), RandomHorizontalFlip, ToTensor + Normalize with
/// ImageNet's mean and std. It runs the shard loader's own per-sample path
/// (ImageDecoder.decodeRandomResizedCrop, then SampleWriter). Tests/pytorch/loader_bench.py
/// times the same transform with PIL + torch on the same files.
struct BenchLoaderCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "loader",
        abstract: "Images/s of decode + random-resized crop + flip + normalise on one thread.")

    @Argument(help: "Folder of class folders holding JPEG or PNG files.") var folder: String
    @Option(help: "Output side (RandomResizedCrop's size).") var size = 224
    @Option(help: "Timed passes over the files (after one warm-up pass); the best is reported.") var passes = 2
    @Option(help: "First write this many synthetic JPEGs (quality 90) into FOLDER/synthetic.") var generate = 0
    @Option(name: .customLong("generate-size"), help: "Their size, WxH (ImageNet's mean is about 500x375).")
    var generateSize = "500x375"

    func validate() throws {
        if !(8...4096).contains(size) { throw ValidationError("--size must lie in 8...4096, got \(size)") }
        if passes < 1 { throw ValidationError("--passes must be at least 1, got \(passes)") }
        if generate < 0 { throw ValidationError("--generate must be >= 0, got \(generate)") }
        if generatedSize == nil { throw ValidationError("--generate-size must be WxH with sides in 16...8000, got \(generateSize)") }
    }

    func run() throws {
        if generate > 0, let (w, h) = generatedSize {
            try Self.writeSyntheticJPEGs(count: generate, width: w, height: h, to: folder + "/synthetic")
        }
        let index = try ImageFolderIndex(directory: folder)
        let paths = index.samples.map(\.path)
        guard !paths.isEmpty else { throw CnnError.invalidData(file: folder, reason: "no JPEG or PNG files in its class folders") }
        let statistics = ChannelStatistics(mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225])
        let writer = SampleWriter(shape: [3, size, size], statistics: statistics,
                                  augmentation: Augmentation(horizontalFlip: true), seed: 1)
        let decoder = ImageDecoder()
        var out = [Float](repeating: 0, count: 3 * size * size)
        print("bench loader: \(paths.count) files in \(folder), \(size)x\(size), one thread, best of \(passes) passes after a warm-up")
        for dct in [true, false] {
            func pass(epoch: Int) throws -> Double {
                let start = monotonicSeconds()
                for (i, path) in paths.enumerated() {
                    let bytes = try FileBytes.read(path)
                    var rng = sampleGenerator(seed: 1, epoch: epoch, sampleIndex: i, stream: 0x5C0B)
                    let chw = try decoder.decodeRandomResizedCrop(bytes, file: path, channels: 3, outHeight: size, outWidth: size,
                                                                  dctScaling: dct, rng: &rng).chw()
                    chw.withUnsafeBufferPointer { src in
                        out.withUnsafeMutableBufferPointer { writer.write(src.baseAddress!, sampleIndex: i, epoch: epoch, to: $0.baseAddress!) }
                    }
                }
                return monotonicSeconds() - start
            }
            _ = try pass(epoch: 0)
            var best = Double.infinity
            for p in 1...passes { best = min(best, try pass(epoch: p)) }
            print(String(format: "  %@: %.1f images/s (%.2f ms/image)",
                         dct ? "DCT-domain downscaling on (default)" : "DCT scaling off (PIL-exact resize)",
                         Double(paths.count) / best, 1000 * best / Double(paths.count)))
        }
    }

    var generatedSize: (Int, Int)? {
        let parts = generateSize.lowercased().split(separator: "x").compactMap { Int($0) }
        guard parts.count == 2, parts.allSatisfy({ (16...8000).contains($0) }) else { return nil }
        return (parts[0], parts[1])
    }

    /// Photograph-like test images: smooth colour fields, edges, texture and sensor noise.
    static func writeSyntheticJPEGs(count: Int, width w: Int, height h: Int, to directory: String) throws {
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        var rng = SplitMix64(seed: 77)
        for n in 0..<count {
            let f = (0..<9).map { _ in Float(rng.nextUnitDouble()) }
            var pixels = [UInt8](repeating: 0, count: w * h * 3)
            for y in 0..<h {
                for x in 0..<w {
                    let u = Float(x) / Float(w), v = Float(y) / Float(h)
                    let edge: Float = (u - 0.3 - 0.4 * f[0]) * (v - f[1]) > 0 ? 40 : -40
                    let texture = 25 * sin(Float(x) * (0.05 + 0.3 * f[2])) * cos(Float(y) * (0.04 + 0.3 * f[3]))
                    for c in 0..<3 {
                        let base = 255 * (0.2 + 0.6 * f[4 + c] * u + 0.3 * f[7] * v)
                        let noise = Float(Int(rng.next() % 17) - 8)
                        pixels[(y * w + x) * 3 + c] = UInt8(max(0, min(255, base + edge + texture + noise)))
                    }
                }
            }
            let bytes = try ImageEncoder.jpeg(Image8(width: w, height: h, channels: 3, pixels: pixels), quality: 90)
            try FileBytes.write(bytes, to: "\(directory)/\(String(n).leftPaddedForBench(to: 5)).jpg")
        }
    }
}

extension String {
    func leftPaddedForBench(to width: Int) -> String { String(repeating: "0", count: max(0, width - count)) + self }
}
