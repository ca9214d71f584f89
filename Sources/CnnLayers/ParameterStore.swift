import CnnCore

/// One tensor in the flat buffers: its full state_dict name and where it lives.
public struct ParameterEntry: Equatable, Sendable {
    public var name: String
    public var shape: [Int]
    public var role: TensorRole
    /// Offset in elements into `parameters`/`gradients` (trainable) or `buffers`.
    public var offset: Int
    public var isTrainable: Bool
    public var count: Int { shape.reduce(1, *) }

    /// An entry of the table (the store builds its own; tests and tools describe layouts).
    public init(name: String, shape: [Int], role: TensorRole, offset: Int, isTrainable: Bool) {
        self.name = name
        self.shape = shape
        self.role = role
        self.offset = offset
        self.isTrainable = isTrainable
    }
}

/// One flat parameter buffer, one flat gradient buffer mirroring it, and one
/// flat buffer for non-trainable state, with a table of (name, offset, shape).
/// The optimizer is one loop, the allreduce one call, a checkpoint a header
/// plus raw floats.
public final class ParameterStore {
    public let parameters: Tensor
    public let gradients: Tensor
    public let buffers: Tensor
    /// Trainable entries in state_dict order.
    public let parameterEntries: [ParameterEntry]
    /// Buffer entries in state_dict order.
    public let bufferEntries: [ParameterEntry]
    /// For each leaf layer with parameters: the range of `parameters` it owns.
    public let layerRanges: [ObjectIdentifier: Range<Int>]

    /// Walks the layer tree, lays every tensor out contiguously in state_dict
    /// order, and binds each layer to its slices.
    public init(root: Layer) {
        var paramEntries: [ParameterEntry] = []
        var bufferEntries: [ParameterEntry] = []
        var leaves: [(Layer, [Int], [Int])] = []   // layer, its param entry indices, its buffer entry indices
        var paramCount = 0, bufferCount = 0

        func visit(_ layer: Layer, prefix: String) {
            var pIdx: [Int] = [], bIdx: [Int] = []
            // PyTorch's state_dict lists a module's own parameters, then its
            // own buffers, then recurses into children.
            for spec in layer.parameterSpecs {
                pIdx.append(paramEntries.count)
                paramEntries.append(ParameterEntry(name: prefix + spec.name, shape: spec.shape, role: spec.role,
                                                   offset: paramCount, isTrainable: true))
                paramCount += spec.count
            }
            for spec in layer.bufferSpecs {
                bIdx.append(bufferEntries.count)
                bufferEntries.append(ParameterEntry(name: prefix + spec.name, shape: spec.shape, role: spec.role,
                                                    offset: bufferCount, isTrainable: false))
                bufferCount += spec.count
            }
            if !pIdx.isEmpty || !bIdx.isEmpty { leaves.append((layer, pIdx, bIdx)) }
            for child in layer.children { visit(child.layer, prefix: prefix + child.name + ".") }
        }
        visit(root, prefix: "")

        let parameters = Tensor(shape: [paramCount])
        let gradients = Tensor(shape: [paramCount])
        let buffers = Tensor(shape: [bufferCount])
        self.parameters = parameters
        self.gradients = gradients
        self.buffers = buffers
        parameterEntries = paramEntries
        self.bufferEntries = bufferEntries
        var ranges: [ObjectIdentifier: Range<Int>] = [:]
        for (layer, pIdx, bIdx) in leaves {
            let p = pIdx.map { parameters.data + paramEntries[$0].offset }
            let g = pIdx.map { gradients.data + paramEntries[$0].offset }
            let b = bIdx.map { buffers.data + bufferEntries[$0].offset }
            layer.bind(parameters: p, gradients: g, buffers: b)
            if let first = pIdx.first, let last = pIdx.last {
                ranges[ObjectIdentifier(layer)] = paramEntries[first].offset ..< (paramEntries[last].offset + paramEntries[last].count)
            }
        }
        layerRanges = ranges
    }

    /// Total trainable elements.
    public var parameterCount: Int { parameters.count }

    /// Sets all gradients to zero (once per step; backward adds into them).
    public func zeroGradients() { gradients.zero() }

    /// Fills parameters and buffers as PyTorch's default initialisation does:
    /// weights and biases uniform in ±1/sqrt(fan_in), BatchNorm scale 1, shift 0.
    public func initialize(scheme: InitScheme = .pytorchDefault, seed: UInt64) {
        var rng = SplitMix64(seed: seed)
        for entry in parameterEntries {
            fill(parameters.data + entry.offset, entry, scheme: scheme, rng: &rng)
        }
        for entry in bufferEntries {
            fill(buffers.data + entry.offset, entry, scheme: scheme, rng: &rng)
        }
    }

    private func fill(_ p: UnsafeMutablePointer<Float>, _ entry: ParameterEntry, scheme: InitScheme,
                      rng: inout SplitMix64) {
        let n = entry.count
        switch entry.role {
        case .ones: p.update(repeating: 1, count: n)
        case .zeros, .counter: p.update(repeating: 0, count: n)
        case let .bias(fanIn):
            let bound = fanIn > 0 ? 1 / Float(fanIn).squareRoot() : 0
            if scheme == .pytorchDefault {
                for i in 0..<n { p[i] = (rng.nextUnitFloat() * 2 - 1) * bound }
            } else {
                p.update(repeating: 0, count: n)
            }
        case let .weight(fanIn, fanOut):
            switch scheme {
            case .pytorchDefault:
                // kaiming_uniform_(a = sqrt(5)) reduces to U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
                let bound = 1 / Float(fanIn).squareRoot()
                for i in 0..<n { p[i] = (rng.nextUnitFloat() * 2 - 1) * bound }
            case .kaimingNormal:
                // He et al. 2015, fan_in mode, ReLU gain sqrt(2).
                let std = (2 / Float(fanIn)).squareRoot()
                for i in 0..<n { p[i] = rng.nextNormal() * std }
            case .xavierUniform:
                // Glorot & Bengio 2010.
                let bound = (6 / Float(fanIn + fanOut)).squareRoot()
                for i in 0..<n { p[i] = (rng.nextUnitFloat() * 2 - 1) * bound }
            }
        }
    }
}

/// How weights start.
public enum InitScheme: String, ConfigChoice {
    /// PyTorch's defaults for Conv2d / Linear (uniform ±1/sqrt(fan_in)).
    case pytorchDefault = "pytorch"
    /// He normal, fan-in mode; biases zero.
    case kaimingNormal = "kaiming"
    /// Glorot uniform; biases zero.
    case xavierUniform = "xavier"
}
