import CnnCore
import CnnDistributed

/// Sums of one epoch's training loss (each batch's mean loss times the global
/// batch size), correct predictions and samples seen.
struct EpochTotals: Equatable {
    var lossSum = 0.0
    var correct = 0.0
    var seen = 0.0

    mutating func add(loss: Double, batchSize: Int, correct: Int, seen: Int) {
        lossSum += loss * Double(batchSize)
        self.correct += Double(correct)
        self.seen += Double(seen)
    }

    /// The sums over all ranks (a collective: every rank calls it).
    func reduced(over communicator: Communicator) throws -> EpochTotals {
        var sums = [lossSum, correct, seen]
        try communicator.allreduceSum(&sums)
        return EpochTotals(lossSum: sums[0], correct: sums[1], seen: sums[2])
    }
}

/// The coordinator's progress line (step, loss, rate, ETA): through the
/// trainer's `progress` callback about twice a second (a terminal overwrites
/// it), or as a plain log line every `progressEvery` steps.
final class ProgressReporter {
    private unowned let trainer: Trainer
    private let start = monotonicSeconds()
    private let stepAtStart: Int
    private var last: Double

    init(trainer: Trainer) {
        self.trainer = trainer
        stepAtStart = trainer.step
        last = start
    }

    /// Called after every step.
    func report() {
        let t = trainer
        guard t.communicator.rank == 0 else { return }
        let now = monotonicSeconds()
        let due = t.progress != nil ? now - last >= 0.5 : t.step % t.progressEvery == 0
        guard due else { return }
        last = now
        let done = t.step - stepAtStart
        let secondsPerStep = (now - start) / Double(max(1, done))
        let rate = Double(t.config.batchSize) / secondsPerStep
        let epochSteps = max(1, t.stepsPerEpoch)
        let fraction = Double(t.stepInEpoch) / Double(epochSteps)
        let bar = String(repeating: "#", count: Int(fraction * 20)) + String(repeating: ".", count: 20 - Int(fraction * 20))
        let epochLeft = Double(max(0, min(epochSteps, t.totalSteps - (t.step - t.stepInEpoch)) - t.stepInEpoch)) * secondsPerStep
        let runLeft = Double(t.totalSteps - t.step) * secondsPerStep
        // Loss and accuracy so far this epoch, over this rank's samples.
        let line = String(format: "epoch %d/%d [%@] %3.0f%% | step %d/%d | loss %.4f acc %.3f | lr %.4g | %.0f img/s | eta epoch %@, run %@",
                          t.epoch + 1, t.config.epochs, bar, 100 * fraction, t.step, t.totalSteps,
                          t.totals.lossSum / max(1, t.totals.seen),
                          t.totals.correct / max(1, t.totals.seen), Double(t.learningRate), rate,
                          formatDuration(epochLeft), formatDuration(runLeft))
        if let progress = t.progress { progress(line) } else { t.log(line) }
    }
}
