import CnnCore
import Dispatch
import Foundation

extension ImageDataset {
    /// The `split` of an image folder (ROOT/train or ROOT/val, class folders
    /// sorted by name; validation labelled with the training split's classes),
    /// decoded and brought to `shape` (C, H, W) as torchvision's evaluation
    /// transform does: the shorter side resized (antialiased bilinear), then a
    /// centre crop. Held in memory as 8-bit pixels: C x H x W bytes an image.
    ///
    /// Decoding runs on `ComputeThreads.count` threads, each with its own decoder;
    /// a damaged or unreadable image is an error naming the file, or with `.skip` is
    /// left out and listed in `skippedFiles` (every rank reads the whole folder, so
    /// every rank leaves out the same files and the batches stay the same).
    public static func loadImageFolder(root: String, split: DatasetSplit, shape: [Int],
                                       onBadImage: BadImageAction = .error) throws -> ImageDataset {
        precondition(shape.count == 3, "shape is C x H x W")
        let train = try ImageFolderIndex(directory: root + "/train")
        let index = split == .train ? train : try ImageFolderIndex(directory: root + "/val", classes: train.classes)
        guard !index.samples.isEmpty else {
            throw CnnError.invalidData(file: index.directory, reason: "no JPEG or PNG images in its class folders")
        }
        let (channels, height, width) = (shape[0], shape[1], shape[2])
        let imageSize = channels * height * width
        let count = index.samples.count
        var pixels = [UInt8](repeating: 0, count: count * imageSize)
        let lock = NSLock()
        var failure: Error?
        var bad = [Int: String]()
        let workers = max(1, min(ComputeThreads.count, count))
        pixels.withUnsafeMutableBufferPointer { out in
            let base = out.baseAddress!
            DispatchQueue.concurrentPerform(iterations: workers) { worker in
                let decoder = ImageDecoder()
                var i = worker
                while i < count {
                    do {
                        let chw = try decoder.decodeInput(index.samples[i].path, shape: shape)
                        chw.withUnsafeBufferPointer { (base + i * imageSize).update(from: $0.baseAddress!, count: imageSize) }
                    } catch {
                        lock.lock()
                        if onBadImage == .skip { bad[i] = "\(error)" } else if failure == nil { failure = error }
                        lock.unlock()
                        if onBadImage == .error { return }
                    }
                    i += workers
                }
            }
        }
        if let failure { throw failure }
        var dataset = ImageDataset(name: "folder \(split == .train ? "train" : "val")", source: index.directory, pixels: pixels,
                                   labels: index.samples.map { Int32($0.label) }, channels: channels, height: height,
                                   width: width, classCount: max(2, train.classes.count))
        dataset.classNames = train.classes
        guard !bad.isEmpty else { return dataset }
        let keep = (0..<count).filter { bad[$0] == nil }
        guard !keep.isEmpty else {
            throw CnnError.invalidData(file: index.directory, reason: "no readable image (on_bad_image: skip); first: \(bad[bad.keys.min()!]!)")
        }
        var kept = dataset.subset(keep, name: dataset.name)
        kept.skippedFiles = bad.keys.sorted().map { bad[$0]! }
        return kept
    }

    /// The same images as `shape` (C, H, W): channels converted as PIL's
    /// convert does (luma for 3 -> 1, copies for 1 -> 3) and resized with
    /// antialiased bilinear filtering, as torchvision's Resize((H, W)).
    public func converted(to shape: [Int]) -> ImageDataset {
        precondition(shape.count == 3 && (shape[0] == 1 || shape[0] == 3) && (channels == 1 || channels == 3),
                     "conversion between 1 and 3 channels only")
        let (c, h, w) = (shape[0], shape[1], shape[2])
        let size = c * h * w
        var out = [UInt8](repeating: 0, count: count * size)
        for i in 0..<count {
            var image = Image8(chw: Array(self.image(i)), channels: channels, height: height, width: width)
            if channels != c { image = image.converted(toChannels: c) }
            if height != h || width != w { image = Resize.resize(image, height: h, width: w) }
            let chw = image.chw()
            out.replaceSubrange(i * size ..< (i + 1) * size, with: chw)
        }
        var dataset = ImageDataset(name: name, source: source, pixels: out, labels: labels, channels: c, height: h, width: w,
                                   classCount: classCount)
        dataset.classNames = classNames
        return dataset
    }
}

extension ImageDecoder {
    /// An image file as a model input of `shape` (C, H, W), CHW bytes: decoded
    /// to C channels, the shorter side resized (antialiased bilinear) and a
    /// centre crop, as torchvision's evaluation transform.
    public func decodeInput(_ path: String, shape: [Int]) throws -> [UInt8] {
        try decodeInput(try FileBytes.read(path), file: path, shape: shape)
    }
}
