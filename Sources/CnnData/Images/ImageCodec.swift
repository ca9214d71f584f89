// JPEG and PNG decoding and encoding: JPEG through libjpeg-turbo's TurboJPEG API, PNG
// through libpng (whose longjmp errors stay inside the C shim, Sources/CPNG/shim.h).
//
// The format is read from the first bytes, never from the file name, so a PNG named
// .jpg decodes. The header is read first and an image with more than `maxPixels`
// pixels is refused before any pixel memory is allocated (a file of a few hundred
// bytes can claim 100000 × 100000 pixels). Every failure is a CnnError.invalidData
// naming the file.
//
// What a decode gives (what PIL's Image.open(...).convert("RGB" or "L") gives):
//   JPEG: RGB / grey as stored; CMYK and YCCK as Adobe-convention CMYK converted to RGB.
//     A file that ends early is an error (PIL: "image file is truncated"): libjpeg warns
//     and the data does not end with the EOI marker. libjpeg's warnings on complete
//     files (e.g. extraneous bytes before a marker) are not errors, as in PIL.
//   PNG: grey (1, 2, 4, 8, 16 bits), grey+alpha, RGB, RGBA (8 or 16 bits), palette
//     (1-8 bits, tRNS ignored): alpha is dropped, palette entries expanded, 16-bit
//     samples keep their high byte (PIL does so for 16-bit RGB; for 16-bit grey PIL
//     clips the 16-bit value to 255 instead, which we do not copy). Interlaced files too.
//     The whole file through IEND must be present and every CRC of a critical chunk
//     and the zlib checksum must hold.
import CnnCore
import CJPEG
import CPNG
import CZlib

/// The container formats the decoder reads.
public enum ImageFormat: String, Sendable, Equatable {
    case jpeg, png

    /// The format from the first bytes (magic numbers), or nil.
    public static func sniff(_ bytes: UnsafeBufferPointer<UInt8>) -> ImageFormat? {
        if bytes.count >= 3 && bytes[0] == 0xFF && bytes[1] == 0xD8 && bytes[2] == 0xFF { return .jpeg }
        let png: [UInt8] = [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A]
        if bytes.count >= 8 && (0..<8).allSatisfy({ bytes[$0] == png[$0] }) { return .png }
        return nil
    }

    /// What other well-known formats a file that is neither JPEG nor PNG looks like, for the error.
    static func describeUnknown(_ bytes: UnsafeBufferPointer<UInt8>) -> String {
        func starts(_ prefix: [UInt8], at offset: Int = 0) -> Bool {
            bytes.count >= offset + prefix.count && (0..<prefix.count).allSatisfy { bytes[offset + $0] == prefix[$0] }
        }
        let hex = bytes.prefix(8).map { String($0, radix: 16).leftPadded(to: 2) }.joined(separator: " ")
        let kind: String
        if starts(Array("GIF8".utf8)) { kind = "a GIF image, which is not supported" }
        else if starts(Array("BM".utf8)) { kind = "a BMP image, which is not supported" }
        else if starts(Array("RIFF".utf8)) && starts(Array("WEBP".utf8), at: 8) { kind = "a WebP image, which is not supported" }
        else if starts([0x49, 0x49, 0x2A, 0x00]) || starts([0x4D, 0x4D, 0x00, 0x2A]) { kind = "a TIFF image, which is not supported" }
        else if starts([0xFF, 0xD8]) { kind = "a damaged JPEG (no marker after SOI)" }
        else { kind = "not an image" }
        return "not a JPEG or PNG file (first bytes \(hex): \(kind))"
    }
}

/// What the header of an image says, before any pixel is decoded.
public struct ImageHeader: Equatable, Sendable {
    public var format: ImageFormat
    public var width: Int
    public var height: Int
    /// The channels a decode gives without conversion: 1 for grey, 3 otherwise.
    public var channels: Int

    public init(format: ImageFormat, width: Int, height: Int, channels: Int) {
        self.format = format
        self.width = width
        self.height = height
        self.channels = channels
    }
}

