import Foundation
import CnnCLI
import XCTest
import CnnTraining

/// What a cluster user relies on: a wrong launch is refused, an interrupted
/// run leaves a checkpoint and resumes exactly, two runs never share a folder.
final class ClusterCitizenTests: XCTestCase {
    private func config(_ name: String) throws -> String {
        let path = temporaryDirectory(name) + "/config.yaml"
        try """
            model: fashion-cnn
            dataset: synthetic
            synthetic_count: 4096
            epochs: 12
            batch_size: 32
            test_limit: 64
            threads: 1
            """.write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    private func model(_ path: String) throws -> [UInt8] {
        let (tensors, _) = try SafeTensors.decode(Array(try Data(contentsOf: URL(fileURLWithPath: path))), file: path)
        return tensors.flatMap(\.bytes)
    }

    /// Starts `executable ARGS`, sends `signal` once the run directory has its
    /// config (training started) and a little more, and returns the exit status.
    private func interrupt(_ executable: URL, _ arguments: [String], environment: [String: String],
                           runDir: String, signal: Int32) throws -> (Int32, String) {
        let process = Process()
        process.executableURL = executable
        process.arguments = arguments
        process.environment = childEnvironment(environment)
        let err = Pipe()
        process.standardError = err
        process.standardOutput = FileHandle.nullDevice
        try process.run()
        let start = Date()
        while !FileManager.default.fileExists(atPath: runDir + "/metrics.jsonl") && Date().timeIntervalSince(start) < 60 {
            usleep(20_000)
        }
        usleep(300_000)
        kill(process.processIdentifier, signal)
        let stderr = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        return (process.terminationStatus, stderr)
    }

    /// How the interrupted run is started: its launcher, the arguments before cnn-dist's own,
    /// extra environment, and the exit status the launcher reports for the stopped run.
    private struct Launch {
        var launcher: URL
        var prefix: [String] = []
        var environment: [String: String] = [:]
        var status: Int32 = 75
        /// Steps of the uninterrupted run and of the resumed one (the stop must come before).
        var steps = 200
    }

    /// Generic body: interrupted by `signal`, the run has a verified checkpoint
    /// of the step it stopped at, exits with `launch.status`, and `--resume` to step
    /// `launch.steps` gives the weights of an uninterrupted run of as many steps, bitwise.
    private func assertInterruptAndResume(_ launch: Launch, signal: Int32) throws {
        let config = try config("interrupt")
        let straight = temporaryDirectory("straight"), stopped = temporaryDirectory("stopped") + "/run"
        func run(_ args: [String]) throws -> ProcessResult {
            try runProcess(launch.launcher, launch.prefix + args, deadline: 300, extraEnvironment: launch.environment)
        }
        let whole = try run(["train", "--config", config, "--run-dir", straight, "--max-steps", "\(launch.steps)"])
        XCTAssertEqual(whole.status, 0, whole.stderr)
        let (status, stderr) = try interrupt(launch.launcher, launch.prefix + ["train", "--config", config, "--run-dir", stopped],
                                             environment: launch.environment, runDir: stopped, signal: signal)
        XCTAssertEqual(status, launch.status, stderr)
        // An mpirun that is ending the job itself (status 1) may drop the ranks' last lines.
        if launch.status == 75 {
            XCTAssertTrue(stderr.contains("checkpoint written") && stderr.contains("--resume \(stopped)"), stderr)
        }
        XCTAssertTrue(stderr.contains("stopping after this step with a checkpoint"), stderr)
        let found = try CheckpointStore.latestVerified(runDirectory: stopped)
        XCTAssertLessThan(found.manifest.step, launch.steps, "interrupted too late to test the resume")
        print("interrupted by signal \(signal) at step \(found.manifest.step)")
        let resumed = try run(["train", "--resume", stopped, "--max-steps", "\(launch.steps)"])
        XCTAssertEqual(resumed.status, 0, resumed.stderr)
        XCTAssertEqual(try model(stopped + "/model.safetensors"), try model(straight + "/model.safetensors"), "bitwise equal")
    }

    private func mpirun(ranks: Int) throws -> Launch {
        guard let mpirun = mpirunLauncher() else { throw XCTSkip("mpirun not installed") }
        return Launch(launcher: mpirun, prefix: ["-n", "\(ranks)", "--oversubscribe", try cnnDistBinary().path])
    }

    func testSIGTERMCheckpointsAndResumesBitwise() throws {
        try assertInterruptAndResume(Launch(launcher: try cnnDistBinary()), signal: SIGTERM)
    }

    func testSIGUSR1UnderMPIRunCheckpointsAndResumesBitwise() throws {
        try assertInterruptAndResume(try mpirun(ranks: 2), signal: SIGUSR1)
    }

    /// SIGTERM to mpirun (`kill`, a batch system ending the job): Open MPI's mpirun sends the
    /// ranks SIGTERM `odls_base_sigkill_timeout` seconds later (1 unless raised) and SIGKILL as
    /// long again after that; the ranks finish the step and checkpoint in between. mpirun itself
    /// reports the job it ended on a signal with status 1, whatever the ranks' 75 said.
    func testSIGTERMUnderMPIRunCheckpointsAndResumesBitwise() throws {
        var launch = try mpirun(ranks: 2)
        launch.environment["OMPI_MCA_odls_base_sigkill_timeout"] = "2" // a loaded CI machine's fsync may take over 1 s
        launch.status = 1
        launch.steps = 1000 // the ranks see the signal 2 s after mpirun: hundreds of steps on a quiet machine
        try assertInterruptAndResume(launch, signal: SIGTERM)
    }

    /// launch/mpirun.sh turns its SIGTERM into a SIGUSR1 to mpirun, which passes it on at once:
    /// the job stops after the current step with the resumable status 75.
    func testSIGTERMToTheMPIRunScriptCheckpointsAndResumesBitwise() throws {
        _ = try mpirun(ranks: 2)
        try assertInterruptAndResume(Launch(launcher: URL(fileURLWithPath: packageRoot() + "/launch/mpirun.sh"), prefix: ["2"],
                                            environment: ["CNN_DIST_BINARY": try cnnDistBinary().path]), signal: SIGTERM)
    }

    /// srun without PMI starts N processes that each see a 1-rank world.
    func testOneRankWorldUnderAnNTaskLaunchIsRefused() throws {
        let dir = temporaryDirectory("pmi")
        let result = try runProcess(try cnnDistBinary(), ["train", "--dataset", "synthetic", "--max-steps", "1", "--run-dir", dir + "/run"],
                                    extraEnvironment: ["SLURM_NTASKS": "4"])
        XCTAssertEqual(result.status, 1)
        XCTAssertTrue(result.stderr.contains("SLURM_NTASKS=4") && result.stderr.contains("srun --mpi=pmix"), result.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/run"), "wrote a run")
    }

    /// A fresh run refuses a folder holding a run; --overwrite replaces it; a
    /// lock held by a live process keeps a second writer out.
    func testRunDirectoryIsNeverShared() throws {
        let dir = temporaryDirectory("reuse") + "/run"
        let args = ["train", "--dataset", "synthetic", "--max-steps", "2", "--threads", "1", "--run-dir", dir]
        XCTAssertEqual(try runCnnDist(args).status, 0)
        let again = try runCnnDist(args)
        XCTAssertNotEqual(again.status, 0)
        XCTAssertTrue(again.stderr.contains("--resume \(dir)") && again.stderr.contains("--overwrite"), again.stderr)
        let overwritten = try runCnnDist(args + ["--overwrite"])
        XCTAssertEqual(overwritten.status, 0, overwritten.stderr)
        XCTAssertEqual(CheckpointStore.list(runDirectory: dir).map(\.step), [2])
        // pid 1 is alive on this host: its lock is honoured.
        try "\(ProcessInfo.processInfo.hostName) 1\n".write(toFile: dir + "/.lock", atomically: true, encoding: .utf8)
        let locked = try runCnnDist(["train", "--resume", dir, "--max-steps", "3"])
        XCTAssertNotEqual(locked.status, 0)
        XCTAssertTrue(locked.stderr.contains("pid 1 holds its lock"), locked.stderr)
        // A lock of a process that is gone is stale.
        try "\(ProcessInfo.processInfo.hostName) 999999999\n".write(toFile: dir + "/.lock", atomically: true, encoding: .utf8)
        XCTAssertEqual(try runCnnDist(["train", "--resume", dir, "--max-steps", "3"]).status, 0)
    }

    /// The README's fine-tuning command, as written, on a checkpoint of ours.
    func testReadmeFineTuningCommand() throws {
        let dir = temporaryDirectory("finetune")
        XCTAssertEqual(try runCnnDist(["train", "--max-steps", "2", "--threads", "1", "--test-limit", "100", "--run-dir", dir + "/pre"]).status, 0)
        let readme = try String(contentsOfFile: packageRoot() + "/README.md", encoding: .utf8)
        let line = try XCTUnwrap(readme.split(separator: "\n").first { $0.hasPrefix("cnn-dist train --init-from pretrained.safetensors") })
        let words = line.split(separator: " ").map(String.init).dropFirst()
            .map { $0 == "pretrained.safetensors" ? dir + "/pre/model.safetensors" : $0 }
        let result = try runCnnDist(Array(words) + ["--max-steps", "2", "--test-limit", "100", "--run-dir", dir + "/tuned"])
        XCTAssertEqual(result.status, 0, result.stderr)
        XCTAssertTrue(result.stdout.contains("classes: 5 of the dataset's 10"), result.stdout)
    }
}

/// Threads per rank without --threads: Slurm's CPUs per task, else the node's
/// cores over the ranks on it, however the launcher says how many those are.
final class AutomaticThreadsTests: XCTestCase {
    func testThreadsFollowTheLauncher() {
        XCTAssertEqual(automaticThreads(ranksInProcess: 1, environment: [:], cores: 8), 8)
        XCTAssertEqual(automaticThreads(ranksInProcess: 2, environment: [:], cores: 8), 4)
        XCTAssertEqual(automaticThreads(ranksInProcess: 1, environment: ["OMPI_COMM_WORLD_LOCAL_SIZE": "4"], cores: 8), 2)
        // srun -n 2 on one node: no Open MPI variables, only Slurm's step layout.
        XCTAssertEqual(automaticThreads(ranksInProcess: 1, environment: ["SLURM_STEP_TASKS_PER_NODE": "2"], cores: 2), 1)
        XCTAssertEqual(automaticThreads(ranksInProcess: 1, environment: ["SLURM_STEP_TASKS_PER_NODE": "4(x2),2", "SLURM_NODEID": "2"],
                                        cores: 16), 8)
        XCTAssertEqual(automaticThreads(ranksInProcess: 1, environment: ["SLURM_STEP_TASKS_PER_NODE": "4(x2),2", "SLURM_NODEID": "1"],
                                        cores: 16), 4)
        XCTAssertEqual(automaticThreads(ranksInProcess: 1, environment: ["SLURM_CPUS_PER_TASK": "3", "SLURM_STEP_TASKS_PER_NODE": "2"],
                                        cores: 16), 3)
        // Malformed lists fall back to one rank per node rather than failing.
        XCTAssertEqual(automaticThreads(ranksInProcess: 1, environment: ["SLURM_STEP_TASKS_PER_NODE": "2(y3)"], cores: 4), 4)
        XCTAssertEqual(slurmTasksOnThisNode(["SLURM_TASKS_PER_NODE": "3(x99999999999)"]), nil)
    }

}

/// A run started without a launcher, --local-ranks or --threads uses the node's
/// cores as in-process ranks while each keeps a batch share of 64 or more.
final class AutomaticLocalRanksTests: XCTestCase {
    func testRanksKeepABatchShareOf64() {
        XCTAssertEqual(automaticLocalRanks(cores: 2, batchSize: 128), 2)
        XCTAssertEqual(automaticLocalRanks(cores: 1, batchSize: 128), 1)
        XCTAssertEqual(automaticLocalRanks(cores: 2, batchSize: 100), 1)
        XCTAssertEqual(automaticLocalRanks(cores: 64, batchSize: 128), 2)
        XCTAssertEqual(automaticLocalRanks(cores: 12, batchSize: 512), 6)
        XCTAssertEqual(automaticLocalRanks(cores: 7, batchSize: 1024), 7)
    }
}
