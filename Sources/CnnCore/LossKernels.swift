// Shapes: logits and probabilities are (N, K) with K classes; labels are (N).

#if canImport(Glibc)
import Glibc
#else
import Darwin
#endif

/// Softmax cross-entropy with label smoothing ε (target = (1 − ε)·onehot + ε/K).
///
/// Writes the softmax into `probabilities` and returns the SUM over the N
/// samples of −Σⱼ targetⱼ·log softmaxⱼ, and how many samples' argmax equals
/// the label. Log-sum-exp is taken about the row maximum, so large logits do
/// not overflow. Labels must lie in 0..<K (checked with a precondition).
public func softmaxCrossEntropyForward(logits: UnsafePointer<Float>, labels: UnsafePointer<Int32>,
                                       probabilities: UnsafeMutablePointer<Float>,
                                       n: Int, k: Int, smoothing: Float) -> (lossSum: Double, correct: Int) {
    var lossSum = 0.0
    var correct = 0
    let eps = Double(smoothing)
    for i in 0..<n {
        let z = logits + i * k, p = probabilities + i * k
        let label = Int(labels[i])
        precondition(label >= 0 && label < k, "SoftmaxCrossEntropy: label \(label) of sample \(i) is outside 0..<\(k)")
        var maxV = z[0], arg = 0
        for j in 1..<max(k, 1) where z[j] > maxV { maxV = z[j]; arg = j }
        if arg == label { correct += 1 }
        var sumExp: Float = 0
        var sumZ = 0.0
        for j in 0..<k {
            let e = expf(z[j] - maxV)
            p[j] = e
            sumExp += e
            sumZ += Double(z[j])
        }
        let inv = 1 / sumExp
        for j in 0..<k { p[j] *= inv }
        let lse = Double(maxV) + log(Double(sumExp))
        // −Σ targetⱼ·(zⱼ − lse) = lse − (1 − ε)·z_label − (ε/K)·Σ zⱼ
        lossSum += lse - (1 - eps) * Double(z[label]) - eps / Double(k) * sumZ
    }
    return (lossSum, correct)
}

/// dlogits = (softmax − target) · scale, with target smoothed as in the forward.
public func softmaxCrossEntropyBackward(probabilities: UnsafePointer<Float>, labels: UnsafePointer<Int32>,
                                        gradient: UnsafeMutablePointer<Float>,
                                        n: Int, k: Int, smoothing: Float, scale: Float) {
    let off = smoothing / Float(k)
    for i in 0..<n {
        let p = probabilities + i * k, g = gradient + i * k
        for j in 0..<k { g[j] = (p[j] - off) * scale }
        let label = Int(labels[i])
        g[label] -= (1 - smoothing) * scale
    }
}
