// The index of an image folder laid out as torchvision's ImageFolder reads it:
//   ROOT/train/<class>/**/<file>   ROOT/val/<class>/**/<file>
// Classes are the sub-folders of the split, sorted by name (code point order, as
// Python's sorted()); label i is the i-th class. Files are found recursively (symbolic
// links followed, each directory visited once), ordered as torchvision orders them:
// directories by full path, files by name within a directory.
// Differences from torchvision, each to avoid a silent surprise:
//   - names starting with "." (.DS_Store, ._x.jpg, .ipynb_checkpoints) are skipped;
//   - only .jpg/.jpeg/.png (any case) are samples; files with another image extension
//     torchvision would list (.bmp, .webp, ...) are returned in `unsupported`, every
//     other file in `ignored`, so the caller can report them;
//   - a class folder with no sample is an error naming it (torchvision: "Found no valid
//     file for the classes ...");
//   - the validation split takes the training split's classes and labels by name, so a
//     class missing from val does not shift the labels; a val class unknown to train is an error.
import CnnCore
#if canImport(Glibc)
import Glibc
#else
import Darwin
#endif

/// One image of a folder index.
public struct ImageFolderSample: Equatable, Sendable {
    /// The path of the file (ROOT/split/class/...).
    public var path: String
    /// The index of its class in `ImageFolderIndex.classes`.
    public var label: Int

    public init(path: String, label: Int) {
        self.path = path
        self.label = label
    }
}

/// The files and classes of one split of an image folder.
public struct ImageFolderIndex: Equatable, Sendable {
    /// Extensions (lower case) whose files are samples.
    public static let imageExtensions: Set<String> = ["jpg", "jpeg", "png"]
    /// Other extensions torchvision's ImageFolder takes as images, which we cannot decode.
    public static let unsupportedImageExtensions: Set<String> = ["bmp", "ppm", "pgm", "tif", "tiff", "webp", "gif"]

    /// The split directory, ROOT/split.
    public let directory: String
    /// Class names, sorted; label i is classes[i].
    public let classes: [String]
    /// The samples in torchvision's order.
    public let samples: [ImageFolderSample]
    /// Files with an image extension we do not decode.
    public let unsupported: [String]
    /// Other files, skipped.
    public let ignored: [String]

    /// Indexes `directory` (a split: its sub-folders are the classes).
    /// - classes: the class list to label with (the training split's); nil finds them here.
    public init(directory: String, classes given: [String]? = nil) throws {
        guard FileBytes.isDirectory(directory) else {
            throw CnnError.io(file: directory, reason: "image folder split not found (expected a directory of class folders)")
        }
        let found = try ImageFolderIndex.entries(of: directory).filter { $0.isDirectory }.map(\.name)
            .sorted(by: ImageFolderIndex.codePointOrder)
        guard !found.isEmpty else {
            throw CnnError.invalidData(file: directory, reason: "no class folders (expected \(directory)/<class>/<image files>)")
        }
        let classes = given ?? found
        var labelOf = [String: Int]()
        for (i, name) in classes.enumerated() { labelOf[name] = i }
        var samples = [ImageFolderSample](), unsupported = [String](), ignored = [String]()
        for name in found {
            guard let label = labelOf[name] else {
                throw CnnError.invalidData(file: "\(directory)/\(name)", reason:
                    "class folder '\(name)' is not one of the \(classes.count) training classes")
            }
            let classDirectory = "\(directory)/\(name)"
            var visited = Set<[UInt64]>()
            var folders = [(path: String, files: [String])]()
            try ImageFolderIndex.walk(classDirectory, visited: &visited, into: &folders)
            folders.sort { ImageFolderIndex.codePointOrder($0.path, $1.path) }
            var count = 0
            for folder in folders {
                for file in folder.files {
                    let path = "\(folder.path)/\(file)"
                    let ext = ImageFolderIndex.fileExtension(file)
                    if ImageFolderIndex.imageExtensions.contains(ext) {
                        samples.append(ImageFolderSample(path: path, label: label))
                        count += 1
                    } else if ImageFolderIndex.unsupportedImageExtensions.contains(ext) {
                        unsupported.append(path)
                    } else {
                        ignored.append(path)
                    }
                }
            }
            guard count > 0 else {
                throw CnnError.invalidData(file: classDirectory, reason:
                    "class folder '\(name)' has no .jpg, .jpeg or .png image")
            }
        }
        self.directory = directory
        self.classes = classes
        self.samples = samples
        self.unsupported = unsupported
        self.ignored = ignored
    }

    /// ROOT/train and, if it exists, ROOT/val labelled with the training classes.
    public static func trainAndValidation(root: String) throws -> (train: ImageFolderIndex, validation: ImageFolderIndex?) {
        let train = try ImageFolderIndex(directory: "\(root)/train")
        let valPath = "\(root)/val"
        let validation = FileBytes.exists(valPath) ? try ImageFolderIndex(directory: valPath, classes: train.classes) : nil
        return (train, validation)
    }

