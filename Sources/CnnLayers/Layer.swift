import CnnCore

/// What a parameter tensor is for; initialisation schemes read it.
public enum TensorRole: Equatable, Sendable {
    /// A weight of a convolution or linear layer with its fan-in and fan-out.
    case weight(fanIn: Int, fanOut: Int)
    /// A bias of a convolution or linear layer with its fan-in.
    case bias(fanIn: Int)
    /// Starts at one (BatchNorm scale, running variance).
    case ones
    /// Starts at zero (BatchNorm shift, running mean).
    case zeros
    /// A step counter stored as a float, exported as int64 (num_batches_tracked).
    case counter
}

/// One named tensor a layer owns: a trainable parameter or a buffer.
public struct TensorSpec: Equatable, Sendable {
    /// The last component of its PyTorch state_dict name ("weight", "running_mean").
    public var name: String
    public var shape: [Int]
    public var role: TensorRole
    public var count: Int { shape.reduce(1, *) }

    public init(_ name: String, shape: [Int], role: TensorRole) {
        self.name = name
        self.shape = shape
        self.role = role
    }
}

/// Per-call state shared by all layers of a model during a step.
public final class ExecutionContext {
    /// Training mode: batch statistics, dropout on.
    public var training: Bool
    /// Seed of the run; dropout masks derive from it.
    public var seed: UInt64
    /// Optimizer step number (counts from 0).
    public var step: Int
    /// Global index of this rank's first sample in the global batch, so that
    /// randomness keyed by sample does not depend on the number of ranks.
    public var sampleOffset: Int
    /// Sums per-channel statistics across ranks (synchronized BatchNorm);
    /// nil means statistics stay local to this rank.
    public var statisticsReducer: StatisticsReducer?
    /// Called after a layer's backward has finished its parameter gradients,
    /// in backward order; the gradient bucketer hooks in here.
    public var gradientsReady: ((Layer) -> Void)?
    /// When set, the outermost Sequential times each of its children.
    public var layerProfiler: LayerProfiler?
    /// Whether the `backward` being called must return dL/dx. A caller that discards dL/dx
    /// of the model input (training) sets it false; `Model.backward` and Sequential pass it on
    /// only to an `InputGradientOptional` first layer and set it true for every other layer,
    /// so only such a layer ever sees false. Default true.
    public var needsInputGradient = true
    /// The arithmetic of the convolution and linear layers' GEMMs (forward, backward-data,
    /// backward-weights); everything else (normalisation, losses, the optimizer, the
    /// parameters themselves) is fp32 whatever this says. Default fp32.
    public var arithmetic = GemmArithmetic.fp32

    public init(training: Bool = true, seed: UInt64 = 0, step: Int = 0, sampleOffset: Int = 0) {
        self.training = training
        self.seed = seed
        self.step = step
        self.sampleOffset = sampleOffset
    }
}

/// Sums small vectors of statistics over all ranks (in place).
public protocol StatisticsReducer: AnyObject {
    func allreduceSum(_ values: UnsafeMutableBufferPointer<Float>)
}

/// A layer: explicit forward and backward over NCHW tensors.
///
/// - `forward` caches what `backward` needs (the input, masks, statistics)
///   and returns a tensor the layer owns and reuses next step.
/// - `backward` takes dL/dy, **adds** into its parameter gradients (zeroed
///   once per step by the model) and returns dL/dx, also owned by the layer.
/// - Parameters and gradients are not owned by the layer: `bind` hands it
///   pointers into the model's one flat parameter and gradient buffers.
public protocol Layer: AnyObject {
    /// The PyTorch class this corresponds to, for summaries ("Conv2d").
    var typeName: String { get }
    /// Trainable tensors, in state_dict order.
    var parameterSpecs: [TensorSpec] { get }
    /// Non-trainable state (running statistics), in state_dict order.
    var bufferSpecs: [TensorSpec] { get }
    /// Sub-layers with their state_dict name component; empty for leaves.
    var children: [(name: String, layer: Layer)] { get }
    /// Receives storage for its parameters, their gradients, and buffers, in spec order.
    func bind(parameters: [UnsafeMutablePointer<Float>], gradients: [UnsafeMutablePointer<Float>],
              buffers: [UnsafeMutablePointer<Float>])
    /// Shape of one output given one input, both including the batch dimension;
    /// throws `CnnError.shapeMismatch` or `.invalidArgument` naming the layer.
    func outputShape(for input: [Int]) throws -> [Int]
    /// Multiply-accumulates for one sample of the given shape (batch 1).
    func multiplyAccumulates(for input: [Int]) -> Int
    func forward(_ input: Tensor, context: ExecutionContext) -> Tensor
    func backward(_ gradOutput: Tensor, context: ExecutionContext) -> Tensor
}

extension Layer {
    public var parameterSpecs: [TensorSpec] { [] }
    public var bufferSpecs: [TensorSpec] { [] }
    public var children: [(name: String, layer: Layer)] { [] }
    public func bind(parameters: [UnsafeMutablePointer<Float>], gradients: [UnsafeMutablePointer<Float>],
                     buffers: [UnsafeMutablePointer<Float>]) {}
    public func multiplyAccumulates(for input: [Int]) -> Int { 0 }
}

/// A layer whose backward skips dL/dx when `context.needsInputGradient` is false (it still
/// adds its parameter gradients) and then returns an empty tensor: for the first layer of a
/// model nobody reads dL/dx, and for a convolution it is a third of the backward work.
public protocol InputGradientOptional: Layer {}

/// Checks that `shape` has `rank` dimensions, else throws naming the layer.
public func requireRank(_ shape: [Int], _ rank: Int, layer: String, layout: String) throws {
    guard shape.count == rank, shape.allSatisfy({ $0 > 0 }) else {
        throw CnnError.shapeMismatch(layer: layer, expected: "\(rank)-D \(layout)", got: formatShape(shape))
    }
}

/// Seconds per layer (forward and backward), summed over calls, in first-seen order.
public final class LayerProfiler {
    public struct Entry: Equatable, Sendable {
        public var name: String
        public var type: String
        public var forward = 0.0
        public var backward = 0.0
    }
    public private(set) var entries: [Entry] = []
    private var index: [String: Int] = [:]

    public init() {}

    public func record(name: String, type: String, forward: Double = 0, backward: Double = 0) {
        let i: Int
        if let known = index[name] { i = known } else {
            i = entries.count
            index[name] = i
            entries.append(Entry(name: name, type: type))
        }
        entries[i].forward += forward
        entries[i].backward += backward
    }

    /// Forgets what was recorded (e.g. after warm-up steps).
    public func reset() { entries.removeAll(); index.removeAll() }
}
