import XCTest
import CnnCore
import CnnTraining

final class ScheduleTests: XCTestCase {
    private func assertRates(_ s: LearningRateSchedule, stepsPerEpoch: Int, _ expected: [(step: Int, lr: Float)],
                             file: StaticString = #filePath, line: UInt = #line) {
        for (step, lr) in expected {
            XCTAssertEqual(s.learningRate(step: step, stepsPerEpoch: stepsPerEpoch), lr,
                           accuracy: max(abs(lr) * 1e-5, 1e-9), "step \(step)", file: file, line: line)
        }
    }

    func testConstant() throws {
        let s = try LearningRateSchedule(baseLearningRate: 0.1)
        assertRates(s, stepsPerEpoch: 7, [(0, 0.1), (1, 0.1), (10_000, 0.1)])
    }

    func testStepDecay() throws {
        // Every 30 epochs × 0.1, 10 steps per epoch: epoch 29 (step 299) still 0.1,
        // epoch 30 (step 300) 0.01, epoch 60 (step 600) 0.001.
        let s = try LearningRateSchedule(baseLearningRate: 0.1, decay: .step(everyEpochs: 30, gamma: 0.1))
        assertRates(s, stepsPerEpoch: 10, [(0, 0.1), (299, 0.1), (300, 0.01), (599, 0.01), (600, 0.001)])
    }

    func testMultiStep() throws {
        // Milestones at epochs 2 and 5, γ 0.5, 100 steps per epoch.
        let s = try LearningRateSchedule(baseLearningRate: 0.1, decay: .multiStep(milestones: [2, 5], gamma: 0.5))
        assertRates(s, stepsPerEpoch: 100, [(0, 0.1), (199, 0.1), (200, 0.05), (499, 0.05), (500, 0.025), (9999, 0.025)])
    }

    func testCosineOverEpochs() throws {
        // T = 10 epochs, η_min 0, 5 steps per epoch; the rate changes per epoch.
        // epoch 1: 0.05·(1 + cos(π/10)) = 0.05·1.95105652 = 0.09755283
        // epoch 5: 0.05·(1 + cos(π/2)) = 0.05;  epoch 10: 0; held at 0 afterwards.
        let s = try LearningRateSchedule(baseLearningRate: 0.1, decay: .cosine(length: .epochs(10), etaMin: 0))
        assertRates(s, stepsPerEpoch: 5, [(0, 0.1), (4, 0.1), (5, 0.09755283), (9, 0.09755283), (25, 0.05),
                                          (50, 0), (100, 0)])
    }

    func testCosineOverStepsWithEtaMin() throws {
        // T = 100 steps, η_min 0.001:
        // step 25: 0.001 + 0.099·(1 + cos(π/4))/2 = 0.001 + 0.099·0.85355339 = 0.08550179
        // step 50: 0.001 + 0.099·0.5 = 0.0505; step 75: 0.001 + 0.099·0.14644661 = 0.01549821
        let s = try LearningRateSchedule(baseLearningRate: 0.1, decay: .cosine(length: .steps(100), etaMin: 0.001))
        assertRates(s, stepsPerEpoch: 3, [(0, 0.1), (25, 0.08550179), (50, 0.0505), (75, 0.01549821),
                                          (100, 0.001), (150, 0.001)])
    }

    func testOneCycleDefaults() throws {
        // max 0.1, 100 steps, pct_start 0.3, div 25, final_div 1e4:
        // initial 0.1/25 = 0.004, min 0.004/1e4 = 4e-7.
        // Phase 1 ends at step 0.3·100 − 1 = 29 (the peak, 0.1); phase 2 ends at 99 (4e-7).
        // Phase 2 midpoint: step 64 = 29 + 70/2 → (0.1 + 4e-7)/2 = 0.0500002.
        let s = try LearningRateSchedule(baseLearningRate: 0.1, decay: .oneCycle(length: .steps(100)))
        assertRates(s, stepsPerEpoch: 10, [(0, 0.004), (29, 0.1), (64, 0.0500002), (99, 4e-7), (150, 4e-7)])
        // The rate rises before the peak and falls after it.
        XCTAssertLessThan(s.learningRate(step: 28, stepsPerEpoch: 10), 0.1)
        XCTAssertLessThan(s.learningRate(step: 30, stepsPerEpoch: 10), 0.1)
    }

    func testOneCycleMidpointAndEpochLength() throws {
        // 2 epochs × 50 steps = 100 steps, pct_start 0.21 → peak at step 20;
        // phase 1 midpoint step 10: (0.004 + 0.1)/2 = 0.052.
        let s = try LearningRateSchedule(baseLearningRate: 0.1,
                                         decay: .oneCycle(length: .epochs(2), pctStart: 0.21, divFactor: 25,
                                                          finalDivFactor: 1e4))
        assertRates(s, stepsPerEpoch: 50, [(0, 0.004), (10, 0.052), (20, 0.1), (99, 4e-7)])
    }

