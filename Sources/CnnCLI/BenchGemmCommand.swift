import ArgumentParser
import CnnCore
import Foundation

/// `cnn-dist bench gemm`: GFLOP/s of our `sgemm` against single-threaded OpenBLAS
/// `cblas_sgemm`, measured side by side in the same run on the same operands.
public struct BenchGemmCommand: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "gemm",
        abstract: "GFLOP/s of our sgemm vs single-threaded OpenBLAS on convolution and linear-layer shapes.",
        discussion: """
            Shapes are MxNxK, optionally followed by :TT where each T is n (as stored) or t \
            (transposed) for A and B, e.g. 64x512x4096:nt. The defaults are the forward GEMMs \
            (M = output channels, N = output pixels × batch 64, K = C_in·kh·kw) of the reference \
            models' convolutions, a linear layer in all four transpose forms, and squares. \
            OpenBLAS is loaded at run time (libopenblas.so.0) and forced to one thread.
            """
    )

    @Flag(name: .long, help: "Print one JSON object instead of a table.")
    var json = false

    @Option(name: .long, help: "Rounds per shape; each round times ours and OpenBLAS once (best of N).")
    var repeats = 10

    @Flag(name: .long, help: "Time with this thread's CPU clock instead of the wall clock: steadier on a busy machine (time spent descheduled is not counted).")
    var threadTime = false

    @Option(name: .long, help: "Compute threads for our sgemm (ComputeThreads.count); OpenBLAS stays at 1. With 2 or more, each shape is also timed at 1 thread and the speed-up printed.")
    var threads = 1

    @Option(name: .long, help: "Comma-separated shapes MxNxK[:TT], e.g. 256x256x256,64x512x4096:nt.")
    var shapes: String?

    @Option(name: .long, help: "fp32: our sgemm against OpenBLAS. bf16: our bf16 GEMM (bf16 operands, fp32 accumulation; needs avx512_bf16) against our fp32 sgemm, side by side.")
    var precision: BenchGemmPrecision = .fp32

    @Option(name: .long, help: "The fp32 micro-kernel: simd (AVX2 6x16) or avx512 (6x32 over two panels, same bits); default: the library's choice.")
    var fp32Kernel: GemmKernel?

    public init() {}

    public func validate() throws {
        guard repeats >= 1 else { throw ValidationError("--repeats must be at least 1, got \(repeats)") }
        guard threads >= 1 else { throw ValidationError("--threads must be at least 1, got \(threads)") }
        guard !(threadTime && threads > 1) else {
            throw ValidationError("--thread-time counts one thread's CPU time; use the wall clock with --threads > 1")
        }
        if let shapes { _ = try GemmBenchShape.parseList(shapes) }
        if precision == .bf16 { try CPUFeatures.current.requireBF16(for: "bench gemm --precision bf16") }
    }

    public func run() throws {
        let list = try shapes.map(GemmBenchShape.parseList) ?? GemmBenchShape.defaults
        let previousKernel = GemmKernel.current
        defer { GemmKernel.current = previousKernel }
        if let fp32Kernel { GemmKernel.current = fp32Kernel }
        if !json { print("fp32 micro-kernel: \(GemmKernel.current.rawValue)") }
        if precision == .bf16 {
            try runBF16(list)
            return
        }
        let blas = OpenBLAS.load()
        var rows: [[String: Any]] = []
        var logRatio = 0.0, ratioCount = 0

        if !json {
            print(blas == nil ? "OpenBLAS not found (libopenblas.so.0): showing our figures only."
                              : "OpenBLAS: \(blas!.path), 1 thread. Best of \(repeats) alternating rounds, "
                                + (threadTime ? "thread CPU time." : "wall clock."))
            if threads > 1 { print("ours with \(threads) compute threads; '1 thread' and 'speed-up' time ours at 1 in the same rounds.") }
            print(pad("shape", 24) + pad("name", 16) + lpad("ours GF/s", 11) + lpad("OpenBLAS GF/s", 15) + lpad("ratio", 8)
                  + (threads > 1 ? lpad("1 thread", 10) + lpad("speed-up", 10) : ""))
        }
        for shape in list {
            let r = measure(shape, blas: blas)
            var row: [String: Any] = ["shape": shape.description, "name": shape.name,
                                      "m": shape.m, "n": shape.n, "k": shape.k, "ours_gflops": r.ours,
                                      "threads": threads,
                                      "trans": (shape.transA == .none ? "n" : "t") + (shape.transB == .none ? "n" : "t")]
            if let theirs = r.openblas {
                let ratio = r.ours / theirs
                row["openblas_gflops"] = theirs
                row["ratio"] = ratio
                logRatio += log(ratio)
                ratioCount += 1
            }
            if let single = r.single {
                row["ours_1thread_gflops"] = single
                row["speedup"] = r.ours / single
            }
            rows.append(row)
            if !json {
                let theirs = r.openblas.map { fmt($0, 1) } ?? "-"
                let ratio = r.openblas.map { fmt(r.ours / $0, 2) } ?? "-"
                print(pad(shape.description, 24) + pad(shape.name, 16) + lpad(fmt(r.ours, 1), 11)
                      + lpad(theirs, 15) + lpad(ratio, 8)
                      + (r.single.map { lpad(fmt($0, 1), 10) + lpad(fmt(r.ours / $0, 2), 10) } ?? ""))
            }
        }
        let geomean: Double? = ratioCount > 0 ? exp(logRatio / Double(ratioCount)) : nil
        if json {
            var object: [String: Any] = ["shapes": rows, "repeats": repeats,
                                         "clock": threadTime ? "thread" : "wall",
                                         "openblas": blas?.path ?? NSNull()]
            object["geomean_ratio"] = geomean ?? NSNull()
            printJSON(object)
        } else if let geomean {
            print("geometric-mean ratio (ours / OpenBLAS): \(fmt(geomean, 3)) over \(ratioCount) shapes")
        }
    }

    /// `--precision bf16`: our bf16 GEMM against our fp32 sgemm on the same operands and
    /// threads, alternating one timing of each per round.
    private func runBF16(_ list: [GemmBenchShape]) throws {
        try CPUFeatures.current.requireBF16(for: "bench gemm --precision bf16")
        let previousThreads = ComputeThreads.count
        ComputeThreads.count = threads
        defer { ComputeThreads.count = previousThreads }
        if !json {
            print("\(CPUFeatures.current.summary)")
            print("ours fp32 sgemm vs ours bf16 GEMM (bf16 operands, fp32 accumulation), \(threads) thread\(threads == 1 ? "" : "s"), "
                  + "best of \(repeats) alternating rounds, " + (threadTime ? "thread CPU time." : "wall clock."))
            print(pad("shape", 24) + pad("name", 16) + lpad("fp32 GF/s", 11) + lpad("bf16 GF/s", 11) + lpad("bf16/fp32", 11))
        }
        var rows: [[String: Any]] = []
        var logRatio = 0.0
        for s in list {
            let (lda, ldb, a, b, flops, calls) = operands(s)
            var c = [Float](repeating: 0, count: s.m * s.n)
            var fp32 = Double.infinity, bf16 = Double.infinity
            a.withUnsafeBufferPointer { pa in b.withUnsafeBufferPointer { pb in c.withUnsafeMutableBufferPointer { pc in
                let (A, B, C) = (pa.baseAddress!, pb.baseAddress!, pc.baseAddress!)
                for _ in 0..<repeats {
                    fp32 = min(fp32, seconds {
                        for _ in 0..<calls {
                            sgemm(s.transA, s.transB, m: s.m, n: s.n, k: s.k, alpha: 1, a: A, lda: lda,
                                  b: B, ldb: ldb, beta: 0, c: C, ldc: s.n)
                        }
                    })
                    bf16 = min(bf16, seconds {
                        for _ in 0..<calls {
                            gemmBF16(s.transA, s.transB, m: s.m, n: s.n, k: s.k, alpha: 1, a: A, lda: lda,
                                     b: B, ldb: ldb, beta: 0, c: C, ldc: s.n)
                        }
                    })
                }
            } } }
            let gf32 = flops * Double(calls) / fp32 * 1e-9, gf16 = flops * Double(calls) / bf16 * 1e-9
            logRatio += log(gf16 / gf32)
            rows.append(["shape": s.description, "name": s.name, "m": s.m, "n": s.n, "k": s.k, "threads": threads,
                         "fp32_gflops": gf32, "bf16_gflops": gf16, "ratio": gf16 / gf32])
            if !json {
                print(pad(s.description, 24) + pad(s.name, 16) + lpad(fmt(gf32, 1), 11) + lpad(fmt(gf16, 1), 11)
                      + lpad(fmt(gf16 / gf32, 2), 11))
            }
        }
        let geomean = list.isEmpty ? 1 : exp(logRatio / Double(list.count))
        if json {
            printJSON(["precision": "bf16", "cpu": CPUFeatures.current.name, "shapes": rows, "repeats": repeats,
                       "clock": threadTime ? "thread" : "wall", "geomean_ratio": geomean])
        } else {
            print("geometric-mean ratio (bf16 / fp32): \(fmt(geomean, 3)) over \(list.count) shapes")
        }
    }

    /// One warmed-up timing of `body`: `bestSeconds` on the wall clock, or the same on the
    /// thread's CPU clock with --thread-time.
    private func seconds(_ body: () -> Void) -> Double {
        guard threadTime else { return bestSeconds(repeats: 1, body) }
        body()
        var start = timespec(), end = timespec()
        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &start)
        body()
        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &end)
        return Double(end.tv_sec - start.tv_sec) + Double(end.tv_nsec - start.tv_nsec) * 1e-9
    }

    /// A shape's stored operands (A is M×K or K×M when transposed, B is K×N or N×K,
    /// filled by a cheap LCG: the values only need to be ordinary floats), its
    /// flops, and enough calls per timing that even small shapes run for tens of milliseconds.
    private func operands(_ s: GemmBenchShape) -> (lda: Int, ldb: Int, a: [Float], b: [Float], flops: Double, calls: Int) {
        var state: UInt64 = 0x9E37_79B9_7F4A_7C15
        let next = { () -> Float in
            state = state &* 6364136223846793005 &+ 1442695040888963407
            return Float(Int32(truncatingIfNeeded: state >> 32)) * 0x1p-31
        }
        let a = (0..<(s.m * s.k)).map { _ in next() }
        let b = (0..<(s.k * s.n)).map { _ in next() }
        let flops = 2.0 * Double(s.m) * Double(s.n) * Double(s.k)
        return (s.transA == .none ? s.k : s.m, s.transB == .none ? s.n : s.k, a, b, flops,
                max(1, Int((2e8 / flops).rounded(.up))))
    }

    /// Best GFLOP/s of ours (at --threads), of OpenBLAS, and of ours at 1 thread when
    /// --threads > 1, alternating one timed run of each per round.
    private func measure(_ s: GemmBenchShape, blas: OpenBLAS?) -> (ours: Double, openblas: Double?, single: Double?) {
        let (lda, ldb, a, b, flops, calls) = operands(s)
        var c = [Float](repeating: 0, count: s.m * s.n)

        var ours = Double.infinity, theirs = Double.infinity, single = Double.infinity
        let previousThreads = ComputeThreads.count
        defer { ComputeThreads.count = previousThreads }
        a.withUnsafeBufferPointer { pa in
            b.withUnsafeBufferPointer { pb in
                c.withUnsafeMutableBufferPointer { pc in
                    let (A, B, C) = (pa.baseAddress!, pb.baseAddress!, pc.baseAddress!)
                    for _ in 0..<repeats {
                        if threads > 1 {
                            ComputeThreads.count = 1
                            single = min(single, seconds {
                                for _ in 0..<calls {
                                    sgemm(s.transA, s.transB, m: s.m, n: s.n, k: s.k, alpha: 1, a: A, lda: lda,
                                          b: B, ldb: ldb, beta: 0, c: C, ldc: s.n)
                                }
                            })
                        }
                        ComputeThreads.count = threads
                        ours = min(ours, seconds {
                            for _ in 0..<calls {
                                sgemm(s.transA, s.transB, m: s.m, n: s.n, k: s.k, alpha: 1, a: A, lda: lda,
                                      b: B, ldb: ldb, beta: 0, c: C, ldc: s.n)
                            }
                        })
                        if let blas {
                            theirs = min(theirs, seconds {
                                for _ in 0..<calls {
                                    blas.sgemm(s.transA, s.transB, s.m, s.n, s.k, A, lda, B, ldb, C, s.n)
                                }
                            })
                        }
                    }
                }
            }
        }
        let gflops = { (seconds: Double) in flops * Double(calls) / seconds * 1e-9 }
        return (gflops(ours), blas == nil ? nil : gflops(theirs), threads > 1 ? gflops(single) : nil)
    }
}

