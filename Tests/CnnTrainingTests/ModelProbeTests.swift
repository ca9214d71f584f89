import CnnCore
import CnnData
import CnnLayers
import CnnModels
import CnnTraining
import XCTest

/// ModelProbe: step-by-step forward equals Model.forward, saliency equals finite differences of
/// the logit, Grad-CAM equals the formula worked out by hand for conv -> ReLU -> flatten -> linear.
final class ModelProbeTests: XCTestCase {
    func smallModel() throws -> Model {
        let root = Sequential([Sequential([try Conv2D(1, 2, kernelSize: 3, padding: 1), ReLU()], names: ["0", "1"]),
                               Flatten(), try Linear(2 * 5 * 4, 3)], names: ["features", "flatten", "fc"])
        let model = try Model(name: "probe", root: root, inputShape: [1, 5, 4], classCount: 3)
        model.store.initialize(seed: 21)
        return model
    }

    func testStepsLogitsSaliencyAndGradCAM() throws {
        let model = try smallModel()
        let probe = ModelProbe(model: model)
        XCTAssertEqual(probe.steps.map(\.name), ["features.0", "features.1", "flatten", "fc"])
        var rng = SplitMix64(seed: 3)
        let values = (0..<20).map { _ in Float(Int(rng.next() % 2001) - 1000) / 500 }
        let x = Tensor(shape: [1, 1, 5, 4], values: values)
        let direct = model.forward(x, context: ExecutionContext(training: false)).toArray()
        let r = try probe.attribution(x)
        XCTAssertEqual(r.logits, direct)
        XCTAssertEqual(r.camStep, 1, "the last step with a C x H x W output is the ReLU")
        let target = r.predicted

        // Saliency: |d logit / dx| by central differences in Float, the model being piecewise linear.
        func logit(_ v: [Float]) -> Double {
            Double(model.forward(Tensor(shape: [1, 1, 5, 4], values: v), context: ExecutionContext(training: false)).toArray()[target])
        }
        for i in 0..<20 {
            var plus = values, minus = values
            plus[i] += 1e-3; minus[i] -= 1e-3
            let fd = abs((logit(plus) - logit(minus)) / 2e-3)
            XCTAssertEqual(Double(r.saliency[i]), fd, accuracy: 2e-3, "pixel \(i)")
        }

        // Grad-CAM at the ReLU output A (2 x 5 x 4): dlogit/dA = the fc row of the target class.
        let fcWeight = model.store.parameterEntries.first { $0.name == "fc.weight" }!
        let row = (0..<40).map { model.store.parameters.data[fcWeight.offset + target * 40 + $0] }
        let (_, outputs) = probe.forward(x, capture: [1])
        let a = outputs[1]!.values
        var cam = [Float](repeating: 0, count: 20)
        for k in 0..<2 {
            let alpha = (0..<20).reduce(Float(0)) { $0 + row[k * 20 + $1] } / 20
            for p in 0..<20 { cam[p] += alpha * a[k * 20 + p] }
        }
        cam = cam.map { max(0, $0) }
        XCTAssertEqual(r.camShape, [5, 4])
        for p in 0..<20 { XCTAssertEqual(r.cam[p], cam[p], accuracy: 1e-5) }

        // Grad-CAM at the convolution (before the ReLU): gradient masked by A > 0.
        let conv = try probe.attribution(x, camStep: try probe.stepIndex("features.0"))
        let (_, pre) = probe.forward(x, capture: [0])
        let z = pre[0]!.values
        var camZ = [Float](repeating: 0, count: 20)
        for k in 0..<2 {
            let alpha = (0..<20).reduce(Float(0)) { $0 + (z[k * 20 + $1] > 0 ? row[k * 20 + $1] : 0) } / 20
            for p in 0..<20 { camZ[p] += alpha * z[k * 20 + p] }
        }
        for p in 0..<20 { XCTAssertEqual(conv.cam[p], max(0, camZ[p]), accuracy: 1e-5) }
        XCTAssertThrowsError(try probe.stepIndex("features.9")) { XCTAssertTrue("\($0)".contains("features.0, features.1"), "\($0)") }
        XCTAssertThrowsError(try probe.attribution(x, camStep: 3))
    }

    /// A global pooling's 1 x 1 output is not a Grad-CAM map: the default is the layer before it.
    func testGradCAMDefaultSkipsGlobalPooling() throws {
        let root = Sequential([try Conv2D(1, 2, kernelSize: 3, padding: 1), ReLU(), try AvgPool2d(kernelSize: (5, 4), stride: nil),
                               Flatten(), try Linear(2, 3)])
        let model = try Model(name: "pooled", root: root, inputShape: [1, 5, 4], classCount: 3)
        model.store.initialize(seed: 2)
        let x = Tensor(shape: [1, 1, 5, 4], values: (0..<20).map { Float($0 % 7) / 7 - 0.4 })
        let r = try ModelProbe(model: model).attribution(x)
        XCTAssertEqual(r.camStep, 1)
        XCTAssertEqual(r.camShape, [5, 4])
    }

    /// Text outside Latin-1 (tEXt's character set) is written with '?' instead of failing.
    func testPictureTextOutsideLatin1() throws {
        let picture = Picture(image: Image8(width: 1, height: 1, channels: 1, pixels: [9]), text: [("classes", "猫\ncafé")])
        let text = try ImageDecoder.pngText(try picture.png(), file: "p.png")
        XCTAssertEqual(text.first?.value, "?\ncafé")
    }

    func testResampleNearest() {
        XCTAssertEqual(resampleNearest([1, 2, 3, 4], height: 2, width: 2, toHeight: 4, width: 3),
                       [1, 1, 2, 1, 1, 2, 3, 3, 4, 3, 3, 4])
    }
}
