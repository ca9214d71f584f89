import CnnCore

/// Layers applied one after the other; children are named "0", "1", ... as
/// in PyTorch's nn.Sequential (or by the names given).
public final class Sequential: Layer, InputGradientOptional {
    public let layers: [Layer]
    public let names: [String]
    public var typeName: String { "Sequential" }
    /// BatchNorms whose output a `MemoryPlan` made recomputed, by the index of the layer that
    /// reads that output: recomputed right before that layer's backward.
    var recomputeBeforeBackward: [Int: BatchNormEngine] = [:]

    public init(_ layers: [Layer], names: [String]? = nil) {
        self.layers = layers
        self.names = names ?? layers.indices.map(String.init)
        precondition(self.names.count == layers.count)
    }

    public var children: [(name: String, layer: Layer)] { Array(zip(names, layers)).map { ($0.0, $0.1) } }

    public func outputShape(for input: [Int]) throws -> [Int] {
        try layers.reduce(input) { try $1.outputShape(for: $0) }
    }

    public func multiplyAccumulates(for input: [Int]) -> Int {
        var shape = input
        var total = 0
        for layer in layers {
            total += layer.multiplyAccumulates(for: shape)
            shape = (try? layer.outputShape(for: shape)) ?? shape
        }
        return total
    }

    public func forward(_ input: Tensor, context: ExecutionContext) -> Tensor {
        var x = input
        if let profiler = context.layerProfiler {
            // Time the children of the outermost profiled Sequential only (no double counting).
            context.layerProfiler = nil
            defer { context.layerProfiler = profiler }
            for (name, layer) in zip(names, layers) {
                let t0 = monotonicSeconds()
                x = layer.forward(x, context: context)
                profiler.record(name: name, type: layer.typeName, forward: monotonicSeconds() - t0)
            }
            return x
        }
        for layer in layers { x = layer.forward(x, context: context) }
        return x
    }

    public func backward(_ gradOutput: Tensor, context: ExecutionContext) -> Tensor {
        var dy = gradOutput
        let profiler = context.layerProfiler
        context.layerProfiler = nil
        let inputGradientWanted = context.needsInputGradient
        defer { context.layerProfiler = profiler; context.needsInputGradient = inputGradientWanted }
        for (index, (name, layer)) in zip(names, layers).enumerated().reversed() {
            // Later children's dL/dx feeds the child before them; only the first child's is ours.
            context.needsInputGradient = index > 0 || inputGradientWanted || !(layer is InputGradientOptional)
            if let engine = recomputeBeforeBackward[index] {
                let t0 = profiler == nil ? 0 : monotonicSeconds()
                engine.recomputeOutput()
                // Timed as the BatchNorm's (two layers back: BatchNorm, fused ReLU, reader).
                profiler?.record(name: names[index - 2], type: layers[index - 2].typeName, backward: monotonicSeconds() - t0)
            }
            let t0 = profiler == nil ? 0 : monotonicSeconds()
            dy = layer.backward(dy, context: context)
            profiler?.record(name: name, type: layer.typeName, backward: monotonicSeconds() - t0)
            context.gradientsReady?(layer)
        }
        return dy
    }
}