extension GemmKernel: ExpressibleByArgument {}

/// The arithmetic `bench gemm` measures.
enum BenchGemmPrecision: String, ExpressibleByArgument, CaseIterable {
    case fp32, bf16
}

/// One benchmark GEMM: sizes, transposes and a label.
struct GemmBenchShape: CustomStringConvertible {
    var m: Int, n: Int, k: Int
    var transA: Transpose = .none, transB: Transpose = .none
    var name = ""

    var description: String {
        let t = (transA == .none ? "n" : "t") + (transB == .none ? "n" : "t")
        return "\(m)x\(n)x\(k)" + (t == "nn" ? "" : ":" + t)
    }

    /// Convolution forward GEMMs at batch 64, a 4096→512 linear layer (batch 64) in its four
    /// transpose forms, and squares.
    static let defaults: [GemmBenchShape] = [
        .init(m: 50, n: 12544, k: 225, name: "fashion conv2"),
        .init(m: 75, n: 3136, k: 450, name: "fashion conv3"),
        .init(m: 32, n: 65536, k: 27, name: "minivgg c1"),
        .init(m: 32, n: 65536, k: 288, name: "minivgg c2"),
        .init(m: 64, n: 16384, k: 288, name: "minivgg c3"),
        .init(m: 64, n: 16384, k: 576, name: "minivgg c4"),
        .init(m: 16, n: 65536, k: 144, name: "resnet20 s1"),
        .init(m: 32, n: 16384, k: 288, name: "resnet20 s2"),
        .init(m: 64, n: 4096, k: 576, name: "resnet20 s3"),
        .init(m: 64, n: 512, k: 4096, name: "linear"),
        .init(m: 64, n: 512, k: 4096, transB: .transposed, name: "linear"),
        .init(m: 64, n: 512, k: 4096, transA: .transposed, name: "linear"),
        .init(m: 64, n: 512, k: 4096, transA: .transposed, transB: .transposed, name: "linear"),
        .init(m: 256, n: 256, k: 256, name: "square"),
        .init(m: 512, n: 512, k: 512, name: "square"),
        .init(m: 1024, n: 1024, k: 1024, name: "square"),
    ]

