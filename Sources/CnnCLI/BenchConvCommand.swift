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

/// `cnn-dist bench conv`: GFLOP/s of the three convolution passes for every
/// reference-model conv shape, each next to plain `sgemm` on its equivalent GEMM.
///
/// Equivalent GEMMs (P = N·outH·outW, R = C/g·kh·kw):
/// forward M = K, N = P, K = R; backward-data M = R, N = P, K = K (Wᵀ·dY);
/// backward-weights M = K, N = R, K = P (dY·colᵀ). FLOPs = 2·MACs for each.
public struct BenchConvCommand: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "conv",
        abstract: "Convolution forward / backward-data / backward-weights GFLOP/s against sgemm on the same shapes.")

    @Flag(help: "Print one JSON object instead of a table.")
    var json = false
    @Option(help: "Batch size N.")
    var batch = 64
    @Option(help: "Timed runs per measurement (best of; one warm-up run first).")
    var repeats = 3

    public init() {}

    public func validate() throws {
        guard batch > 0 else { throw ValidationError("--batch must be positive, got \(batch)") }
        guard repeats > 0 else { throw ValidationError("--repeats must be positive, got \(repeats)") }
    }

    public func run() throws {
        var rows: [[String: Any]] = []
        if !json {
            print("batch \(batch), best of \(repeats); GFLOP/s = 2·MACs / time; ratio = pass / sgemm on its equivalent GEMM")
            print(pad("model/layer", 20) + pad("shape", 22) + pad("fwd", 8) + pad("gemm", 8) + pad("ratio", 7)
                  + pad("data", 8) + pad("gemm", 8) + pad("ratio", 7) + pad("wgt", 8) + pad("gemm", 8)
                  + pad("ratio", 7) + "workspace")
        }
        for s in referenceConvShapes {
            let row = try measure(s)
            rows.append(row)
            if !json {
                func f(_ key: String) -> String { String(format: "%.2f", row[key] as! Double) }
                let shape = "\(s.c)x\(s.h)x\(s.w)->\(s.k) k\(s.kernel)s\(s.stride)p\(s.padding)"
                print(pad("\(s.model)/\(s.layer)", 20) + pad(shape, 22)
                      + pad(f("forward_gflops"), 8) + pad(f("forward_gemm_gflops"), 8) + pad(f("forward_ratio"), 7)
                      + pad(f("backward_data_gflops"), 8) + pad(f("backward_data_gemm_gflops"), 8)
                      + pad(f("backward_data_ratio"), 7)
                      + pad(f("backward_weights_gflops"), 8) + pad(f("backward_weights_gemm_gflops"), 8)
                      + pad(f("backward_weights_ratio"), 7) + "\(row["workspace_bytes"]!)")
            }
        }
        if json {
            printJSON(["batch": batch, "repeats": repeats, "panel_budget_bytes": convolutionPanelBudgetBytes,
                       "layers": rows])
        }
    }

    private func pad(_ s: String, _ width: Int) -> String {
        s.count >= width ? s + " " : s + String(repeating: " ", count: width - s.count)
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
        let ws = ConvolutionWorkspace()
        let bias: UnsafePointer<Float>? = s.bias ? UnsafePointer(b.data) : nil
        let gradBias: UnsafeMutablePointer<Float>? = s.bias ? db.data : nil

        let flops = 2 * Double(g.multiplyAccumulates) * Double(n)
        let fwd = bestSeconds(repeats: repeats) {
            convolution2DForward(input: x.data, weight: w.data, bias: bias, output: y.data, batch: n,
                                 geometry: g, workspace: ws)
        }
        let data = bestSeconds(repeats: repeats) {
            convolution2DBackwardData(gradOutput: dy.data, weight: w.data, gradInput: dx.data, batch: n,
                                      geometry: g, workspace: ws)
        }
        let wgt = bestSeconds(repeats: repeats) {
            convolution2DBackwardWeights(input: x.data, gradOutput: dy.data, gradWeight: dw.data, gradBias: gradBias,
                                         batch: n, geometry: g, workspace: ws)
        }

        // Plain sgemm on the equivalent shapes, with operands of the same sizes.
        let p = n * g.outPixels, r = g.panelRows, k = s.k
        let col = filled(r * p)          // the whole-batch im2col matrix (R × P)
        let out = Tensor(shape: [k * p])
        let gemmForward = bestSeconds(repeats: repeats) {
            sgemm(.none, .none, m: k, n: p, k: r, alpha: 1, a: w.data, lda: r, b: col.data, ldb: p,
                  beta: 0, c: out.data, ldc: p)
        }
        let gemmData = bestSeconds(repeats: repeats) {
            sgemm(.transposed, .none, m: r, n: p, k: k, alpha: 1, a: w.data, lda: r, b: dy.data, ldb: p,
                  beta: 0, c: col.data, ldc: p)
        }
        let gemmWeights = bestSeconds(repeats: repeats) {
            sgemm(.none, .transposed, m: k, n: r, k: p, alpha: 1, a: dy.data, lda: p, b: col.data, ldb: p,
                  beta: 1, c: dw.data, ldc: r)
        }
        func gf(_ t: Double) -> Double { flops / t * 1e-9 }
        return [
            "model": s.model, "layer": s.layer,
            "in_channels": s.c, "height": s.h, "width": s.w, "out_channels": s.k,
            "kernel": s.kernel, "stride": s.stride, "padding": s.padding,
            "out_height": g.outHeight, "out_width": g.outWidth,
            "macs_per_sample": g.multiplyAccumulates,
            "gemm_forward_mnk": [k, p, r], "gemm_backward_data_mnk": [r, p, k], "gemm_backward_weights_mnk": [k, r, p],
            "forward_gflops": gf(fwd), "forward_gemm_gflops": gf(gemmForward), "forward_ratio": gemmForward / fwd,
            "backward_data_gflops": gf(data), "backward_data_gemm_gflops": gf(gemmData),
            "backward_data_ratio": gemmData / data,
            "backward_weights_gflops": gf(wgt), "backward_weights_gemm_gflops": gf(gemmWeights),
            "backward_weights_ratio": gemmWeights / wgt,
            "workspace_bytes": ws.bytes, "block_pixels": ws.blockPixels,
        ]
    }
}