/// Decodes JPEG and PNG images. Holds a TurboJPEG handle, so one decoder per thread.
public final class ImageDecoder {
    /// PIL's Image.MAX_IMAGE_PIXELS (its decompression-bomb warning threshold): about
    /// 9459 × 9459, 256 MiB as RGB. Larger images are refused before allocation.
    public static let defaultMaxPixels = 89_478_485

    /// Images with more pixels than this are refused from their header.
    public let maxPixels: Int
    private var decompressor: tjhandle?

    public init(maxPixels: Int = ImageDecoder.defaultMaxPixels) {
        precondition(maxPixels > 0, "ImageDecoder: maxPixels must be positive")
        self.maxPixels = maxPixels
    }

    deinit {
        if let decompressor { tjDestroy(decompressor) }
    }

    /// Reads and decodes the file at `path` (see `decode`).
    public func decodeFile(_ path: String, channels: Int? = nil, atLeast: (height: Int, width: Int)? = nil) throws -> Image8 {
        let bytes = try FileBytes.read(path)
        return try decode(bytes, file: path, channels: channels, atLeast: atLeast)
    }

    /// The header of an image in memory; `file` names it in errors.
    public func header(_ bytes: [UInt8], file: String) throws -> ImageHeader {
        try bytes.withUnsafeBufferPointer { try header(buffer: $0, file: file) }
    }

    /// Decodes an image in memory; `file` names it in errors.
    /// - channels: 1 or 3 converts as PIL's convert("L") / convert("RGB"); nil keeps the
    ///   image's own (1 for grey files, 3 otherwise).
    /// - atLeast: for JPEG, decode at the smallest DCT scaling (1/8, 1/4, 1/2 or 1) whose size is at
    ///   least this in both dimensions, which is much faster when the image will be
    ///   resized far down anyway. PNG ignores it.
    public func decode(_ bytes: [UInt8], file: String, channels: Int? = nil,
                       atLeast: (height: Int, width: Int)? = nil) throws -> Image8 {
        if let channels, channels != 1 && channels != 3 {
            throw CnnError.invalidArgument(layer: "ImageDecoder", argument: "channels", value: "\(channels)", reason: "must be 1 or 3")
        }
        let image: Image8 = try bytes.withUnsafeBufferPointer { buffer in
            let head = try header(buffer: buffer, file: file)
            switch head.format {
            case .jpeg: return try decodeJPEG(buffer, header: head, file: file, atLeast: atLeast)
            case .png: return try decodePNG(buffer, header: head, file: file)
            }
        }
        return channels.map { image.converted(toChannels: $0) } ?? image
    }

    private func header(buffer: UnsafeBufferPointer<UInt8>, file: String) throws -> ImageHeader {
        guard buffer.count > 0 else { throw CnnError.invalidData(file: file, reason: "empty file (0 bytes), not an image") }
        guard let format = ImageFormat.sniff(buffer) else {
            throw CnnError.invalidData(file: file, reason: ImageFormat.describeUnknown(buffer))
        }
        let head: ImageHeader
        switch format {
        case .jpeg:
            let handle = try jpegHandle(file: file)
            var width: Int32 = 0, height: Int32 = 0, subsampling: Int32 = 0, colorspace: Int32 = 0
            guard tjDecompressHeader3(handle, buffer.baseAddress, UInt(buffer.count), &width, &height,
                                      &subsampling, &colorspace) == 0 else {
                defer { discardJPEGHandle() }
                throw CnnError.invalidData(file: file, reason:
                    "bad JPEG header: \(String(cString: tjGetErrorStr2(handle)))\(ImageDecoder.truncationHint(buffer))")
            }
            let grey = colorspace == Int32(TJCS_GRAY.rawValue)
            head = ImageHeader(format: .jpeg, width: Int(width), height: Int(height), channels: grey ? 1 : 3)
        case .png:
            head = try ImageDecoder.pngHeader(buffer, file: file)
        }
        guard head.width > 0 && head.height > 0 else {
            throw CnnError.invalidData(file: file, reason: "image of \(head.width)x\(head.height) pixels is empty")
        }
        guard head.width * head.height <= maxPixels else {
            throw CnnError.invalidData(file: file, reason:
                "image claims \(head.width)x\(head.height) = \(head.width * head.height) pixels, over the limit of \(maxPixels) (a decompression bomb?); refused before decoding")
        }
        return head
    }

