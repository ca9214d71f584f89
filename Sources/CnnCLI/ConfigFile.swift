import Foundation
import Yams
import CnnCore
import CnnData
import CnnTraining

/// Reads a config file (YAML, or JSON, its subset) over the defaults.
///
/// The file is untrusted input: it is size-limited, refused before parsing
/// if it nests deeper than a config can or uses aliases (a few lines of
/// aliases can expand to gigabytes), and every value must be a plain
/// string, number, boolean or list of them. Every error names the file, the
/// line where it can, the field, and what is allowed.
public func loadTrainingConfig(path: String) throws -> TrainingConfig {
    let bytes = try FileBytes.read(path)
    guard bytes.count <= ConfigFileLimits.bytes else {
        throw CnnError.invalidConfig(field: path, value: "\(bytes.count) bytes",
                                     allowed: "a config file of at most \(ConfigFileLimits.bytes) bytes")
    }
    guard let text = String(bytes: bytes, encoding: .utf8) else {
        throw CnnError.invalidConfig(field: path, value: "not UTF-8 text", allowed: "a YAML or JSON text file")
    }
    try ConfigFileLimits.scan(text, path: path)
    let root: Node?
    do { root = try Yams.compose(yaml: text) } catch {
        let message = "\(error)".split(separator: "\n").joined(separator: " | ")
        throw CnnError.invalidConfig(field: path, value: "a YAML syntax error", allowed: "valid YAML (at line:column \(message))")
    }
    guard let mapping = root?.mapping else {
        throw CnnError.invalidConfig(field: path, value: "not a mapping", allowed: "a YAML mapping of config fields")
    }
    let known = TrainingConfig.CodingKeys.allCases.map(\.rawValue)
    var overlay: [String: Any] = [:]
    var lines: [String: Int] = [:]
    for (keyNode, valueNode) in mapping {
        let line = keyNode.mark?.line ?? 0
        guard let key = keyNode.string else {
            throw CnnError.invalidConfig(field: "\(path):\(line)", value: "a non-string key", allowed: "field names")
        }
        guard known.contains(key) else {
            let hint = nearestName(to: key, in: known).map { "did you mean '\($0)'? Known fields: " } ?? ""
            throw CnnError.invalidConfig(field: key, value: "(unknown field in \(path):\(line))",
                                         allowed: hint + known.sorted().joined(separator: ", "))
        }
        let value = try plainValue(valueNode, field: key, at: "\(path):\(line)")
        if let integerOnly = allowedDescription(key), integerOnly.hasPrefix("an integer") {
            // JSON decoding would say only "not valid JSON" for 2.5 or 2^64.
            guard let n = value as? Int else {
                throw CnnError.invalidConfig(field: key, value: "\(value) in \(path):\(line)", allowed: integerOnly)
            }
            overlay[key] = n
        } else {
            overlay[key] = value
        }
        lines[key] = line
    }
    var base = try JSONSerialization.jsonObject(with: JSONEncoder().encode(TrainingConfig())) as! [String: Any]
    for (k, v) in overlay { base[k] = v }
    func named(_ context: DecodingError.Context) -> CnnError {
        let field = context.codingPath.first?.stringValue ?? "?"
        let shown = overlay[field].map { "\($0)" } ?? "?"
        return .invalidConfig(field: field, value: "\(shown) in \(path):\(lines[field] ?? 0)",
                              allowed: allowedDescription(field) ?? context.debugDescription)
    }
    do {
        let config = try JSONDecoder().decode(TrainingConfig.self, from: JSONSerialization.data(withJSONObject: base))
        return config
    } catch let DecodingError.typeMismatch(_, context), let DecodingError.valueNotFound(_, context),
            let DecodingError.dataCorrupted(context) {
        throw named(context)
    } catch CnnError.invalidConfig(let field, let value, let allowed) {
        throw CnnError.invalidConfig(field: field, value: "\(value) in \(path):\(lines[field] ?? 0)", allowed: allowed)
    }
}

