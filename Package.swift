// swift-tools-version:6.0
import Foundation
import PackageDescription

// The fast path (AVX2 + FMA for Swift's SIMD types) is the default build on x86-64.
// CNN_DIST_PORTABLE=1 swift build  gives the portable path (baseline SSE2 / NEON).
let portable = ProcessInfo.processInfo.environment["CNN_DIST_PORTABLE"] == "1"
#if arch(x86_64)
let simdFlags: [String] = portable ? [] : ["-Xcc", "-mavx2", "-Xcc", "-mfma", "-Xcc", "-mf16c"]
#else
let simdFlags: [String] = []
#endif
let simdDefines: [SwiftSetting] = portable ? [.define("CNN_PORTABLE")] : [.define("CNN_AVX2")]
let kernelSettings: [SwiftSetting] = simdDefines + [
    .unsafeFlags(simdFlags + ["-Ounchecked", "-wmo"], .when(configuration: .release)),
    .unsafeFlags(simdFlags, .when(configuration: .debug)),
]
let plainSettings: [SwiftSetting] = simdDefines + [.unsafeFlags(simdFlags)]

// The MPI implementation: Open MPI by default (pkg-config ompi-c, libopenmpi-dev);
// CNN_DIST_MPI=mpich swift build --scratch-path .build-mpich  builds against MPICH
// (pkg-config mpich, libmpich-dev). Both compile the same standard-MPI shim
// (Sources/CMPI/shim.h) as the module CMPI; a separate scratch path keeps the two
// builds from overwriting each other. Tests that launch ranks take the matching
// launcher from CNN_DIST_MPIRUN (e.g. mpirun.mpich).
let mpiChoice = ProcessInfo.processInfo.environment["CNN_DIST_MPI"]?.lowercased() ?? "openmpi"
guard ["openmpi", "mpich"].contains(mpiChoice) else {
    fatalError("CNN_DIST_MPI=\(mpiChoice) is not supported; use openmpi (the default) or mpich")
}
let mpiTarget: Target = mpiChoice == "mpich"
    ? .systemLibrary(name: "CMPI", path: "Sources/CMPIMPICH", pkgConfig: "mpich", providers: [.apt(["libmpich-dev"])])
    : .systemLibrary(name: "CMPI", pkgConfig: "ompi-c", providers: [.apt(["libopenmpi-dev"])])
let mpiDefines: [SwiftSetting] = mpiChoice == "mpich" ? [.define("CNN_MPICH")] : []

let package = Package(
    name: "cnn-dist",
    platforms: [.macOS(.v13)],
    products: [
        .executable(name: "cnn-dist", targets: ["cnn-dist"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/jpsim/Yams", from: "5.0.1"),
        .package(url: "https://github.com/apple/swift-crypto", from: "3.0.0"),
    ],
    targets: [
        // System libraries.
        mpiTarget,
        .systemLibrary(name: "CZlib", providers: [.apt(["zlib1g-dev"])]),
        // Image codecs: libpng (its longjmp errors handled in Sources/CPNG/shim.h) and
        // libjpeg-turbo's TurboJPEG API.
        .systemLibrary(name: "CPNG", pkgConfig: "libpng", providers: [.apt(["libpng-dev"])]),
        .systemLibrary(name: "CJPEG", pkgConfig: "libturbojpeg", providers: [.apt(["libturbojpeg0-dev"])]),

        // The AVX-512 GEMM tiles (bf16 vdpbf16ps, fp32) and bf16 packing as intrinsics, and CPUID;
        // compiled for the baseline, the AVX-512 code sits behind __attribute__((target)) and
        // run-time checks (CnnCore's CPUFeatures).
        .target(name: "CBF16", cSettings: [.unsafeFlags(["-O3"], .when(configuration: .release))]),
        // Compute core: tensors, our packed GEMM, im2col convolution kernels.
        .target(name: "CnnCore", dependencies: ["CBF16"], swiftSettings: kernelSettings),
        // Layers with explicit forward/backward over the core kernels.
        .target(name: "CnnLayers", dependencies: ["CnnCore"], swiftSettings: kernelSettings),
        // Model zoo built from layers.
        .target(name: "CnnModels", dependencies: ["CnnCore", "CnnLayers", .product(name: "Yams", package: "Yams")],
                swiftSettings: plainSettings),
        // Dataset readers, normalisation, augmentation, batching.
        .target(name: "CnnData", dependencies: ["CnnCore", "CZlib", "CPNG", "CJPEG"], swiftSettings: kernelSettings),
        // Communicators: MPI and in-process ranks.
        .target(name: "CnnDistributed", dependencies: ["CnnCore", "CMPI"], swiftSettings: plainSettings + mpiDefines),
        // Optimizers, schedules, trainer, checkpoints.
        .target(name: "CnnTraining",
                dependencies: ["CnnCore", "CnnLayers", "CnnModels", "CnnData", "CnnDistributed",
                               .product(name: "Crypto", package: "swift-crypto")],
                swiftSettings: kernelSettings),
        // Command line: subcommands, kept in a library so tests can run them.
        .target(name: "CnnCLI",
                dependencies: ["CnnCore", "CnnLayers", "CnnModels", "CnnData", "CnnDistributed", "CnnTraining",
                               .product(name: "ArgumentParser", package: "swift-argument-parser"),
                               .product(name: "Yams", package: "Yams")],
                swiftSettings: plainSettings),
        .executableTarget(name: "cnn-dist", dependencies: ["CnnCLI"], swiftSettings: plainSettings),

        .testTarget(name: "CnnCoreTests", dependencies: ["CnnCore"], swiftSettings: plainSettings),
        .testTarget(name: "CnnLayersTests", dependencies: ["CnnCore", "CnnLayers"], swiftSettings: plainSettings),
        .testTarget(name: "CnnModelsTests", dependencies: ["CnnCore", "CnnLayers", "CnnModels"],
                    swiftSettings: plainSettings),
        .testTarget(name: "CnnDataTests", dependencies: ["CnnCore", "CnnData"], swiftSettings: plainSettings),
        .testTarget(name: "CnnDistributedTests", dependencies: ["CnnCore", "CnnDistributed"], swiftSettings: plainSettings),
        .testTarget(name: "CnnTrainingTests",
                    dependencies: ["CnnCore", "CnnLayers", "CnnModels", "CnnData", "CnnDistributed", "CnnTraining"],
                    swiftSettings: plainSettings),
        .testTarget(name: "CnnCLITests", dependencies: ["CnnCLI", "CnnModels", "CnnLayers", "CnnCore", "CnnData",
                                                        "CnnDistributed", "CnnTraining"], swiftSettings: plainSettings),
    ],
    swiftLanguageModes: [.v5]
)