    /// A note for JPEG errors when the data does not end with the EOI marker.
    static func truncationHint(_ buffer: UnsafeBufferPointer<UInt8>) -> String {
        let n = buffer.count
        return n >= 2 && buffer[n - 2] == 0xFF && buffer[n - 1] == 0xD9 ? ""
            : " (the file does not end with the JPEG end marker: it is probably truncated)"
    }

    /// The IHDR chunk, read without libpng so that nothing past it is needed: a header
    /// claiming a huge size is refused from these 33 bytes alone.
    static func pngHeader(_ buffer: UnsafeBufferPointer<UInt8>, file: String) throws -> ImageHeader {
        guard buffer.count >= 33 else {
            throw CnnError.invalidData(file: file, reason: "PNG file of \(buffer.count) bytes is truncated before the end of its IHDR header")
        }
        func be32(_ i: Int) -> UInt32 { (0..<4).reduce(UInt32(0)) { $0 << 8 | UInt32(buffer[i + $1]) } }
        guard be32(8) == 13, buffer[12] == 0x49, buffer[13] == 0x48, buffer[14] == 0x44, buffer[15] == 0x52 else {
            throw CnnError.invalidData(file: file, reason: "corrupt PNG: the first chunk is not a 13-byte IHDR")
        }
        let crc = UInt32(crc32(0, buffer.baseAddress! + 12, 17))
        guard crc == be32(29) else { throw CnnError.invalidData(file: file, reason: "corrupt PNG: IHDR CRC error") }
        let width = Int(be32(16)), height = Int(be32(20)), depth = Int(buffer[24]), colorType = Int(buffer[25])
        let allowed: [Int: [Int]] = [0: [1, 2, 4, 8, 16], 2: [8, 16], 3: [1, 2, 4, 8], 4: [8, 16], 6: [8, 16]]
        guard allowed[colorType]?.contains(depth) == true, width <= 0x7FFF_FFFF, height <= 0x7FFF_FFFF else {
            throw CnnError.invalidData(file: file, reason: "corrupt PNG: invalid IHDR (colour type \(colorType), bit depth \(depth), \(width)x\(height))")
        }
        return ImageHeader(format: .png, width: width, height: height, channels: colorType & 2 != 0 ? 3 : 1)
    }

    /// Drops the TurboJPEG handle after an error: libjpeg can be left part way through a
    /// header, which would garble the next image's decode.
    private func discardJPEGHandle() {
        if let decompressor { tjDestroy(decompressor) }
        decompressor = nil
    }

    private func jpegHandle(file: String) throws -> tjhandle {
        if let decompressor { return decompressor }
        guard let handle = tjInitDecompress() else {
            throw CnnError.invalidData(file: file, reason: "cannot initialise the JPEG decoder")
        }
        decompressor = handle
        return handle
    }

    /// The scaled size TurboJPEG gives for a scaling factor (TJSCALED).
    private static func scaled(_ size: Int, _ factor: tjscalingfactor) -> Int {
        (size * Int(factor.num) + Int(factor.denom) - 1) / Int(factor.denom)
    }

