// Shapes: x is (P, H, W) with P = N·C planes, y is (P, OH, OW); windows are
// KH×KW with strides SH, SW and zero/-inf padding PH, PW; floor-mode output
// OH = (H + 2·PH − KH) / SH + 1 (likewise OW).

/// Max over each window (padded cells count as −∞); argmax[o] is the flat
/// index h·W + w of the winner within its plane (the first one on ties).
public func maxPoolForward(x: UnsafePointer<Float>, y: UnsafeMutablePointer<Float>, argmax: UnsafeMutablePointer<Int32>,
                           planes: Int, h: Int, w: Int, oh: Int, ow: Int,
                           kh: Int, kw: Int, sh: Int, sw: Int, ph: Int, pw: Int) {
    if ph == 0 && pw == 0 && kh == 2 && kw == 2 {
        maxPool2x2(x: x, y: y, argmax: argmax, planes: planes, h: h, w: w, oh: oh, ow: ow, sh: sh, sw: sw)
        return
    }
    for p in 0..<planes {
        let xp = x + p * h * w
        let yp = y + p * oh * ow
        let ap = argmax + p * oh * ow
        for i in 0..<oh {
            let h0 = i * sh - ph
            let hs = max(h0, 0), he = min(h0 + kh, h)
            for j in 0..<ow {
                let w0 = j * sw - pw
                let ws = max(w0, 0), we = min(w0 + kw, w)
                var best = -Float.infinity, at = hs * w + ws
                for r in hs..<he {
                    for c in ws..<we {
                        // Branch-free select; a NaN wins (and then stays), as in PyTorch.
                        // `>` and isNaN are never both true, so != is their exclusive or.
                        let v = xp[r * w + c]
                        let take = (v > best) != v.isNaN
                        best = take ? v : best
                        at = take ? r * w + c : at
                    }
                }
                yp[i * ow + j] = best
                ap[i * ow + j] = Int32(truncatingIfNeeded: at)
            }
        }
    }
}

/// The common unpadded 2×2 window, unrolled: same results as the general loop.
@inline(__always)
func maxPool2x2(x: UnsafePointer<Float>, y: UnsafeMutablePointer<Float>, argmax: UnsafeMutablePointer<Int32>,
                planes: Int, h: Int, w: Int, oh: Int, ow: Int, sh: Int, sw: Int) {
    @inline(__always) func pick(_ best: inout Float, _ at: inout Int32, _ v: Float, _ idx: Int32) {
        let take = (v > best) != v.isNaN
        best = take ? v : best
        at = take ? idx : at
    }
    for p in 0..<planes {
        let xp = x + p * h * w
        let yp = y + p * oh * ow
        let ap = argmax + p * oh * ow
        for i in 0..<oh {
            let r0 = i * sh * w
            var j = 0
            if sw == 2 {
                // Eight windows at a time: even/odd lanes of 16 consecutive inputs per row.
                let raw = UnsafeRawPointer(xp)
                let lane = SIMD8<Int32>(0, 2, 4, 6, 8, 10, 12, 14)
                while j + 8 <= ow {
                    let i0 = r0 + 2 * j
                    let top = raw.loadUnaligned(fromByteOffset: i0 * 4, as: SIMD16<Float>.self)
                    let bottom = raw.loadUnaligned(fromByteOffset: (i0 + w) * 4, as: SIMD16<Float>.self)
                    let base = lane &+ Int32(truncatingIfNeeded: i0)
                    var best = top.evenHalf, at = base
                    for (v, off) in [(top.oddHalf, Int32(1)), (bottom.evenHalf, Int32(truncatingIfNeeded: w)),
                                     (bottom.oddHalf, Int32(truncatingIfNeeded: w + 1))] {
                        let take = (v .> best) .| (v .!= v)
                        best.replace(with: v, where: take)
                        at.replace(with: base &+ off, where: take)
                    }
                    UnsafeMutableRawPointer(yp + i * ow + j).storeBytes(of: best, as: SIMD8<Float>.self)
                    UnsafeMutableRawPointer(ap + i * ow + j).storeBytes(of: at, as: SIMD8<Int32>.self)
                    j += 8
                }
            }
            while j < ow {
                defer { j += 1 }
                let i0 = r0 + j * sw
                var best = xp[i0], at = Int32(truncatingIfNeeded: i0)
                pick(&best, &at, xp[i0 + 1], Int32(truncatingIfNeeded: i0 + 1))
                pick(&best, &at, xp[i0 + w], Int32(truncatingIfNeeded: i0 + w))
                pick(&best, &at, xp[i0 + w + 1], Int32(truncatingIfNeeded: i0 + w + 1))
                yp[i * ow + j] = best
                ap[i * ow + j] = at
            }
        }
    }
}

