/// A choice among named cases (dataset, optimizer, schedule, ...): one enum
/// per choice owns its names, so the config file, the command line's help and
/// validation, and every command read the same list.
///
/// Decoding an unknown name throws `CnnError.invalidConfig` naming the field,
/// the value and the allowed names (not Foundation's generic decoding error).
public protocol ConfigChoice: RawRepresentable, CaseIterable, Codable, Sendable where RawValue == String {}

extension ConfigChoice {
    /// "a, b, c": the names a config or a flag may use.
    public static var allowedNames: String { allCases.map(\.rawValue).joined(separator: ", ") }

    /// The case named `text`; throws naming `field` and the allowed names.
    public static func named(_ text: String, field: String) throws -> Self {
        guard let value = Self(rawValue: text) else {
            throw CnnError.invalidConfig(field: field, value: text, allowed: allowedNames)
        }
        return value
    }

    public init(from decoder: Decoder) throws {
        let text = try decoder.singleValueContainer().decode(String.self)
        self = try Self.named(text, field: decoder.codingPath.map(\.stringValue).joined(separator: "."))
    }

    public func encode(to encoder: Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(rawValue)
    }
}