    /// Parses "MxNxK[:TT],..." (T is n or t), throwing a message naming the bad entry.
    static func parseList(_ text: String) throws -> [GemmBenchShape] {
        try text.split(separator: ",").map { entry in
            let parts = entry.trimmingCharacters(in: .whitespaces).lowercased().split(separator: ":")
            let dims = parts.first.map { $0.split(separator: "x").compactMap { Int($0) } } ?? []
            guard parts.count <= 2, dims.count == 3, dims.allSatisfy({ $0 > 0 }) else {
                throw ValidationError("bad shape '\(entry)': expected MxNxK[:TT] with positive sizes, e.g. 64x512x4096:nt")
            }
            var shape = GemmBenchShape(m: dims[0], n: dims[1], k: dims[2], name: "custom")
            if parts.count == 2 {
                let t = Array(parts[1])
                guard t.count == 2, t.allSatisfy({ $0 == "n" || $0 == "t" }) else {
                    throw ValidationError("bad transpose '\(parts[1])' in '\(entry)': expected nn, nt, tn or tt")
                }
                shape.transA = t[0] == "t" ? .transposed : .none
                shape.transB = t[1] == "t" ? .transposed : .none
            }
            return shape
        }
    }
}

/// OpenBLAS's `cblas_sgemm`, found at run time so the build does not depend on it.
struct OpenBLAS {
    typealias CblasSgemm = @convention(c) (
        Int32, Int32, Int32, Int32, Int32, Int32, Float, UnsafePointer<Float>?, Int32,
        UnsafePointer<Float>?, Int32, Float, UnsafeMutablePointer<Float>?, Int32) -> Void
    typealias SetNumThreads = @convention(c) (Int32) -> Void

