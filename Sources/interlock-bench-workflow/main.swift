// Durable step transitions on the embedded store (bench/workflows/run).
//
// Starts RUNS runs of a workflow of STEPS steps and times them to the end, with the worker
// of `interlock serve` (claiming, planning, one checkpoint transaction per transition). The
// direct figure in the same run is the floor of a durable transition: one small write
// transaction on the same store, back to back.
//
//   interlock-bench-workflow [--runs 200] [--steps 20] [--kind branch|emit|agent] [--synchronous normal|full]
//
// Cluster mode (bench/cluster/run): `--emit-workflow PATH` writes the workflow and exits; the
// script starts `interlock serve` nodes on PostgreSQL with it; then
// `--postgres URL --schema S --workflow PATH --nodes N` starts the runs in their store and
// times them (this process executes none), with the floor measured on the same PostgreSQL.
// `--cpu-pids nodes=PID,PID --cpu-pids postgres=PID` adds where the CPU went while the runs
// ran: each group's processes and their children, in cores (1.0 = one core busy).
import AsyncHTTPClient
import FoundationEssentials
import Glibc
import InterlockConfig
import InterlockCore
import InterlockProviders
import InterlockRuntime
import InterlockStore
import Logging

@main
struct WorkflowBench {
    static func main() async throws {
        var arguments = CommandLine.arguments.dropFirst().makeIterator()
        var runs = 200
        var steps = 20
        var kind = "branch"
        var synchronous = "normal"
        var emitPath: String?
        var postgres: String?
        var schema = "public"
        var workflowFile: String?
        var nodes = 1
        var cpuGroups: [(name: String, pids: [Int32])] = []
        while let argument = arguments.next() {
            switch argument {
            case "--runs": runs = Int(arguments.next() ?? "") ?? runs
            case "--steps": steps = Int(arguments.next() ?? "") ?? steps
            case "--kind": kind = arguments.next() ?? kind
            case "--synchronous": synchronous = arguments.next() ?? synchronous
            case "--emit-workflow": emitPath = arguments.next()
            case "--postgres": postgres = arguments.next()
            case "--schema": schema = arguments.next() ?? schema
            case "--workflow": workflowFile = arguments.next()
            case "--nodes": nodes = Int(arguments.next() ?? "") ?? nodes
            case "--cpu-pids":
                let spec = (arguments.next() ?? "").split(separator: "=", maxSplits: 1)
                guard spec.count == 2 else { fatalError("--cpu-pids takes NAME=PID,PID") }
                cpuGroups.append((String(spec[0]), spec[1].split(separator: ",").compactMap { Int32($0) }))
            default: fatalError("unknown argument \(argument)")
            }
        }
        let workflow = Self.workflow(steps: steps, kind: kind)
        if let emitPath {
            try Data(workflow.utf8).write(to: URL(fileURLWithPath: emitPath))
            return
        }
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("interlock-bench-wf-\(UInt32.random(in: 0...UInt32.max))").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let workflowPath = workflowFile ?? directory + "/bench.yaml"
        if workflowFile == nil { try Data(workflow.utf8).write(to: URL(fileURLWithPath: workflowPath)) }
        let storeYAML =
            postgres.map { "{ postgres: { url: \"\($0)\", schema: \(schema) } }" } ?? "{ sqlite: { path: \(directory)/bench.sqlite, synchronous: \(synchronous) } }"
        let yaml = """
            store: \(storeYAML)
            logging: { level: error }
            providers: { mock: { type: mock } }
            models: { fast: { deployments: [{ provider: mock, model: m }] } }
            agents: [{ id: worker, api_key: bench-worker-key-00000001, models: [fast] }]
            workflows: { files: [\(workflowPath)], max_active_runs: 256, poll_interval_ms: 1000 }
            """
        let configuration = try ConfigLoader.parse(yaml, file: directory + "/config.yaml", environment: [:])
        var logger = Logger(label: "bench")
        logger.logLevel = .error
        let store = try await openStore(configuration.store, node: "bench", logger: logger)
        try await store.migrate()
        let ledger = UsageLedgerWriter(store: store, flushInterval: .milliseconds(200), maxBatch: 500, logger: logger)
        let governor = try await CallGovernor.open(configuration: configuration, store: store, ledger: ledger, audit: nil, tokens: nil, logger: logger)
        let gateway = ModelGateway(
            configuration: configuration, governor: governor, httpUpstream: HTTPModelUpstream(client: .shared), mockUpstream: MockModelUpstream(), logger: logger)
        let engine = WorkflowEngine(
            configuration: configuration, store: store, governor: governor, models: gateway, tools: nil, httpClient: .shared, logger: logger)
        try await engine.open()

        // The floor: one small durable write transaction at a time.
        let directCount = 2_000
        let directStart = ContinuousClock.now
        for index in 0..<directCount { try await store.setCursor("bench", to: Int64(index)) }
        let directSeconds = seconds(ContinuousClock.now - directStart)

        // Cluster mode: the nodes execute; this process only starts runs and waits.
        let worker = postgres == nil ? Task { try await engine.run() } : nil
        let definition = engine.catalog.current("bench")!
        // One run alone: the latency of a transition with nothing else going on.
        let singleRun = try await startRuns(1, definition: definition, engine: engine)
        _ = try await waitForRuns(singleRun, store: store)
        // From the run's own history (first to last event): no start-up or polling in it.
        let history = try await store.runEvents(runID: singleRun[0], afterSeq: 0)
        let single = Double((history.last?.timeMs ?? 0) - (history.first?.timeMs ?? 0)) / 1_000
        let cpuBefore = cpuGroups.map { CPU.seconds(CPU.withDescendants($0.pids)) } + [CPU.seconds([CPU.ownPID])]
        let manyStart = ContinuousClock.now
        let many = try await waitForRuns(try await startRuns(runs, definition: definition, engine: engine), store: store, since: manyStart)
        let cpuAfter = cpuGroups.map { CPU.seconds(CPU.withDescendants($0.pids)) } + [CPU.seconds([CPU.ownPID])]
        worker?.cancel()
        _ = await worker?.result
        try await store.close()
        try? FileManager.default.removeItem(atPath: directory)

        let transitions = Double(runs * steps)
        let directMs = directSeconds * 1_000 / Double(directCount)
        let singleMs = single * 1_000 / Double(steps)
        var cpu = JSONObject()
        for (index, name) in (cpuGroups.map(\.name) + ["coordinator"]).enumerated() {
            cpu[name] = .number(((cpuAfter[index] - cpuBefore[index]) / many * 100).rounded() / 100)
        }
        var result: JSONObject = [
            "kind": .string(kind), "store": .string(postgres == nil ? "sqlite (synchronous=\(synchronous))" : "postgresql, \(nodes) node(s)"), "runs": .integer(Int64(runs)), "steps_per_run": .integer(Int64(steps)),
            "steps_per_s": .number((transitions / many).rounded()), "run_seconds": .number((many * 1000).rounded() / 1000),
            "transition_ms_alone": .number((singleMs * 1000).rounded() / 1000), "direct_commit_ms": .number((directMs * 1000).rounded() / 1000),
            "direct_commits_per_s": .number((Double(directCount) / directSeconds).rounded()),
            "transition_vs_direct_commit": .number((singleMs / directMs * 100).rounded() / 100),
        ]
        if !cpuGroups.isEmpty { result["cpu_cores"] = .object(cpu) }
        print(JSONWriter.string(.object(result)))
    }

