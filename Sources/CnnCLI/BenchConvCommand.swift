import ArgumentParser
import CnnCore
import Foundation

/// One convolution of a reference model (torch_models.py), per sample.
struct ConvBenchShape {
    var model: String, layer: String
    var c: Int, h: Int, w: Int, k: Int, kernel: Int, stride: Int, padding: Int, bias: Bool
}

/// Every distinct conv shape of the reference models (repeated blocks listed once).
///
/// | model       | layer          | C→K     | input  | kernel | stride | pad |
/// |-------------|----------------|---------|--------|--------|--------|-----|
/// | lenet5      | 0              | 1→6     | 28×28  | 5      | 1      | 2   |
/// | lenet5      | 3              | 6→16    | 14×14  | 5      | 1      | 0   |
/// | fashion-cnn | 0              | 1→25    | 28×28  | 3      | 1      | 1   |
/// | fashion-cnn | 4              | 25→50   | 14×14  | 3      | 1      | 1   |
/// | fashion-cnn | 9              | 50→75   | 7×7    | 3      | 1      | 1   |
/// | minivgg     | 0              | 3→32    | 32×32  | 3      | 1      | 1   |
/// | minivgg     | 3              | 32→32   | 32×32  | 3      | 1      | 1   |
/// | minivgg     | 8              | 32→64   | 16×16  | 3      | 1      | 1   |
/// | minivgg     | 11             | 64→64   | 16×16  | 3      | 1      | 1   |
/// | resnet20    | 0 (stem)       | 3→16    | 32×32  | 3      | 1      | 1   |
/// | resnet20    | 3.c1 (×6 c1/c2)| 16→16   | 32×32  | 3      | 1      | 1   |
/// | resnet20    | 6.c1           | 16→32   | 32×32  | 3      | 2      | 1   |
/// | resnet20    | 6.sc.0         | 16→32   | 32×32  | 1      | 2      | 0   |
/// | resnet20    | 6.c2 (×5)      | 32→32   | 16×16  | 3      | 1      | 1   |
/// | resnet20    | 9.c1           | 32→64   | 16×16  | 3      | 2      | 1   |
/// | resnet20    | 9.sc.0         | 32→64   | 16×16  | 1      | 2      | 0   |
/// | resnet20    | 9.c2 (×5)      | 64→64   | 8×8    | 3      | 1      | 1   |
let referenceConvShapes: [ConvBenchShape] = [
    .init(model: "lenet5", layer: "0", c: 1, h: 28, w: 28, k: 6, kernel: 5, stride: 1, padding: 2, bias: true),
    .init(model: "lenet5", layer: "3", c: 6, h: 14, w: 14, k: 16, kernel: 5, stride: 1, padding: 0, bias: true),
    .init(model: "fashion-cnn", layer: "0", c: 1, h: 28, w: 28, k: 25, kernel: 3, stride: 1, padding: 1, bias: true),
    .init(model: "fashion-cnn", layer: "4", c: 25, h: 14, w: 14, k: 50, kernel: 3, stride: 1, padding: 1, bias: true),
    .init(model: "fashion-cnn", layer: "9", c: 50, h: 7, w: 7, k: 75, kernel: 3, stride: 1, padding: 1, bias: true),
    .init(model: "minivgg", layer: "0", c: 3, h: 32, w: 32, k: 32, kernel: 3, stride: 1, padding: 1, bias: true),
    .init(model: "minivgg", layer: "3", c: 32, h: 32, w: 32, k: 32, kernel: 3, stride: 1, padding: 1, bias: true),
    .init(model: "minivgg", layer: "8", c: 32, h: 16, w: 16, k: 64, kernel: 3, stride: 1, padding: 1, bias: true),
    .init(model: "minivgg", layer: "11", c: 64, h: 16, w: 16, k: 64, kernel: 3, stride: 1, padding: 1, bias: true),
    .init(model: "resnet20", layer: "0", c: 3, h: 32, w: 32, k: 16, kernel: 3, stride: 1, padding: 1, bias: false),
    .init(model: "resnet20", layer: "3.c1", c: 16, h: 32, w: 32, k: 16, kernel: 3, stride: 1, padding: 1, bias: false),
    .init(model: "resnet20", layer: "6.c1", c: 16, h: 32, w: 32, k: 32, kernel: 3, stride: 2, padding: 1, bias: false),
    .init(model: "resnet20", layer: "6.sc.0", c: 16, h: 32, w: 32, k: 32, kernel: 1, stride: 2, padding: 0, bias: false),
    .init(model: "resnet20", layer: "6.c2", c: 32, h: 16, w: 16, k: 32, kernel: 3, stride: 1, padding: 1, bias: false),
    .init(model: "resnet20", layer: "9.c1", c: 32, h: 16, w: 16, k: 64, kernel: 3, stride: 2, padding: 1, bias: false),
    .init(model: "resnet20", layer: "9.sc.0", c: 32, h: 16, w: 16, k: 64, kernel: 1, stride: 2, padding: 0, bias: false),
    .init(model: "resnet20", layer: "9.c2", c: 64, h: 8, w: 8, k: 64, kernel: 3, stride: 1, padding: 1, bias: false),
]

