// Shapes: x, y, dy, dx are flat arrays of `count` elements (any layout); y = f(x).

#if canImport(Glibc)
import Glibc
#else
import Darwin
#endif

/// y = max(x, 0).
public func reluForward(x: UnsafePointer<Float>, y: UnsafeMutablePointer<Float>, count: Int) {
    forEachRange(elementBlocks(count), work: elementBlock, minimum: streamingSplitMinimum) { blocks in
        for i in elementRange(blocks, count) { y[i] = x[i] > 0 ? x[i] : 0 }
    }
}

/// dx = dy where y > 0, else 0 (the subgradient at 0 is 0, as in PyTorch).
public func reluBackward(y: UnsafePointer<Float>, dy: UnsafePointer<Float>, dx: UnsafeMutablePointer<Float>, count: Int) {
    forEachRange(elementBlocks(count), work: elementBlock, minimum: streamingSplitMinimum) { blocks in
        let range = elementRange(blocks, count)
        var i = range.lowerBound
        // SIMD8 with unconditional loads: the plain loop's conditional load of dy stays scalar.
        let zero = SIMD8<Float>()
        let ry = UnsafeRawPointer(y), rdy = UnsafeRawPointer(dy), rdx = UnsafeMutableRawPointer(dx)
        while i + 8 <= range.upperBound {
            let positive = ry.loadUnaligned(fromByteOffset: i * 4, as: SIMD8<Float>.self) .> zero
            let g = rdy.loadUnaligned(fromByteOffset: i * 4, as: SIMD8<Float>.self)
            rdx.storeBytes(of: zero.replacing(with: g, where: positive), toByteOffset: i * 4, as: SIMD8<Float>.self)
            i += 8
        }
        while i < range.upperBound { dx[i] = y[i] > 0 ? dy[i] : 0; i += 1 }
    }
}

/// a += b, elementwise.
public func addInPlace(_ a: UnsafeMutablePointer<Float>, _ b: UnsafePointer<Float>, count: Int) {
    forEachRange(elementBlocks(count), work: elementBlock, minimum: streamingSplitMinimum) { blocks in
        for i in elementRange(blocks, count) { a[i] += b[i] }
    }
}

/// y = a + b, elementwise (y may be a or b).
public func add(_ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, into y: UnsafeMutablePointer<Float>, count: Int) {
    forEachRange(elementBlocks(count), work: elementBlock, minimum: streamingSplitMinimum) { blocks in
        for i in elementRange(blocks, count) { y[i] = a[i] + b[i] }
    }
}

/// y = x, elementwise (a copy split like the other streaming kernels).
public func copyElements(_ x: UnsafePointer<Float>, into y: UnsafeMutablePointer<Float>, count: Int) {
    forEachRange(elementBlocks(count), work: elementBlock, minimum: streamingSplitMinimum) { blocks in
        let range = elementRange(blocks, count)
        (y + range.lowerBound).update(from: x + range.lowerBound, count: range.count)
    }
}

/// Elementwise kernels split over threads in blocks of whole cache lines.
let elementBlock = 4096
@inline(__always) func elementBlocks(_ count: Int) -> Int { (count + elementBlock - 1) / elementBlock }
@inline(__always) func elementRange(_ blocks: Range<Int>, _ count: Int) -> Range<Int> {
    blocks.lowerBound * elementBlock ..< min(blocks.upperBound * elementBlock, count)
}

/// y = x for x > 0, slope·x otherwise.
public func leakyReLUForward(x: UnsafePointer<Float>, y: UnsafeMutablePointer<Float>, count: Int, slope: Float) {
    for i in 0..<count { y[i] = x[i] > 0 ? x[i] : slope * x[i] }
}

/// dx = dy for x > 0, slope·dy otherwise.
public func leakyReLUBackward(x: UnsafePointer<Float>, dy: UnsafePointer<Float>, dx: UnsafeMutablePointer<Float>,
                              count: Int, slope: Float) {
    for i in 0..<count { dx[i] = x[i] > 0 ? dy[i] : slope * dy[i] }
}

/// y = x for x > 0, alpha·(eˣ − 1) otherwise.
public func eluForward(x: UnsafePointer<Float>, y: UnsafeMutablePointer<Float>, count: Int, alpha: Float) {
    for i in 0..<count { y[i] = x[i] > 0 ? x[i] : alpha * expm1f(x[i]) }
}

/// dx = dy for x > 0, dy·(y + alpha) otherwise (since d/dx alpha(eˣ−1) = alpha·eˣ = y + alpha).
public func eluBackward(x: UnsafePointer<Float>, y: UnsafePointer<Float>, dy: UnsafePointer<Float>,
                        dx: UnsafeMutablePointer<Float>, count: Int, alpha: Float) {
    for i in 0..<count { dx[i] = x[i] > 0 ? dy[i] : dy[i] * (y[i] + alpha) }
}

/// y = 1 / (1 + e⁻ˣ), evaluated without overflow for large |x|.
public func sigmoidForward(x: UnsafePointer<Float>, y: UnsafeMutablePointer<Float>, count: Int) {
    for i in 0..<count {
        let v = x[i]
        if v >= 0 {
            y[i] = 1 / (1 + expf(-v))
        } else {
            let e = expf(v)
            y[i] = e / (1 + e)
        }
    }
}

/// dx = dy · y · (1 − y).
public func sigmoidBackward(y: UnsafePointer<Float>, dy: UnsafePointer<Float>, dx: UnsafeMutablePointer<Float>, count: Int) {
    for i in 0..<count { dx[i] = dy[i] * y[i] * (1 - y[i]) }
}

/// y = tanh(x).
public func tanhForward(x: UnsafePointer<Float>, y: UnsafeMutablePointer<Float>, count: Int) {
    for i in 0..<count { y[i] = tanhf(x[i]) }
}

/// dx = dy · (1 − y²).
public func tanhBackward(y: UnsafePointer<Float>, dy: UnsafePointer<Float>, dx: UnsafeMutablePointer<Float>, count: Int) {
    for i in 0..<count { dx[i] = dy[i] * (1 - y[i] * y[i]) }
}