    func testLinearWarmupComposes() throws {
        // Constant 0.1, 10 warm-up steps from factor 0.1:
        // step 0: 0.01; step 5: 0.1·(0.1 + 0.9·0.5) = 0.055; step 10: 0.1.
        let c = try LearningRateSchedule(baseLearningRate: 0.1,
                                         warmup: .init(length: .steps(10), startFactor: 0.1))
        assertRates(c, stepsPerEpoch: 4, [(0, 0.01), (5, 0.055), (9, 0.091), (10, 0.1), (11, 0.1)])

        // Step decay every epoch × 0.5 (4 steps per epoch) under an 8-step warm-up from 0.5:
        // step 4 (epoch 1): 0.05·(0.5 + 0.5·4/8) = 0.05·0.75 = 0.0375; step 8: 0.025.
        let s = try LearningRateSchedule(baseLearningRate: 0.1, decay: .step(everyEpochs: 1, gamma: 0.5),
                                         warmup: .init(length: .steps(8), startFactor: 0.5))
        assertRates(s, stepsPerEpoch: 4, [(0, 0.05), (4, 0.0375), (8, 0.025)])

        // Warm-up of 2 epochs at 5 steps per epoch = 10 steps; cosine over 10 epochs behind it.
        // step 5 (epoch 1): 0.09755283·(1/3 + (2/3)·0.5) = 0.09755283·2/3 = 0.06503522
        let w = try LearningRateSchedule(baseLearningRate: 0.1, decay: .cosine(length: .epochs(10), etaMin: 0),
                                         warmup: .init(length: .epochs(2)))
        assertRates(w, stepsPerEpoch: 5, [(0, 0.0333333), (5, 0.06503522), (10, 0.09045085)])
        // (epoch 2: 0.05·(1 + cos(π/5)) = 0.05·1.80901699 = 0.09045085)
    }

    func testIndependentOfRankCountForSameGlobalStep() throws {
        // A pure function: the same global step gives the same rate however it is reached.
        let s = try LearningRateSchedule.parse("cosine:steps=1000,warmup_steps=50", baseLearningRate: 0.4)
        let fresh = s.learningRate(step: 321, stepsPerEpoch: 100)
        let resumed = try LearningRateSchedule.parse("cosine:steps=1000,warmup_steps=50", baseLearningRate: 0.4)
        XCTAssertEqual(fresh.bitPattern, resumed.learningRate(step: 321, stepsPerEpoch: 100).bitPattern)
    }

    func testParse() throws {
        let s = try LearningRateSchedule.parse("multistep:milestones=30/60/80,gamma=0.2,warmup_epochs=5",
                                               baseLearningRate: 0.1)
        XCTAssertEqual(s.decay, .multiStep(milestones: [30, 60, 80], gamma: 0.2))
        XCTAssertEqual(s.warmup, .init(length: .epochs(5), startFactor: 1.0 / 3.0))
        XCTAssertEqual(try LearningRateSchedule.parse("constant", baseLearningRate: 0.1).decay, .constant)
        XCTAssertEqual(try LearningRateSchedule.parse("step: every = 30", baseLearningRate: 0.1).decay,
                       .step(everyEpochs: 30, gamma: 0.1))
        XCTAssertEqual(try LearningRateSchedule.parse("cosine:epochs=90,eta_min=1e-5", baseLearningRate: 0.1).decay,
                       .cosine(length: .epochs(90), etaMin: 1e-5))
        XCTAssertEqual(try LearningRateSchedule.parse("onecycle:steps=500", baseLearningRate: 0.1).decay,
                       .oneCycle(length: .steps(500), pctStart: 0.3, divFactor: 25, finalDivFactor: 1e4))
        let o = try LearningRateSchedule(name: "step", baseLearningRate: 0.1,
                                         options: ["step_size": "2", "gamma": "0.5", "warmup_steps": "3",
                                                   "warmup_start_factor": "0.25"])
        XCTAssertEqual(o.decay, .step(everyEpochs: 2, gamma: 0.5))
        XCTAssertEqual(o.warmup, .init(length: .steps(3), startFactor: 0.25))
    }

    func testScheduleValidationNamesTheField() {
        func field(_ body: () throws -> Void) -> String? {
            do { try body(); return nil } catch let CnnError.invalidConfig(f, _, _) { return f } catch { return "\(error)" }
        }
        XCTAssertEqual(field { _ = try LearningRateSchedule.parse("exponential", baseLearningRate: 0.1) }, "lr_schedule")
        XCTAssertEqual(field { _ = try LearningRateSchedule.parse("step:every=3,gama=0.5", baseLearningRate: 0.1) },
                       "lr_schedule.gama")
        XCTAssertEqual(field { _ = try LearningRateSchedule.parse("step", baseLearningRate: 0.1) }, "lr_schedule.every")
        XCTAssertEqual(field { _ = try LearningRateSchedule.parse("step:every=0", baseLearningRate: 0.1) },
                       "lr_schedule.every")
        XCTAssertEqual(field { _ = try LearningRateSchedule.parse("multistep:milestones=60/30", baseLearningRate: 0.1) },
                       "lr_schedule.milestones")
        XCTAssertEqual(field { _ = try LearningRateSchedule.parse("cosine:epochs=0", baseLearningRate: 0.1) },
                       "lr_schedule.length")
        XCTAssertEqual(field { _ = try LearningRateSchedule.parse("cosine", baseLearningRate: 0.1) },
                       "lr_schedule.epochs")
        XCTAssertEqual(field { _ = try LearningRateSchedule.parse("cosine:epochs=5,eta_min=0.5", baseLearningRate: 0.1) },
                       "lr_schedule.eta_min")
        XCTAssertEqual(field { _ = try LearningRateSchedule.parse("onecycle:steps=100,pct_start=1", baseLearningRate: 0.1) },
                       "lr_schedule.pct_start")
        XCTAssertEqual(field { _ = try LearningRateSchedule.parse("step:every=1,gamma=x", baseLearningRate: 0.1) },
                       "lr_schedule.gamma")
        XCTAssertEqual(field { _ = try LearningRateSchedule.parse("constant:warmup_steps=5,warmup_start_factor=0",
                                                                   baseLearningRate: 0.1) },
                       "lr_schedule.warmup_start_factor")
        XCTAssertEqual(field { _ = try LearningRateSchedule.parse("constant", baseLearningRate: 0) }, "lr")
    }
}