    /// Python's string order: by Unicode code point, which is UTF-8 byte order.
    public static func codePointOrder(_ a: String, _ b: String) -> Bool {
        a.utf8.lexicographicallyPrecedes(b.utf8)
    }

    static func fileExtension(_ name: String) -> String {
        guard let dot = name.lastIndex(of: "."), dot != name.startIndex else { return "" }
        return String(name[name.index(after: dot)...]).lowercased()
    }

    struct Entry {
        var name: String
        var isDirectory: Bool
    }

    /// The entries of a directory (symbolic links followed), skipping names that start with ".".
    static func entries(of directory: String) throws -> [Entry] {
        guard let handle = opendir(directory) else {
            throw CnnError.io(file: directory, reason: "cannot list: \(String(cString: strerror(errno)))")
        }
        defer { closedir(handle) }
        var result = [Entry]()
        while let entry = readdir(handle) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw -> String in
                let bytes = raw.bindMemory(to: UInt8.self)
                let end = bytes.firstIndex(of: 0) ?? bytes.count
                return String(decoding: bytes[0..<end], as: UTF8.self)
            }
            if name.hasPrefix(".") { continue }
            var info = stat()
            guard stat("\(directory)/\(name)", &info) == 0 else { continue }   // a dangling link
            let kind = info.st_mode & S_IFMT
            if kind == S_IFDIR || kind == S_IFREG {
                result.append(Entry(name: name, isDirectory: kind == S_IFDIR))
            }
        }
        return result
    }

    /// Every directory under `path` (itself included) with its files sorted by name.
    static func walk(_ path: String, visited: inout Set<[UInt64]>, into folders: inout [(path: String, files: [String])]) throws {
        var info = stat()
        guard stat(path, &info) == 0 else { throw CnnError.io(file: path, reason: "cannot stat: \(String(cString: strerror(errno)))") }
        guard visited.insert([UInt64(info.st_dev), UInt64(info.st_ino)]).inserted else { return }   // a link loop
        let entries = try entries(of: path)
        folders.append((path, entries.filter { !$0.isDirectory }.map(\.name).sorted(by: codePointOrder)))
        for entry in entries where entry.isDirectory {
            try walk("\(path)/\(entry.name)", visited: &visited, into: &folders)
        }
    }
}

/// The file format `ImageFolderWriter` writes.
public enum ImageFileFormat: Equatable, Sendable {
    case png
    case jpeg(quality: Int)
}

/// Writes an in-memory dataset as an image folder split (ROOT/split/<class>/<index>.png|jpg),
/// for example Fashion-MNIST's IDX files as PNGs or JPEGs.
public enum ImageFolderWriter {
    /// The class folder names: the label zero-padded to the width of the largest, so that
    /// sorting the names (as ImageFolderIndex does) keeps the label order; with `names`,
    /// "<padded label>_<name>" (a "/" in a name becomes "-").
    public static func classFolders(classCount: Int, names: [String]? = nil) -> [String] {
        let width = String(max(classCount - 1, 0)).count
        return (0..<classCount).map { label in
            let number = String(label).leftPadded(to: width)
            guard let names, label < names.count else { return number }
            return number + "_" + names[label].replacingSlashes()
        }
    }

    /// Writes every image of `dataset` to ROOT/split/<class folder>/<index>.<ext>, the index
    /// zero-padded to 6 digits. Returns the number of files written.
    @discardableResult
    public static func write(_ dataset: ImageDataset, root: String, split: String, format: ImageFileFormat = .png,
                             classNames: [String]? = nil) throws -> Int {
        let folders = classFolders(classCount: dataset.classCount, names: classNames)
        let splitPath = "\(root)/\(split)"
        try makeDirectory(root)
        try makeDirectory(splitPath)
        for folder in folders { try makeDirectory("\(splitPath)/\(folder)") }
        for i in 0..<dataset.count {
            let image = Image8(chw: Array(dataset.image(i)), channels: dataset.channels,
                               height: dataset.height, width: dataset.width)
            let bytes: [UInt8], ext: String
            switch format {
            case .png:
                bytes = try ImageEncoder.png(image)
                ext = "png"
            case .jpeg(let quality):
                bytes = try ImageEncoder.jpeg(image, quality: quality)
                ext = "jpg"
            }
            let name = String(i).leftPadded(to: 6)
            try FileBytes.write(bytes, to: "\(splitPath)/\(folders[Int(dataset.labels[i])])/\(name).\(ext)")
        }
        return dataset.count
    }

    static func makeDirectory(_ path: String) throws {
        if FileBytes.isDirectory(path) { return }
        guard mkdir(path, 0o755) == 0 || errno == EEXIST else {
            throw CnnError.io(file: path, reason: "cannot create directory: \(String(cString: strerror(errno)))")
        }
    }
}

extension String {
    func replacingSlashes() -> String { String(map { $0 == "/" ? "-" : $0 }) }
}