/// dx = 0, then dx[argmax[o]] += dy[o] (overlapping windows accumulate).
public func maxPoolBackward(dy: UnsafePointer<Float>, argmax: UnsafePointer<Int32>, dx: UnsafeMutablePointer<Float>,
                            planes: Int, h: Int, w: Int, oh: Int, ow: Int) {
    dx.update(repeating: 0, count: planes * h * w)
    for p in 0..<planes {
        let dxp = dx + p * h * w
        let off = p * oh * ow
        for o in 0..<(oh * ow) { dxp[Int(argmax[off + o])] += dy[off + o] }
    }
}

/// Mean over each window, dividing by KH·KW including padded cells
/// (PyTorch's count_include_pad = true; in floor mode no window reaches past the padding).
public func avgPoolForward(x: UnsafePointer<Float>, y: UnsafeMutablePointer<Float>,
                           planes: Int, h: Int, w: Int, oh: Int, ow: Int,
                           kh: Int, kw: Int, sh: Int, sw: Int, ph: Int, pw: Int) {
    let scale = 1 / Float(kh * kw)
    for p in 0..<planes {
        let xp = x + p * h * w
        let yp = y + p * oh * ow
        for i in 0..<oh {
            let h0 = i * sh - ph
            let hs = max(h0, 0), he = min(h0 + kh, h)
            for j in 0..<ow {
                let w0 = j * sw - pw
                let ws = max(w0, 0), we = min(w0 + kw, w)
                var acc: Float = 0
                for r in hs..<he { for c in ws..<we { acc += xp[r * w + c] } }
                yp[i * ow + j] = acc * scale
            }
        }
    }
}

/// dx = 0, then every input cell of a window gets dy / (KH·KW).
public func avgPoolBackward(dy: UnsafePointer<Float>, dx: UnsafeMutablePointer<Float>,
                            planes: Int, h: Int, w: Int, oh: Int, ow: Int,
                            kh: Int, kw: Int, sh: Int, sw: Int, ph: Int, pw: Int) {
    dx.update(repeating: 0, count: planes * h * w)
    let scale = 1 / Float(kh * kw)
    for p in 0..<planes {
        let dxp = dx + p * h * w
        let dyp = dy + p * oh * ow
        for i in 0..<oh {
            let h0 = i * sh - ph
            let hs = max(h0, 0), he = min(h0 + kh, h)
            for j in 0..<ow {
                let w0 = j * sw - pw
                let ws = max(w0, 0), we = min(w0 + kw, w)
                let g = dyp[i * ow + j] * scale
                for r in hs..<he { for c in ws..<we { dxp[r * w + c] += g } }
            }
        }
    }
}

/// y[p] = mean of plane p (global average pooling); x is (P, S) with S = H·W.
public func globalAvgPoolForward(x: UnsafePointer<Float>, y: UnsafeMutablePointer<Float>, planes: Int, s: Int) {
    let scale = 1 / Float(s)
    for p in 0..<planes {
        y[p] = Float(blockSum(x + p * s, s)) * scale
    }
}

/// dx[p, :] = dy[p] / S.
public func globalAvgPoolBackward(dy: UnsafePointer<Float>, dx: UnsafeMutablePointer<Float>, planes: Int, s: Int) {
    let scale = 1 / Float(s)
    for p in 0..<planes {
        let g = dy[p] * scale
        let dxp = dx + p * s
        for j in 0..<s { dxp[j] = g }
    }
}