/// What a field takes, from its property's type, for type errors.
private func allowedDescription(_ field: String) -> String? {
    // Property names are the keys in camelCase: compare without case and underscores.
    let folded = field.replacingOccurrences(of: "_", with: "")
    guard let child = Mirror(reflecting: TrainingConfig()).children.first(where: { $0.label?.lowercased() == folded })
    else { return nil }
    let type = "\(type(of: child.value))"
    if type.contains("Int") { return type.hasPrefix("Array") ? "a list of integers" : "an integer (no fraction, below 2^63)" }
    if type.contains("Float") || type.contains("Double") { return "a finite number" }
    if type.contains("Bool") { return "true or false" }
    if type.contains("String") { return type.hasPrefix("Array") ? "a list of strings" : "a string" }
    return nil
}

/// A YAML value as a plain JSON value; refuses dates, binary, sets, maps,
/// non-finite numbers and anything else a config field cannot hold.
private func plainValue(_ node: Node, field: String, at place: String) throws -> Any {
    func refuse(_ what: String) -> CnnError {
        .invalidConfig(field: field, value: "\(what) at \(place)", allowed: "a string, a finite number, true/false, or a list of them")
    }
    switch node {
    case .scalar:
        let value = node.any
        switch value {
        case let b as Bool: return b
        case let i as Int: return i
        case let d as Double:
            guard d.isFinite else { throw refuse("the non-finite number \(d)") }
            return d
        case let s as String: return s
        case is NSNull: return NSNull()
        case is Date: throw refuse("a date")
        case is Data: throw refuse("binary data")
        default: throw refuse("a value of type \(type(of: value))")
        }
    case .sequence(let sequence):
        return try sequence.map { item -> Any in
            guard case .scalar = item else { throw refuse("a nested collection") }
            return try plainValue(item, field: field, at: place)
        }
    case .mapping(let mapping) where field == "augment":
        // The one field that is a mapping (of plain values): torchvision's augmentations.
        var object: [String: Any] = [:]
        for (key, value) in mapping {
            guard let name = key.string else { throw refuse("a non-string key") }
            guard case .mapping = value else {
                object[name] = try plainValue(value, field: "augment.\(name)", at: place)
                continue
            }
            throw refuse("a nested mapping")
        }
        return object
    case .mapping:
        throw refuse("a mapping (or a set)")
    default:
        throw refuse("an alias")
    }
}

/// Bounds on a config file, checked on its text before any YAML parser sees it.
enum ConfigFileLimits {
    static let bytes = 1 << 20
    static let depth = 16

    /// Refuses anchors and aliases, and flow or block nesting deeper than `depth`.
    static func scan(_ text: String, path: String) throws {
        var line = 1, column = 0, flowDepth = 0
        var quote: Character? = nil
        var comment = false
        var previous: Character = "\n"
        var atLineStart = true, indent = 0
        for c in text {
            column += 1
            if c == "\n" {
                line += 1; column = 0; comment = false; atLineStart = true; indent = 0; previous = c
                if quote == "'" || quote == "\"" { /* multi-line quoted scalars continue */ }
                continue
            }
            if atLineStart {
                if c == " " || c == "-" { indent += 1; previous = c; continue }
                atLineStart = false
                if indent > 4 * depth {
                    throw CnnError.invalidConfig(field: "\(path):\(line)", value: "nesting \(indent) columns deep",
                                                 allowed: "a config file nested at most \(depth) levels")
                }
            }
            if comment { continue }
            if let q = quote {
                if c == q { quote = nil }
                previous = c
                continue
            }
            switch c {
            case "#" where previous == " " || previous == "\t" || column == 1: comment = true
            case "'", "\"": quote = c
            case "[", "{":
                flowDepth += 1
                if flowDepth > depth {
                    throw CnnError.invalidConfig(field: "\(path):\(line):\(column)", value: "nesting deeper than \(depth) levels",
                                                 allowed: "a config file nested at most \(depth) levels")
                }
            case "]", "}": flowDepth = max(0, flowDepth - 1)
            case "&", "*" where " \t[{,:-".contains(previous) || column == 1:
                throw CnnError.invalidConfig(field: "\(path):\(line):\(column)", value: "a YAML \(c == "&" ? "anchor" : "alias")",
                                             allowed: "plain values (anchors and aliases are not accepted in config files)")
            default: break
            }
            previous = c
        }
    }
}