    static func seconds(_ duration: Duration) -> Double {
        Double(duration.components.seconds) + Double(duration.components.attoseconds) / 1e18
    }

    /// Starts `count` runs and waits until all have completed; the seconds it took.
    static func workflow(steps: Int, kind: String) -> String {
        var workflow = "workflow: bench\nagent: worker\nsteps:\n"
        for index in 0..<steps {
            switch kind {
            case "emit":
                workflow += "  - { id: s\(index), kind: emit, event: bench.tick, payload: { n: \(index) } }\n"
            case "agent":
                // A model call each (the nodes' mock model answers after its latency): steps that wait.
                workflow += "  - { id: s\(index), kind: agent, instructions: \"Answer briefly.\", model: fast, prompt: \"step \(index)\" }\n"
            default:
                let next = index + 1 < steps ? "s\(index + 1)" : "end"
                workflow += "  - { id: s\(index), kind: branch, cases: [{ if: \"true\", next: \(next) }] }\n"
            }
        }
        return workflow
    }

    static func startRuns(_ count: Int, definition: WorkflowDefinition, engine: WorkflowEngine) async throws -> [String] {
        var ids: [String] = []
        for _ in 0..<count {
            ids.append(try await engine.start(definition, input: [:], startedBy: "bench", userID: nil, parentRunID: nil, idempotencyKey: nil, budgets: nil).run.id)
        }
        return ids
    }

