import Foundation
import XCTest
import CnnCLI
import CnnCore
import CnnData
import CnnTraining

/// A user's own images through the real command: a PNG folder and a JPEG
/// folder (written by our encoders), a CSV pixel file, and an IDX dataset
/// resized to another model's input; predictions name the classes.
final class ImageDatasetTests: XCTestCase {
    private func folderDataset(_ format: ImageFileFormat) throws -> String {
        let root = temporaryDirectory("images")
        let all = ImageDataset.synthetic(count: 360, channels: 3, height: 20, width: 24, classCount: 3, seed: 5)
        let names = ["cat", "dog", "emu"]
        _ = try ImageFolderWriter.write(all.subset(0..<300), root: root, split: "train", format: format, classNames: names)
        _ = try ImageFolderWriter.write(all.subset(300..<360), root: root, split: "val", format: format, classNames: names)
        return root
    }

    private func trainAndPredict(data: String, dataset: String, input: String) throws -> (ProcessResult, ProcessResult, String) {
        let run = temporaryDirectory("run") + "/run"
        let train = try runCnnDist(["train", "--model", "fashion-cnn", "--dataset", dataset, "--data", data, "--input", input,
                                    "--epochs", "2", "--batch-size", "30", "--lr", "0.02", "--threads", "1", "--run-dir", run])
        let predict = try runCnnDist(["predict", "--checkpoint", run + "/model.safetensors", "--input", data + "/val",
                                      "--top-k", "2", "--output", run + "/predictions.json"])
        return (train, predict, run)
    }

