import ArgumentParser
import CnnCore
import CnnData
import CnnLayers
import CnnTraining

// The registries' enums as command-line values: the flag's help lists the
// same names as the config's validation, from the one enum.
extension DatasetKind: ExpressibleByArgument {}
extension OptimizerKind: ExpressibleByArgument {}
extension ScheduleKind: ExpressibleByArgument {}
extension InitScheme: ExpressibleByArgument {}
extension NonFiniteAction: ExpressibleByArgument {}
extension ComputePrecision: ExpressibleByArgument {}
extension AllreduceDType: ExpressibleByArgument {}

/// The name in `names` closest to `text` (edit distance at most a third of
/// its length, at least 2), for "did you mean" hints; nil if none is close.
func nearestName(to text: String, in names: [String]) -> String? {
    func distance(_ a: [Character], _ b: [Character]) -> Int {
        var previous = Array(0...b.count)
        for (i, x) in a.enumerated() {
            var current = [i + 1] + Array(repeating: 0, count: b.count)
            for (j, y) in b.enumerated() {
                current[j + 1] = min(previous[j + 1] + 1, current[j] + 1, previous[j] + (x == y ? 0 : 1))
            }
            previous = current
        }
        return previous[b.count]
    }
    let target = Array(text.lowercased())
    let best = names.map { (name: $0, d: distance(target, Array($0.lowercased()))) }.min { $0.d < $1.d }
    guard let best, best.d <= max(2, target.count / 3) else { return nil }
    return best.name
}
