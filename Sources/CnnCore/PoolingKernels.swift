// Shapes: x is (P, H, W) with P = N·C planes, y is (P, OH, OW); windows are
// KH×KW with strides SH, SW and zero/-inf padding PH, PW; floor-mode output
// OH = (H + 2·PH − KH) / SH + 1 (likewise OW).

/// Max over each window (padded cells count as −∞); argmax[o] is the flat
/// index h·W + w of the winner within its plane (the first one on ties).
public func maxPoolForward(x: UnsafePointer<Float>, y: UnsafeMutablePointer<Float>, argmax: UnsafeMutablePointer<Int32>,
                           planes: Int, h: Int, w: Int, oh: Int, ow: Int,
                           kh: Int, kw: Int, sh: Int, sw: Int, ph: Int, pw: Int) {
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
                        let v = xp[r * w + c]
                        if v > best || (v.isNaN && !best.isNaN) { best = v; at = r * w + c }
                    }
                }
                yp[i * ow + j] = best
                ap[i * ow + j] = Int32(truncatingIfNeeded: at)
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
        let xp = x + p * s
        var acc: Float = 0
        for j in 0..<s { acc += xp[j] }
        y[p] = acc * scale
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