    func testPNGFolderTrainsAndPredictionsNameTheClasses() throws {
        let root = try folderDataset(.png)
        let (train, predict, run) = try trainAndPredict(data: root, dataset: "folder", input: "1x16x16")
        XCTAssertEqual(train.status, 0, train.stderr + train.stdout)
        let metrics = try String(contentsOfFile: run + "/metrics.jsonl", encoding: .utf8)
        XCTAssertEqual(metrics.split(separator: "\n").count, 2)
        XCTAssertEqual(predict.status, 0, predict.stderr)
        XCTAssertEqual(predict.stdout.split(separator: "\n").count, 60, predict.stdout)
        XCTAssertTrue(predict.stdout.contains("cat ") && predict.stdout.contains("emu "), predict.stdout)
        let json = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: run + "/predictions.json"))) as? [[String: Any]]
        XCTAssertEqual(json?.count, 60)
        // The learnable synthetic classes are told apart after two epochs.
        let last = try JSONDecoder().decode(EpochMetrics.self, from: Data(metrics.split(separator: "\n").last!.utf8))
        XCTAssertGreaterThan(last.testAccuracy, 0.6, "\(last)")
    }

    func testPackedShardsTrainOnTwoRanksWithEqualStepsAndExactEvaluation() throws {
        let root = try folderDataset(.jpeg(quality: 90))
        let shards = temporaryDirectory("shards")
        let pack = try runCnnDist(["pack", root, shards, "--shard-size", "70"])
        XCTAssertEqual(pack.status, 0, pack.stderr + pack.stdout)
        XCTAssertTrue(pack.stdout.contains("train: 300 samples in 5 shard(s)"), pack.stdout)
        let run = temporaryDirectory("run") + "/run"
        // Shards of 70, 70, 70, 70, 20: rank 0 reads 160 samples, rank 1 140; each takes 15 of a
        // batch of 30, so both run min(160 / 15, 140 / 15) = 9 steps.
        let train = try runCnnDist(["train", "--model", "fashion-cnn", "--dataset", "shards", "--data", shards, "--input", "3x16x16",
                                    "--epochs", "2", "--batch-size", "30", "--lr", "0.02", "--threads", "1", "--local-ranks", "2",
                                    "--run-dir", run])
        XCTAssertEqual(train.status, 0, train.stderr + train.stdout)
        XCTAssertTrue(train.stdout.contains("2 epochs x 9 steps"), train.stdout)
        let metrics = try String(contentsOfFile: run + "/metrics.jsonl", encoding: .utf8).split(separator: "\n")
        XCTAssertEqual(metrics.count, 2)
        let eval = try runCnnDist(["eval", "--checkpoint", run + "/model.safetensors", "--dataset", "shards", "--data", shards,
                                   "--label-smoothing", "0.1", "--json"])
        XCTAssertEqual(eval.status, 0, eval.stderr)
        // eval decodes the val shards in memory on one rank; training evaluated them streamed on two: the same 60 images.
        let last = try JSONDecoder().decode(EpochMetrics.self, from: Data(metrics.last!.utf8))
        let json = try JSONSerialization.jsonObject(with: Data(eval.stdout.utf8)) as? [String: Any]
        XCTAssertEqual(json?["count"] as? Int, 60, eval.stdout)
        XCTAssertEqual(json?["accuracy"] as? Double ?? -1, last.testAccuracy, accuracy: 1e-9, eval.stdout)
        // Too few shards for the ranks is refused by name.
        let many = try runCnnDist(["train", "--dataset", "shards", "--data", shards, "--input", "3x16x16", "--epochs", "1",
                                   "--batch-size", "30", "--threads", "1", "--local-ranks", "6", "--run-dir", run + "-6"])
        XCTAssertNotEqual(many.status, 0)
        XCTAssertTrue(many.stderr.contains("at least one train shard per rank"), many.stderr)
    }

    func testJPEGFolderTrains() throws {
        let root = try folderDataset(.jpeg(quality: 90))
        let (train, _, _) = try trainAndPredict(data: root, dataset: "folder", input: "3x16x16")
        XCTAssertEqual(train.status, 0, train.stderr + train.stdout)
    }

    func testCSVPixelsTrain() throws {
        let dir = temporaryDirectory("csv")
        let all = ImageDataset.synthetic(count: 200, classCount: 4, seed: 6)
        for (name, range) in [("train.csv", 0..<160), ("test.csv", 160..<200)] {
            var text = "label," + (1...784).map { "pixel\($0)" }.joined(separator: ",") + "\n"
            for i in range { text += "\(all.labels[i])," + all.image(i).map(String.init).joined(separator: ",") + "\n" }
            try text.write(toFile: dir + "/" + name, atomically: true, encoding: .utf8)
        }
        let run = temporaryDirectory("run") + "/run"
        let train = try runCnnDist(["train", "--dataset", "csv", "--data", dir, "--epochs", "1", "--batch-size", "32",
                                    "--threads", "1", "--run-dir", run])
        XCTAssertEqual(train.status, 0, train.stderr + train.stdout)
    }

    /// Fashion-MNIST's 1x28x28 images resized and converted for a 3x32x32 model.
    func testIDXImagesResizedToTheModelInput() throws {
        let dir = temporaryDirectory("idx")
        let all = ImageDataset.synthetic(count: 96, classCount: 10, seed: 7)
        try all.subset(0..<64).writeIDX(imagesPath: dir + "/train-images-idx3-ubyte", labelsPath: dir + "/train-labels-idx1-ubyte")
        try all.subset(64..<96).writeIDX(imagesPath: dir + "/t10k-images-idx3-ubyte", labelsPath: dir + "/t10k-labels-idx1-ubyte")
        let loaded = try DatasetKind.mnist.load(.train, DatasetRequest(directory: dir, imageShape: [3, 32, 32]))
        XCTAssertEqual(loaded.imageShape, [3, 32, 32])
        XCTAssertEqual(loaded.count, 64)
        let run = temporaryDirectory("run") + "/run"
        let train = try runCnnDist(["train", "--model", "resnet20", "--dataset", "mnist", "--data", dir, "--input", "3x32x32",
                                    "--max-steps", "1", "--batch-size", "32", "--threads", "1", "--run-dir", run])
        XCTAssertEqual(train.status, 0, train.stderr + train.stdout)
    }

    /// A damaged image is named, not a crash.
    func testDamagedImageIsNamed() throws {
        let root = try folderDataset(.png)
        let victim = root + "/train/1_dog/" + (try FileManager.default.contentsOfDirectory(atPath: root + "/train/1_dog").sorted()[3])
        var bytes = try FileBytes.read(victim)
        bytes = Array(bytes.prefix(bytes.count / 2))
        try FileBytes.write(bytes, to: victim)
        let (train, _, _) = try trainAndPredict(data: root, dataset: "folder", input: "1x16x16")
        XCTAssertNotEqual(train.status, 0)
        XCTAssertTrue(train.stderr.contains(victim), train.stderr)
        // on_bad_image: skip leaves it out on every rank and says so.
        let config = temporaryDirectory("config") + "/skip.yaml"
        try "on_bad_image: skip\n".write(toFile: config, atomically: true, encoding: .utf8)
        let skip = try runCnnDist(["train", "--config", config, "--dataset", "folder", "--data", root, "--input", "1x16x16",
                                   "--epochs", "1", "--batch-size", "30", "--threads", "1", "--local-ranks", "2",
                                   "--run-dir", temporaryDirectory("run") + "/run"])
        XCTAssertEqual(skip.status, 0, skip.stderr + skip.stdout)
        XCTAssertTrue(skip.stdout.contains("299 train") && skip.stdout.contains("skipped 1 unreadable image(s)")
                      && skip.stdout.contains(victim), skip.stdout)
    }

    /// torchvision's augmentations as config keys: deterministic per (seed,
    /// epoch, sample), so a batch split over ranks sees the images one rank
    /// would; values refused by name; a run with all of them trains.
    func testTorchvisionAugmentationsAreRankIndependentAndTrain() throws {
        let data = ImageDataset.synthetic(count: 16, channels: 3, height: 12, width: 12, seed: 3)
        var augmentation = Augmentation(cropPadding: 1, horizontalFlip: true)
        augmentation.photometric.resizedCropScale = [0.5, 1]
        augmentation.photometric.verticalFlip = true
        augmentation.photometric.rotationDegrees = 15
        augmentation.photometric.brightness = 0.4
        augmentation.photometric.contrast = 0.4
        augmentation.photometric.saturation = 0.4
        augmentation.photometric.noiseSigma = 0.05
        augmentation.photometric.erasingProbability = 0.5
        let stats = ChannelStatistics.compute(data)
        let assembler = BatchAssembler(dataset: data, statistics: stats, augmentation: augmentation, seed: 9)
        let whole = assembler.batch(indices: Array(0..<8), epoch: 2).images.toArray()
        let halves = assembler.batch(indices: Array(0..<4), epoch: 2).images.toArray()
            + assembler.batch(indices: Array(4..<8), epoch: 2).images.toArray()
        XCTAssertEqual(whole, halves, "rank split changed the augmented images")
        let plain = BatchAssembler(dataset: data, statistics: stats, seed: 9).batch(indices: Array(0..<8), epoch: 2).images.toArray()
        XCTAssertNotEqual(whole, plain)
        XCTAssertNotEqual(whole, assembler.batch(indices: Array(0..<8), epoch: 3).images.toArray(), "epochs differ")
        XCTAssertTrue(whole.allSatisfy(\.isFinite))

        let dir = temporaryDirectory("augment")
        try """
            dataset: synthetic
            input: 3x16x16
            synthetic_count: 256
            epochs: 1
            batch_size: 32
            augment:
              random_resized_crop: [0.08, 1.0]
              vertical_flip: true
              rotation: 10
              brightness: 0.2
              contrast: 0.2
              saturation: 0.2
              gaussian_noise: 0.02
              random_erasing: 0.25
            threads: 1
            """.write(toFile: dir + "/a.yaml", atomically: true, encoding: .utf8)
        let run = try runCnnDist(["train", "--config", dir + "/a.yaml", "--model", "resnet20", "--max-steps", "3", "--run-dir", dir + "/run"])
        XCTAssertEqual(run.status, 0, run.stderr + run.stdout)
        for (text, field) in [("augment: {random_resized_crop: [0.9, 0.1]}", "augment.random_resized_crop"),
                              ("augment: {rotaton: 10}", "augment.rotaton"), ("augment: {rotation: .nan}", "augment.rotation")] {
            try (text + "\n").write(toFile: dir + "/b.yaml", atomically: true, encoding: .utf8)
            let bad = try runCnnDist(["train", "--config", dir + "/b.yaml"])
            XCTAssertTrue(bad.status != 0 && bad.stderr.contains("config field '\(field)'"), bad.stderr)
        }
    }
}