/// The distinct conv shapes of the 224×224 models (torchvision definitions, batch-norm
/// networks, so no bias): resnet18, resnet50 (v1.5: the stride on the 3×3), vgg16, googlenet
/// (3×3 in the "5×5" branch, as torchvision) and densenet121. Repeated blocks are listed once;
/// of GoogLeNet's inception blocks and DenseNet's dense layers, the first and last widths of
/// each stage. `bench conv --shapes 224` (or any `--layer` filter) runs them.
///
/// | kind                         | examples                                              |
/// |------------------------------|-------------------------------------------------------|
/// | 7×7 stride-2 stem, 3→64      | resnet18/conv1, googlenet/conv1, densenet121/conv0    |
/// | 3×3 stride 1                 | resnet18/layer1.0.conv1 (64, 56×56), vgg16 (224×224…) |
/// | 3×3 stride 2                 | resnet18/layer2.0.conv1, resnet50/layer2.0.conv2      |
/// | 1×1 stride 2 (downsample)    | resnet18/layer2.0.downsample, resnet50/layer3.0.downsample |
/// | 1×1 bottleneck               | resnet50/layer1.0.conv1, resnet50/layer4.0.conv3      |
/// | 1×1 on a wide concatenation  | densenet121/block3.24.conv1 (992→128, 14×14)          |
/// | narrow 3×3 (K = 32)          | densenet121/block1.conv2, googlenet/3a.branch3.1      |
let imagenetConvShapes: [ConvBenchShape] = [
    .init(model: "resnet18", layer: "conv1", c: 3, h: 224, w: 224, k: 64, kernel: 7, stride: 2, padding: 3, bias: false),
    .init(model: "resnet18", layer: "layer1.0.conv1", c: 64, h: 56, w: 56, k: 64, kernel: 3, stride: 1, padding: 1, bias: false),
    .init(model: "resnet18", layer: "layer2.0.conv1", c: 64, h: 56, w: 56, k: 128, kernel: 3, stride: 2, padding: 1, bias: false),
    .init(model: "resnet18", layer: "layer2.0.downsample", c: 64, h: 56, w: 56, k: 128, kernel: 1, stride: 2, padding: 0, bias: false),
    .init(model: "resnet18", layer: "layer2.0.conv2", c: 128, h: 28, w: 28, k: 128, kernel: 3, stride: 1, padding: 1, bias: false),
    .init(model: "resnet18", layer: "layer3.0.conv1", c: 128, h: 28, w: 28, k: 256, kernel: 3, stride: 2, padding: 1, bias: false),
    .init(model: "resnet18", layer: "layer3.0.downsample", c: 128, h: 28, w: 28, k: 256, kernel: 1, stride: 2, padding: 0, bias: false),
    .init(model: "resnet18", layer: "layer3.0.conv2", c: 256, h: 14, w: 14, k: 256, kernel: 3, stride: 1, padding: 1, bias: false),
    .init(model: "resnet18", layer: "layer4.0.conv1", c: 256, h: 14, w: 14, k: 512, kernel: 3, stride: 2, padding: 1, bias: false),
    .init(model: "resnet18", layer: "layer4.0.downsample", c: 256, h: 14, w: 14, k: 512, kernel: 1, stride: 2, padding: 0, bias: false),
    .init(model: "resnet18", layer: "layer4.0.conv2", c: 512, h: 7, w: 7, k: 512, kernel: 3, stride: 1, padding: 1, bias: false),
    .init(model: "resnet50", layer: "layer1.0.conv1", c: 64, h: 56, w: 56, k: 64, kernel: 1, stride: 1, padding: 0, bias: false),
    .init(model: "resnet50", layer: "layer1.0.conv2", c: 64, h: 56, w: 56, k: 64, kernel: 3, stride: 1, padding: 1, bias: false),
    .init(model: "resnet50", layer: "layer1.0.conv3", c: 64, h: 56, w: 56, k: 256, kernel: 1, stride: 1, padding: 0, bias: false),
    .init(model: "resnet50", layer: "layer1.1.conv1", c: 256, h: 56, w: 56, k: 64, kernel: 1, stride: 1, padding: 0, bias: false),
    .init(model: "resnet50", layer: "layer2.0.conv1", c: 256, h: 56, w: 56, k: 128, kernel: 1, stride: 1, padding: 0, bias: false),
    .init(model: "resnet50", layer: "layer2.0.conv2", c: 128, h: 56, w: 56, k: 128, kernel: 3, stride: 2, padding: 1, bias: false),
    .init(model: "resnet50", layer: "layer2.0.downsample", c: 256, h: 56, w: 56, k: 512, kernel: 1, stride: 2, padding: 0, bias: false),
    .init(model: "resnet50", layer: "layer2.0.conv3", c: 128, h: 28, w: 28, k: 512, kernel: 1, stride: 1, padding: 0, bias: false),
    .init(model: "resnet50", layer: "layer2.1.conv1", c: 512, h: 28, w: 28, k: 128, kernel: 1, stride: 1, padding: 0, bias: false),
    .init(model: "resnet50", layer: "layer3.0.conv2", c: 256, h: 28, w: 28, k: 256, kernel: 3, stride: 2, padding: 1, bias: false),
    .init(model: "resnet50", layer: "layer3.0.downsample", c: 512, h: 28, w: 28, k: 1024, kernel: 1, stride: 2, padding: 0, bias: false),
    .init(model: "resnet50", layer: "layer3.0.conv3", c: 256, h: 14, w: 14, k: 1024, kernel: 1, stride: 1, padding: 0, bias: false),
    .init(model: "resnet50", layer: "layer3.1.conv1", c: 1024, h: 14, w: 14, k: 256, kernel: 1, stride: 1, padding: 0, bias: false),
    .init(model: "resnet50", layer: "layer4.0.conv2", c: 512, h: 14, w: 14, k: 512, kernel: 3, stride: 2, padding: 1, bias: false),
    .init(model: "resnet50", layer: "layer4.0.downsample", c: 1024, h: 14, w: 14, k: 2048, kernel: 1, stride: 2, padding: 0, bias: false),
    .init(model: "resnet50", layer: "layer4.0.conv3", c: 512, h: 7, w: 7, k: 2048, kernel: 1, stride: 1, padding: 0, bias: false),
    .init(model: "resnet50", layer: "layer4.1.conv1", c: 2048, h: 7, w: 7, k: 512, kernel: 1, stride: 1, padding: 0, bias: false),
    .init(model: "vgg16", layer: "features.0", c: 3, h: 224, w: 224, k: 64, kernel: 3, stride: 1, padding: 1, bias: false),
    .init(model: "vgg16", layer: "features.2", c: 64, h: 224, w: 224, k: 64, kernel: 3, stride: 1, padding: 1, bias: false),
    .init(model: "vgg16", layer: "features.5", c: 64, h: 112, w: 112, k: 128, kernel: 3, stride: 1, padding: 1, bias: false),
    .init(model: "vgg16", layer: "features.7", c: 128, h: 112, w: 112, k: 128, kernel: 3, stride: 1, padding: 1, bias: false),
    .init(model: "vgg16", layer: "features.10", c: 128, h: 56, w: 56, k: 256, kernel: 3, stride: 1, padding: 1, bias: false),
    .init(model: "vgg16", layer: "features.12", c: 256, h: 56, w: 56, k: 256, kernel: 3, stride: 1, padding: 1, bias: false),
    .init(model: "vgg16", layer: "features.17", c: 256, h: 28, w: 28, k: 512, kernel: 3, stride: 1, padding: 1, bias: false),
    .init(model: "vgg16", layer: "features.19", c: 512, h: 28, w: 28, k: 512, kernel: 3, stride: 1, padding: 1, bias: false),
    .init(model: "vgg16", layer: "features.24", c: 512, h: 14, w: 14, k: 512, kernel: 3, stride: 1, padding: 1, bias: false),
    .init(model: "googlenet", layer: "conv1", c: 3, h: 224, w: 224, k: 64, kernel: 7, stride: 2, padding: 3, bias: false),
    .init(model: "googlenet", layer: "conv2", c: 64, h: 56, w: 56, k: 64, kernel: 1, stride: 1, padding: 0, bias: false),
    .init(model: "googlenet", layer: "conv3", c: 64, h: 56, w: 56, k: 192, kernel: 3, stride: 1, padding: 1, bias: false),
    .init(model: "googlenet", layer: "3a.branch1", c: 192, h: 28, w: 28, k: 64, kernel: 1, stride: 1, padding: 0, bias: false),
    .init(model: "googlenet", layer: "3a.branch2.0", c: 192, h: 28, w: 28, k: 96, kernel: 1, stride: 1, padding: 0, bias: false),
    .init(model: "googlenet", layer: "3a.branch2.1", c: 96, h: 28, w: 28, k: 128, kernel: 3, stride: 1, padding: 1, bias: false),
    .init(model: "googlenet", layer: "3a.branch3.0", c: 192, h: 28, w: 28, k: 16, kernel: 1, stride: 1, padding: 0, bias: false),
    .init(model: "googlenet", layer: "3a.branch3.1", c: 16, h: 28, w: 28, k: 32, kernel: 3, stride: 1, padding: 1, bias: false),
    .init(model: "googlenet", layer: "3b.branch2.1", c: 128, h: 28, w: 28, k: 192, kernel: 3, stride: 1, padding: 1, bias: false),
    .init(model: "googlenet", layer: "3b.branch3.1", c: 32, h: 28, w: 28, k: 96, kernel: 3, stride: 1, padding: 1, bias: false),
    .init(model: "googlenet", layer: "4a.branch1", c: 480, h: 14, w: 14, k: 192, kernel: 1, stride: 1, padding: 0, bias: false),
    .init(model: "googlenet", layer: "4a.branch2.1", c: 96, h: 14, w: 14, k: 208, kernel: 3, stride: 1, padding: 1, bias: false),
    .init(model: "googlenet", layer: "4a.branch3.1", c: 16, h: 14, w: 14, k: 48, kernel: 3, stride: 1, padding: 1, bias: false),
    .init(model: "googlenet", layer: "4e.branch2.1", c: 160, h: 14, w: 14, k: 320, kernel: 3, stride: 1, padding: 1, bias: false),
    .init(model: "googlenet", layer: "5b.branch1", c: 832, h: 7, w: 7, k: 384, kernel: 1, stride: 1, padding: 0, bias: false),
    .init(model: "googlenet", layer: "5b.branch2.1", c: 192, h: 7, w: 7, k: 384, kernel: 3, stride: 1, padding: 1, bias: false),
    .init(model: "googlenet", layer: "5b.branch3.1", c: 48, h: 7, w: 7, k: 128, kernel: 3, stride: 1, padding: 1, bias: false),
    .init(model: "densenet121", layer: "conv0", c: 3, h: 224, w: 224, k: 64, kernel: 7, stride: 2, padding: 3, bias: false),
    .init(model: "densenet121", layer: "block1.1.conv1", c: 64, h: 56, w: 56, k: 128, kernel: 1, stride: 1, padding: 0, bias: false),
    .init(model: "densenet121", layer: "block1.6.conv1", c: 224, h: 56, w: 56, k: 128, kernel: 1, stride: 1, padding: 0, bias: false),
    .init(model: "densenet121", layer: "block1.conv2", c: 128, h: 56, w: 56, k: 32, kernel: 3, stride: 1, padding: 1, bias: false),
    .init(model: "densenet121", layer: "transition1", c: 256, h: 56, w: 56, k: 128, kernel: 1, stride: 1, padding: 0, bias: false),
    .init(model: "densenet121", layer: "block2.12.conv1", c: 480, h: 28, w: 28, k: 128, kernel: 1, stride: 1, padding: 0, bias: false),
    .init(model: "densenet121", layer: "block2.conv2", c: 128, h: 28, w: 28, k: 32, kernel: 3, stride: 1, padding: 1, bias: false),
    .init(model: "densenet121", layer: "transition2", c: 512, h: 28, w: 28, k: 256, kernel: 1, stride: 1, padding: 0, bias: false),
    .init(model: "densenet121", layer: "block3.24.conv1", c: 992, h: 14, w: 14, k: 128, kernel: 1, stride: 1, padding: 0, bias: false),
    .init(model: "densenet121", layer: "block3.conv2", c: 128, h: 14, w: 14, k: 32, kernel: 3, stride: 1, padding: 1, bias: false),
    .init(model: "densenet121", layer: "transition3", c: 1024, h: 14, w: 14, k: 512, kernel: 1, stride: 1, padding: 0, bias: false),
    .init(model: "densenet121", layer: "block4.16.conv1", c: 992, h: 7, w: 7, k: 128, kernel: 1, stride: 1, padding: 0, bias: false),
    .init(model: "densenet121", layer: "block4.conv2", c: 128, h: 7, w: 7, k: 32, kernel: 3, stride: 1, padding: 1, bias: false),
]