    /// Waits until every run has completed; the seconds since `start` was called.
    static func waitForRuns(_ ids: [String], store: any RunStore, since start: ContinuousClock.Instant = .now) async throws -> Double {
        var pending = Set(ids)
        while !pending.isEmpty {
            // Against PostgreSQL the listing is a round trip that competes with the nodes: less often.
            try await Task.sleep(for: .milliseconds(store is SQLiteStore ? 2 : 25))
            for run in try await store.runs(RunFilter(status: .completed, workflow: "bench", limit: 100_000)) { pending.remove(run.id) }
            if ContinuousClock.now - start > .seconds(600) { fatalError("runs did not finish") }
        }
        return seconds(ContinuousClock.now - start)
    }
}

/// CPU time of processes, from /proc (Linux).
enum CPU {
    static let ownPID = getpid()

    /// `pids` and their living descendants (PostgreSQL's backends under the postmaster), each
    /// once. A descendant that exits in between is still counted: its time moves into its
    /// parent's children's time.
    static func withDescendants(_ pids: [Int32]) -> [Int32] {
        Array(Set(pids + pids.flatMap(descendants)))
    }

    /// User and system seconds of `pids`, with their children that have exited.
    static func seconds(_ pids: [Int32]) -> Double {
        var ticks = 0
        for pid in pids {
            guard let fields = statFields(pid) else { continue }
            // utime, stime, cutime, cstime: fields 14-17 of /proc/PID/stat.
            ticks += [11, 12, 13, 14].compactMap { Int(fields[$0]) }.reduce(0, +)
        }
        return Double(ticks) / Double(sysconf(Int32(_SC_CLK_TCK)))
    }

    /// Living descendants of `pid`.
    private static func descendants(_ pid: Int32) -> [Int32] {
        guard let entries = try? FileManager.default.contentsOfDirectory(atPath: "/proc") else { return [] }
        var parents: [Int32: [Int32]] = [:]
        for entry in entries {
            guard let child = Int32(entry), let fields = statFields(child), let parent = Int32(fields[1]) else { continue }
            parents[parent, default: []].append(child)
        }
        var found: [Int32] = []
        var queue = [pid]
        while let next = queue.popLast() {
            for child in parents[next] ?? [] {
                found.append(child)
                queue.append(child)
            }
        }
        return found
    }

    /// The fields of /proc/PID/stat after the command name: [0] is field 3 (state).
    private static func statFields(_ pid: Int32) -> [Substring]? {
        guard let text = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8), let close = text.lastIndex(of: ")") else { return nil }
        let fields = text[text.index(after: close)...].split(separator: " ")
        return fields.count > 14 ? fields : nil
    }
}