    private func decodeJPEG(_ buffer: UnsafeBufferPointer<UInt8>, header head: ImageHeader, file: String,
                            atLeast: (height: Int, width: Int)?) throws -> Image8 {
        let handle = try jpegHandle(file: file)
        var width = head.width, height = head.height
        if let atLeast, atLeast.height > 0, atLeast.width > 0 {
            var count: Int32 = 0
            if let factors = tjGetScalingFactors(&count) {
                for i in 0..<Int(count) {
                    let f = factors[i]
                    // 1/2, 1/4, 1/8 only: libjpeg-turbo's other factors (9/16 ... 15/16) take a
                    // scalar IDCT that is slower than decoding at full size.
                    guard f.num == 1 && (f.denom == 2 || f.denom == 4 || f.denom == 8) else { continue }
                    let w = ImageDecoder.scaled(head.width, f), h = ImageDecoder.scaled(head.height, f)
                    if w >= atLeast.width && h >= atLeast.height && w * h < width * height { width = w; height = h }
                }
            }
        }
        var dummy: Int32 = 0, colorspace: Int32 = 0, w32: Int32 = 0, h32: Int32 = 0
        _ = tjDecompressHeader3(handle, buffer.baseAddress, UInt(buffer.count), &w32, &h32, &dummy, &colorspace)
        let cmyk = colorspace == Int32(TJCS_CMYK.rawValue) || colorspace == Int32(TJCS_YCCK.rawValue)
        let pixelFormat: TJPF = head.channels == 1 ? TJPF_GRAY : (cmyk ? TJPF_CMYK : TJPF_RGB)
        let stored = head.channels == 1 ? 1 : (cmyk ? 4 : 3)
        var pixels = [UInt8](repeating: 0, count: width * height * stored)
        let status = pixels.withUnsafeMutableBufferPointer { out in
            tjDecompress2(handle, buffer.baseAddress, UInt(buffer.count), out.baseAddress, Int32(width),
                          Int32(width * stored), Int32(height), Int32(pixelFormat.rawValue), 0)
        }
        if status != 0 {
            let message = String(cString: tjGetErrorStr2(handle))
            let warning = tjGetErrorCode(handle) == Int32(TJERR_WARNING.rawValue)
            discardJPEGHandle()
            // A warning leaves a complete image (PIL accepts those too), unless the data ran
            // out: then libjpeg has filled the rest with grey. Data that does not end with
            // the EOI marker and drew a warning ran out.
            let truncated = !ImageDecoder.truncationHint(buffer).isEmpty
            if !warning || truncated {
                let reason = truncated ? "JPEG data is truncated (\(message))" : "corrupt JPEG: \(message)"
                throw CnnError.invalidData(file: file, reason: reason)
            }
        }
        if cmyk { return Image8.rgb(fromInvertedCMYK: pixels, width: width, height: height) }
        return Image8(width: width, height: height, channels: stored, pixels: pixels)
    }

    private func decodePNG(_ buffer: UnsafeBufferPointer<UInt8>, header head: ImageHeader, file: String) throws -> Image8 {
        var pixels = [UInt8](repeating: 0, count: head.width * head.height * head.channels)
        var message = cnn_png_message()
        let status = pixels.withUnsafeMutableBufferPointer { out in
            cnn_png_decode(buffer.baseAddress, buffer.count, UInt32(head.width), UInt32(head.height),
                           Int32(head.channels), out.baseAddress, out.count, &message)
        }
        guard status == 0 else { throw CnnError.invalidData(file: file, reason: "corrupt PNG: \(pngMessage(&message))") }
        return Image8(width: head.width, height: head.height, channels: head.channels, pixels: pixels)
    }
}

extension ImageDecoder {
    /// The tEXt chunks of a PNG in memory, (key, value) in file order, read by walking the
    /// chunks (every chunk's CRC is checked); `file` names it in errors.
    public static func pngText(_ bytes: [UInt8], file: String) throws -> [(key: String, value: String)] {
        let signature: [UInt8] = [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A]
        guard bytes.count >= 8, Array(bytes[0..<8]) == signature else {
            throw CnnError.invalidData(file: file, reason: "not a PNG file (no PNG signature)")
        }
        func be32(_ i: Int) -> Int { (0..<4).reduce(0) { $0 << 8 | Int(bytes[i + $1]) } }
        var entries: [(key: String, value: String)] = []
        var at = 8
        while at + 12 <= bytes.count {
            let length = be32(at)
            guard length <= bytes.count - at - 12 else {
                throw CnnError.invalidData(file: file, reason: "PNG chunk at byte \(at) claims \(length) bytes, past the end of the file")
            }
            let type = String(decoding: bytes[(at + 4)..<(at + 8)], as: UTF8.self)
            let crc = bytes.withUnsafeBufferPointer { UInt32(crc32(0, $0.baseAddress! + at + 4, UInt32(length + 4))) }
            guard crc == UInt32(be32(at + 8 + length)) else {
                throw CnnError.invalidData(file: file, reason: "corrupt PNG: CRC error in the \(type) chunk at byte \(at)")
            }
            if type == "tEXt" {
                let data = bytes[(at + 8)..<(at + 8 + length)]
                guard let zero = data.firstIndex(of: 0) else {
                    throw CnnError.invalidData(file: file, reason: "corrupt PNG: a tEXt chunk without the NUL after its key")
                }
                func latin1(_ s: ArraySlice<UInt8>) -> String { String(String.UnicodeScalarView(s.map { Unicode.Scalar($0) })) }
                entries.append((latin1(data[data.startIndex..<zero]), latin1(data[(zero + 1)...])))
            }
            if type == "IEND" { break }
            at += 12 + length
        }
        return entries
    }
}