    let path: String
    private let function: CblasSgemm

    /// dlopens libopenblas.so.0 single-threaded; nil if it or cblas_sgemm is missing.
    static func load() -> OpenBLAS? {
        // Before dlopen: OpenBLAS sizes its thread pool when the library initialises.
        setenv("OPENBLAS_NUM_THREADS", "1", 1)
        for path in ["libopenblas.so.0", "libopenblas.so", "libopenblas.dylib"] {
            guard let handle = dlopen(path, RTLD_NOW | RTLD_LOCAL),
                  let symbol = dlsym(handle, "cblas_sgemm") else { continue }
            if let set = dlsym(handle, "openblas_set_num_threads") {
                unsafeBitCast(set, to: SetNumThreads.self)(1)
            }
            return OpenBLAS(path: path, function: unsafeBitCast(symbol, to: CblasSgemm.self))
        }
        return nil
    }

    /// Row-major C = op(A)·op(B) (alpha 1, beta 0), same operands as our sgemm.
    func sgemm(_ transA: Transpose, _ transB: Transpose, _ m: Int, _ n: Int, _ k: Int,
               _ a: UnsafePointer<Float>, _ lda: Int, _ b: UnsafePointer<Float>, _ ldb: Int,
               _ c: UnsafeMutablePointer<Float>, _ ldc: Int) {
        let rowMajor: Int32 = 101, noTrans: Int32 = 111, trans: Int32 = 112
        function(rowMajor, transA == .none ? noTrans : trans, transB == .none ? noTrans : trans,
                 Int32(m), Int32(n), Int32(k), 1, a, Int32(lda), b, Int32(ldb), 0, c, Int32(ldc))
    }
}

private func fmt(_ x: Double, _ digits: Int) -> String { String(format: "%.\(digits)f", x) }
private func pad(_ s: String, _ width: Int) -> String { s.padding(toLength: max(width, s.count + 1), withPad: " ", startingAt: 0) }
private func lpad(_ s: String, _ width: Int) -> String { String(repeating: " ", count: max(1, width - s.count)) + s }