/// `cnn-dist bench conv`: GFLOP/s of the three convolution passes for every
/// reference-model conv shape, each next to plain `sgemm` on its equivalent GEMM.
///
/// Equivalent GEMMs (P = N·outH·outW, R = C/g·kh·kw):
/// forward M = K, N = P, K = R; backward-data M = R, N = P, K = K (Wᵀ·dY);
/// backward-weights M = K, N = R, K = P (dY·colᵀ). FLOPs = 2·MACs for each.
/// Each GEMM runs on operands of the layer's real sizes (the whole-batch
/// R × P column matrix), so the reference is the GEMM the layer would be
/// without im2col, col2im and blocking.
///
/// Timing: per pass, `repeats` rounds each time the pass once and its GEMM
/// once (each timing loops enough calls to run ≥ 20 ms), best of the rounds;
/// alternating keeps the pair exposed to the same load on a shared machine.
public struct BenchConvCommand: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "conv",
        abstract: "Convolution forward / backward-data / backward-weights GFLOP/s against sgemm on the same shapes.")

    @Flag(help: "Print one JSON object instead of a table.")
    var json = false
    @Option(help: "Batch size N.")
    var batch = 64
    @Option(help: "Alternating rounds per pass (best of; one warm-up run first).")
    var repeats = 3
    @Option(help: "Compute threads (ComputeThreads.count) for the passes and their GEMMs.")
    var threads = 1
    @Flag(name: .long, help: "Time with this thread's CPU clock instead of the wall clock: steadier on a busy machine (time spent descheduled is not counted). Single thread only.")
    var threadTime = false
    @Option(help: "Only layers whose model/layer name contains this text, e.g. resnet20/6 or resnet18/layer2 (searches both shape sets unless --shapes is given).")
    var layer: String?
    @Option(help: "Shape set: small (lenet5, fashion-cnn, minivgg, resnet20 at their input sizes), 224 (resnet18/50, vgg16, googlenet, densenet121 at 224x224) or all. Default: small, or all with --layer.")
    var shapes: ShapeSet?
    @Flag(name: .long, help: "Keep every pass on the stored im2col panel (no packed im2col), to compare the two side by side.")
    var panelOnly = false
    @Option(name: .long, help: "Implicit B wherever packed im2col applies: auto (chosen per layer), on or off, to compare them side by side.")
    var implicitB: ImplicitBChoice = .auto

    @Option(name: .long, help: "GEMM arithmetic of all three passes: fp32, or bf16 (bf16 operands, fp32 accumulation; needs avx512_bf16; its gemm column is then our bf16 GEMM).")
    var precision: ComputePrecision = .fp32

    private var computePrecision: ComputePrecision { precision }

    enum ShapeSet: String, ExpressibleByArgument, CaseIterable {
        case small, imagenet = "224", all
    }

    enum ImplicitBChoice: String, ExpressibleByArgument, CaseIterable {
        case auto, on, off
        var forced: Bool? { self == .auto ? nil : self == .on }
    }

    public init() {}

    public func validate() throws {
        guard batch > 0 else { throw ValidationError("--batch must be positive, got \(batch)") }
        guard repeats > 0 else { throw ValidationError("--repeats must be positive, got \(repeats)") }
        guard threads > 0 else { throw ValidationError("--threads must be positive, got \(threads)") }
        if precision == .bf16 { try CPUFeatures.current.requireBF16(for: "bench conv --precision bf16") }
        guard !(threadTime && threads > 1) else {
            throw ValidationError("--thread-time counts one thread's CPU time; use the wall clock with --threads > 1")
        }
    }

    public func run() throws {
        let previousThreads = ComputeThreads.count
        ComputeThreads.count = threads
        defer { ComputeThreads.count = previousThreads }
        let set = shapes ?? (layer == nil ? .small : .all)
        let candidates = set == .small ? referenceConvShapes
            : set == .imagenet ? imagenetConvShapes : referenceConvShapes + imagenetConvShapes
        let shapes = candidates.filter { s in layer.map { "\(s.model)/\(s.layer)".contains($0) } ?? true }
        var rows: [[String: Any]] = []
        if !json {
            print("precision \(computePrecision.rawValue) (all three passes), fp32 GEMM kernel \(GemmKernel.current.rawValue); "
                  + "batch \(batch), \(threads) thread\(threads == 1 ? "" : "s"), best of \(repeats) alternating rounds, \(threadTime ? "thread CPU time" : "wall clock"); "
                  + "GFLOP/s = 2·MACs / time; ratio = pass / sgemm on its equivalent GEMM")
            print(pad("model/layer", 30) + pad("shape", 25) + pad("fwd", 8) + pad("gemm", 8) + pad("ratio", 7)
                  + pad("data", 8) + pad("gemm", 8) + pad("ratio", 7) + pad("wgt", 8) + pad("gemm", 8)
                  + pad("ratio", 7) + pad("workspace", 10) + "path (fwd/data/wgt)")
        }
        for s in shapes {
            let row = try measure(s)
            rows.append(row)
            if !json {
                func f(_ key: String) -> String { String(format: "%.2f", row[key] as! Double) }
                let shape = "\(s.c)x\(s.h)x\(s.w)->\(s.k) k\(s.kernel)s\(s.stride)p\(s.padding)"
                print(pad("\(s.model)/\(s.layer)", 30) + pad(shape, 25)
                      + pad(f("forward_gflops"), 8) + pad(f("forward_gemm_gflops"), 8) + pad(f("forward_ratio"), 7)
                      + pad(f("backward_data_gflops"), 8) + pad(f("backward_data_gemm_gflops"), 8)
                      + pad(f("backward_data_ratio"), 7)
                      + pad(f("backward_weights_gflops"), 8) + pad(f("backward_weights_gemm_gflops"), 8)
                      + pad(f("backward_weights_ratio"), 7) + pad("\(row["workspace_bytes"]!)", 10)
                      + "\(row["path"]!)")
            }
        }
        if !json && !rows.isEmpty {
            let ratios = rows.flatMap { r in
                ["forward_ratio", "backward_data_ratio", "backward_weights_ratio"].map { r[$0] as! Double }
            }
            let low = ratios.filter { $0 < 0.70 }.count
            print(String(format: "min ratio %.2f, geometric mean %.2f; %d of %d passes below 0.70",
                         ratios.min()!, exp(ratios.map(log).reduce(0, +) / Double(ratios.count)), low, ratios.count))
        }
        if json {
            printJSON(["batch": batch, "repeats": repeats, "threads": threads, "clock": threadTime ? "thread" : "wall",
                       "panel_budget_bytes": convolutionPanelBudgetBytes, "layers": rows])
        }
    }

    private func pad(_ s: String, _ width: Int) -> String {
        s.count >= width ? s + " " : s + String(repeating: " ", count: width - s.count)
    }

    /// Best seconds per call of `pass` and of `gemm`, alternating one timing of each per round.
    private func timePair(_ pass: () -> Void, _ gemm: () -> Void) -> (pass: Double, gemm: Double) {
        // Warm-up, and the call count that makes one timing last ≥ 20 ms.
        let once = bestSeconds(repeats: 1, pass)
        let calls = max(1, Int((0.02 / max(once, 1e-7)).rounded(.up)))
        gemm()
        var best = (pass: Double.infinity, gemm: Double.infinity)
        for _ in 0..<repeats {
            best.pass = min(best.pass, seconds(calls, pass))
            best.gemm = min(best.gemm, seconds(calls, gemm))
        }
        return best
    }

    /// Seconds per call of `calls` back-to-back calls: wall clock, or this
    /// thread's CPU clock with --thread-time.
    private func seconds(_ calls: Int, _ body: () -> Void) -> Double {
        if threadTime {
            var start = timespec(), end = timespec()
            clock_gettime(CLOCK_THREAD_CPUTIME_ID, &start)
            for _ in 0..<calls { body() }
            clock_gettime(CLOCK_THREAD_CPUTIME_ID, &end)
            return (Double(end.tv_sec - start.tv_sec) + Double(end.tv_nsec - start.tv_nsec) * 1e-9) / Double(calls)
        }
        let start = DispatchTime.now().uptimeNanoseconds
        for _ in 0..<calls { body() }
        return Double(DispatchTime.now().uptimeNanoseconds - start) * 1e-9 / Double(calls)
    }

    private func measure(_ s: ConvBenchShape) throws -> [String: Any] {
        let g = try Conv2DGeometry(layer: "\(s.model)/\(s.layer)", inChannels: s.c, height: s.h, width: s.w,
                                   outChannels: s.k, kernelHeight: s.kernel, kernelWidth: s.kernel,
                                   strideHeight: s.stride, strideWidth: s.stride,
                                   padding: .explicit(top: s.padding, bottom: s.padding, left: s.padding, right: s.padding))
        let n = batch
        var rng = SplitMix64(seed: 1)
        func filled(_ count: Int) -> Tensor {
            let t = Tensor(shape: [count])
            for i in 0..<count { t[i] = rng.nextUnitFloat() - 0.5 }
            return t
        }
        let x = filled(n * s.c * s.h * s.w)
        let w = filled(s.k * g.panelRows)
        let b = filled(s.k)
        let y = Tensor(shape: [n * s.k * g.outPixels])
        let dy = filled(y.count)
        let dx = Tensor(shape: [x.count])
        let dw = Tensor(shape: [w.count]), db = Tensor(shape: [s.k])
        let ws = ConvolutionWorkspace(allowsPackedIm2col: !panelOnly, implicitB: implicitB.forced,
                                      precision: computePrecision)
        let bias: UnsafePointer<Float>? = s.bias ? UnsafePointer(b.data) : nil
        let gradBias: UnsafeMutablePointer<Float>? = s.bias ? db.data : nil

        // Plain sgemm on the equivalent shapes, with operands of the same sizes.
        let p = n * g.outPixels, r = g.panelRows, k = s.k
        let col = filled(r * p)          // the whole-batch im2col matrix (R × P)
        let out = Tensor(shape: [k * p])

        let flops = 2 * Double(g.multiplyAccumulates) * Double(n)
        let fwd = timePair({
            convolution2DForward(input: x.data, weight: w.data, bias: bias, output: y.data, batch: n,
                                 geometry: g, workspace: ws)
        }, {
            if computePrecision == .bf16 {
                gemmBF16(.none, .none, m: k, n: p, k: r, alpha: 1, a: w.data, lda: r, b: col.data, ldb: p,
                         beta: 0, c: out.data, ldc: p)
            } else {
                sgemm(.none, .none, m: k, n: p, k: r, alpha: 1, a: w.data, lda: r, b: col.data, ldb: p,
                      beta: 0, c: out.data, ldc: p)
            }
        })
        let data = timePair({
            convolution2DBackwardData(gradOutput: dy.data, weight: w.data, gradInput: dx.data, batch: n,
                                      geometry: g, workspace: ws)
        }, {
            sgemm(.transposed, .none, m: r, n: p, k: k, alpha: 1, a: w.data, lda: r, b: dy.data, ldb: p,
                  beta: 0, c: col.data, ldc: p)
        })
        let wgt = timePair({
            convolution2DBackwardWeights(input: x.data, gradOutput: dy.data, gradWeight: dw.data, gradBias: gradBias,
                                         batch: n, geometry: g, workspace: ws)
        }, {
            sgemm(.none, .transposed, m: k, n: r, k: p, alpha: 1, a: dy.data, lda: p, b: col.data, ldb: p,
                  beta: 1, c: dw.data, ldc: r)
        })
        func gf(_ t: Double) -> Double { flops / t * 1e-9 }
        return [
            "model": s.model, "layer": s.layer,
            "in_channels": s.c, "height": s.h, "width": s.w, "out_channels": s.k,
            "kernel": s.kernel, "stride": s.stride, "padding": s.padding,
            "out_height": g.outHeight, "out_width": g.outWidth,
            "macs_per_sample": g.multiplyAccumulates,
            "gemm_forward_mnk": [k, p, r], "gemm_backward_data_mnk": [r, p, k], "gemm_backward_weights_mnk": [k, r, p],
            "forward_gflops": gf(fwd.pass), "forward_gemm_gflops": gf(fwd.gemm), "forward_ratio": fwd.gemm / fwd.pass,
            "backward_data_gflops": gf(data.pass), "backward_data_gemm_gflops": gf(data.gemm),
            "backward_data_ratio": data.gemm / data.pass,
            "backward_weights_gflops": gf(wgt.pass), "backward_weights_gemm_gflops": gf(wgt.gemm),
            "backward_weights_ratio": wgt.gemm / wgt.pass,
            "workspace_bytes": ws.bytes, "block_pixels": ws.blockPixels, "path": ws.path.description,
            "forward_path": ws.path.forward.rawValue, "backward_data_path": ws.path.backwardData.name,
            "backward_weights_path": ws.path.backwardWeights.rawValue,
        ]
    }
}