func pngMessage(_ message: inout cnn_png_message) -> String {
    withUnsafeBytes(of: &message.text) { raw in
        let bytes = raw.bindMemory(to: UInt8.self)
        let end = bytes.firstIndex(of: 0) ?? bytes.count
        return String(decoding: bytes[0..<end], as: UTF8.self)
    }
}

/// PNG colour types (the values of the IHDR field).
public enum PNGColorType: Int32, Sendable {
    case grey = 0, rgb = 2, palette = 3, greyAlpha = 4, rgba = 6

    /// Samples per pixel.
    public var samples: Int {
        switch self {
        case .grey, .palette: return 1
        case .greyAlpha: return 2
        case .rgb: return 3
        case .rgba: return 4
        }
    }
}

/// JPEG chroma subsampling for encoding.
public enum JPEGSubsampling: Sendable {
    case s444, s422, s420

    var tj: Int32 {
        switch self {
        case .s444: return Int32(TJSAMP_444.rawValue)
        case .s422: return Int32(TJSAMP_422.rawValue)
        case .s420: return Int32(TJSAMP_420.rawValue)
        }
    }
}

/// PNG and JPEG writers (test data, dataset packing, visualisation).
public enum ImageEncoder {
    /// An 8-bit grey or RGB PNG of `image`; `text` becomes tEXt chunks (key, value), in order.
    public static func png(_ image: Image8, interlaced: Bool = false, text: [(key: String, value: String)] = []) throws -> [UInt8] {
        try pngRaw(rows: image.pixels, width: image.width, height: image.height,
                   colorType: image.channels == 1 ? .grey : .rgb, bitDepth: 8, interlaced: interlaced, text: text)
    }

    /// A PNG from rows already in PNG's sample layout: `rows` holds height rows of
    /// ceil(width * samples * bitDepth / 8) bytes (samples below 8 bits packed from the
    /// high bit, 16-bit samples big-endian). `palette` is RGB triples, `transparency`
    /// the alpha of the first palette entries (palette images only).
    public static func pngRaw(rows: [UInt8], width: Int, height: Int, colorType: PNGColorType, bitDepth: Int,
                              interlaced: Bool = false, palette: [UInt8] = [], transparency: [UInt8] = [],
                              compressionLevel: Int = 6, text: [(key: String, value: String)] = []) throws -> [UInt8] {
        // tEXt: a key of 1-79 Latin-1 characters without NUL, a value without NUL (PNG spec 11.3.4.3).
        var packedText: [CChar] = []
        for (key, value) in text {
            let latin1Key = key.unicodeScalars.allSatisfy { $0.value >= 32 && $0.value <= 255 }
            guard (1...79).contains(key.unicodeScalars.count), latin1Key, !key.hasPrefix(" "), !key.hasSuffix(" "),
                  value.unicodeScalars.allSatisfy({ $0.value > 0 && $0.value <= 255 }) else {
                throw CnnError.invalidArgument(layer: "ImageEncoder.png", argument: "text", value: key,
                                               reason: "a tEXt key is 1-79 Latin-1 characters without leading or trailing spaces, and its value Latin-1 without NUL")
            }
            for string in [key, value] {
                packedText += string.unicodeScalars.map { CChar(bitPattern: UInt8($0.value)) }
                packedText.append(0)
            }
        }
        let rowBytes = (width * colorType.samples * bitDepth + 7) / 8
        guard width > 0, height > 0, rows.count == rowBytes * height else {
            throw CnnError.invalidArgument(layer: "ImageEncoder.png", argument: "rows", value: "\(rows.count) bytes",
                                           reason: "expected \(height) rows of \(rowBytes) bytes for \(width)x\(height)")
        }
        var sink = cnn_png_sink()
        var message = cnn_png_message()
        defer { cnn_png_sink_free(&sink) }
        let status = rows.withUnsafeBufferPointer { r in
            palette.withUnsafeBufferPointer { p in
                transparency.withUnsafeBufferPointer { t in
                    packedText.withUnsafeBufferPointer { x in
                        cnn_png_encode(r.baseAddress, rowBytes, UInt32(width), UInt32(height), colorType.rawValue,
                                       Int32(bitDepth), interlaced ? 1 : 0, p.baseAddress, Int32(palette.count / 3),
                                       t.baseAddress, Int32(transparency.count), Int32(compressionLevel),
                                       x.baseAddress, Int32(text.count), &sink, &message)
                    }
                }
            }
        }
        guard status == 0, let data = sink.data else {
            throw CnnError.invalidArgument(layer: "ImageEncoder.png", argument: "image", value: "\(width)x\(height)",
                                           reason: pngMessage(&message))
        }
        return Array(UnsafeBufferPointer(start: data, count: sink.size))
    }

