import Foundation

/// Wall-clock seconds of the fastest of `repeats` runs of `body`, after one warm-up run.
/// Best-of is the usual estimator on a shared, noisy machine: noise only adds time.
func bestSeconds(repeats: Int = 5, _ body: () -> Void) -> Double {
    body()
    var best = Double.infinity
    for _ in 0..<max(1, repeats) {
        let start = DispatchTime.now().uptimeNanoseconds
        body()
        let elapsed = Double(DispatchTime.now().uptimeNanoseconds - start) * 1e-9
        best = min(best, elapsed)
    }
    return best
}

/// Prints a JSON object with sorted keys on one line (for `--json`).
func printJSON(_ object: Any) {
    let data = try! JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])
    print(String(decoding: data, as: UTF8.self))
}
