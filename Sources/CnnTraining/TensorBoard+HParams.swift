import CnnCore
import Foundation

// The run's hyper-parameters for TensorBoard's HParams dashboard
// (tensorboard/plugins/hparams/plugin_data.proto), written as a summary
// whose metadata names the "hparams" plugin:
//
//     Summary.Value                     SummaryMetadata
//       1 tag       "_hparams_/session_start_info"      1 plugin_data  PluginData
//       8 tensor    TensorProto (empty float, shape [0])   PluginData
//       9 metadata  SummaryMetadata                          1 plugin_name "hparams"
//                                                            2 content     HParamsPluginData
//     HParamsPluginData                 SessionStartInfo
//       1 version             int32 (0)   1 hparams          map<string, google.protobuf.Value>
//       3 session_start_info              5 start_time_secs  double
//       4 session_end_info                SessionEndInfo: 1 status (1 = success), 2 end_time_secs
//     google.protobuf.Value: 2 number_value double, 3 string_value string, 4 bool_value bool
//
// TensorBoard's event loader keeps plugin summaries only when they carry a
// tensor, hence the empty one. With no experiment summary, the dashboard
// takes its metric columns from the run's scalar tags.

/// One hyper-parameter value as TensorBoard shows it.
public enum HyperParameter: Equatable {
    case number(Double)
    case string(String)
    case bool(Bool)
}

extension TensorBoardWriter {
    static let hparamsSessionStartTag = "_hparams_/session_start_info"
    static let hparamsSessionEndTag = "_hparams_/session_end_info"

    /// Records the run's hyper-parameters (the HParams dashboard's columns) at `step`.
    public func addHyperParameters(_ values: [(name: String, value: HyperParameter)], step: Int) throws {
        var start = ProtobufEncoder()
        for (name, value) in values {
            var encoded = ProtobufEncoder()
            switch value {
            case .number(let x): encoded.double(field: 2, x)
            case .string(let s): encoded.string(field: 3, s)
            case .bool(let b): encoded.int64(field: 4, b ? 1 : 0)
            }
            var entry = ProtobufEncoder()
            entry.string(field: 1, name)
            entry.message(field: 2, encoded.bytes)
            start.message(field: 1, entry.bytes)
        }
        start.double(field: 5, Date().timeIntervalSince1970)
        var data = ProtobufEncoder()
        data.message(field: 3, start.bytes)
        try addPluginSummary(tag: Self.hparamsSessionStartTag, plugin: "hparams", content: data.bytes, step: step)
    }

    /// Marks the hyper-parameter session finished successfully (the dashboard's status column).
    public func addHyperParametersEnd(step: Int) throws {
        var end = ProtobufEncoder()
        end.int64(field: 1, 1)   // STATUS_SUCCESS
        end.double(field: 2, Date().timeIntervalSince1970)
        var data = ProtobufEncoder()
        data.message(field: 4, end.bytes)
        try addPluginSummary(tag: Self.hparamsSessionEndTag, plugin: "hparams", content: data.bytes, step: step)
    }

    /// A summary value carrying `content` for `plugin`, with an empty float tensor.
    private func addPluginSummary(tag: String, plugin: String, content: [UInt8], step: Int) throws {
        guard fd >= 0 else { throw CnnError.io(file: path, reason: "\(tag) after close()") }
        var pluginData = ProtobufEncoder()
        pluginData.string(field: 1, plugin)
        pluginData.message(field: 2, content)
        var metadata = ProtobufEncoder()
        metadata.message(field: 1, pluginData.bytes)
        var shape = ProtobufEncoder()
        shape.message(field: 2, [])          // one dimension of size 0
        var tensor = ProtobufEncoder()
        tensor.int64(field: 1, 1)            // DT_FLOAT
        tensor.message(field: 2, shape.bytes)
        var value = ProtobufEncoder()
        value.string(field: 1, tag)
        value.message(field: 8, tensor.bytes)
        value.message(field: 9, metadata.bytes)
        appendSummary(value.bytes, step: step)
    }
}

extension TrainingConfig {
    /// The config's settings as hyper-parameters, by their file keys, sorted
    /// by name (lists and the `augment` mapping as their JSON text).
    public var hyperParameters: [(name: String, value: HyperParameter)] {
        guard let data = try? JSONEncoder().encode(self),
              let fields = try? JSONDecoder().decode([String: JSONField].self, from: data) else { return [] }
        return fields.keys.sorted().map { ($0, fields[$0]!.value) }
    }
}

/// A config field read back from its JSON: a scalar, or any other value as its JSON text.
private struct JSONField: Decodable {
    let value: HyperParameter

    init(from decoder: Decoder) throws {
        let container = try decoder.singleValueContainer()
        if let b = try? container.decode(Bool.self) {
            value = .bool(b)
        } else if let x = try? container.decode(Double.self) {
            value = .number(x)
        } else if let s = try? container.decode(String.self) {
            value = .string(s)
        } else if let list = try? container.decode([JSONField].self) {
            value = .string("[" + list.map(\.text).joined(separator: ", ") + "]")
        } else if let map = try? container.decode([String: JSONField].self) {
            value = .string("{" + map.keys.sorted().map { "\($0): \(map[$0]!.text)" }.joined(separator: ", ") + "}")
        } else {
            value = .string("null")
        }
    }

    var text: String {
        switch value {
        case .bool(let b): return String(b)
        case .number(let x): return x == x.rounded() && abs(x) < 1e15 ? String(Int64(x)) : String(x)
        case .string(let s): return s
        }
    }
}