    /// A JPEG of `image` (grey or RGB) at `quality` 1-100.
    public static func jpeg(_ image: Image8, quality: Int = 90, subsampling: JPEGSubsampling = .s420,
                            progressive: Bool = false) throws -> [UInt8] {
        try jpeg(pixels: image.pixels, width: image.width, height: image.height,
                 format: image.channels == 1 ? TJPF_GRAY : TJPF_RGB, quality: quality,
                 subsampling: image.channels == 1 ? Int32(TJSAMP_GRAY.rawValue) : subsampling.tj, progressive: progressive)
    }

    /// A CMYK JPEG (Adobe convention: the bytes given are stored as they are, so pass
    /// inverted values, 255 - ink) from width * height * 4 bytes.
    public static func jpegCMYK(_ cmyk: [UInt8], width: Int, height: Int, quality: Int = 90) throws -> [UInt8] {
        try jpeg(pixels: cmyk, width: width, height: height, format: TJPF_CMYK, quality: quality,
                 subsampling: Int32(TJSAMP_444.rawValue), progressive: false)
    }

    private static func jpeg(pixels: [UInt8], width: Int, height: Int, format: TJPF, quality: Int,
                             subsampling: Int32, progressive: Bool) throws -> [UInt8] {
        let bytesPerPixel = format == TJPF_GRAY ? 1 : (format == TJPF_CMYK ? 4 : 3)
        guard width > 0, height > 0, pixels.count == width * height * bytesPerPixel, (1...100).contains(quality) else {
            throw CnnError.invalidArgument(layer: "ImageEncoder.jpeg", argument: "image",
                                           value: "\(pixels.count) bytes, \(width)x\(height), quality \(quality)",
                                           reason: "expected \(bytesPerPixel) bytes per pixel and quality 1-100")
        }
        guard let handle = tjInitCompress() else {
            throw CnnError.invalidArgument(layer: "ImageEncoder.jpeg", argument: "encoder", value: "-", reason: "cannot initialise")
        }
        defer { tjDestroy(handle) }
        var output: UnsafeMutablePointer<UInt8>? = nil
        var size: UInt = 0
        let flags: Int32 = progressive ? Int32(TJFLAG_PROGRESSIVE) : 0
        let status = pixels.withUnsafeBufferPointer { p in
            tjCompress2(handle, p.baseAddress, Int32(width), Int32(width * bytesPerPixel), Int32(height),
                        Int32(format.rawValue), &output, &size, subsampling, Int32(quality), flags)
        }
        defer { if let output { tjFree(output) } }
        guard status == 0, let output else {
            throw CnnError.invalidArgument(layer: "ImageEncoder.jpeg", argument: "image", value: "\(width)x\(height)",
                                           reason: String(cString: tjGetErrorStr2(handle)))
        }
        return Array(UnsafeBufferPointer(start: output, count: Int(size)))
    }
}

extension String {
    func leftPadded(to width: Int, with pad: Character = "0") -> String {
        count >= width ? self : String(repeating: pad, count: width - count) + self
    }
}
