// Durable step transitions on the embedded store (bench/workflows/run).
//
// Starts RUNS runs of a workflow of STEPS steps and times them to the end, with the worker
// of `interlock serve` (claiming, planning, one checkpoint transaction per transition). The
// direct figure in the same run is the floor of a durable transition: one small write
// transaction on the same store, back to back.
//
//   interlock-bench-workflow [--runs 200] [--steps 20] [--kind branch|emit] [--synchronous normal|full]
//
// Cluster mode (bench/cluster/run): `--emit-workflow PATH` writes the workflow and exits; the
// script starts `interlock serve` nodes on PostgreSQL with it; then
// `--postgres URL --schema S --workflow PATH --nodes N` starts the runs in their store and
// times them (this process executes none), with the floor measured on the same PostgreSQL.
import AsyncHTTPClient
import FoundationEssentials
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
            agents: [{ id: worker, api_key: bench-worker-key-00000001 }]
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
        let single = try await timeRuns(1, definition: definition, engine: engine, store: store)
        let many = try await timeRuns(runs, definition: definition, engine: engine, store: store)
        worker?.cancel()
        _ = await worker?.result
        try await store.close()
        try? FileManager.default.removeItem(atPath: directory)

        let transitions = Double(runs * steps)
        let directMs = directSeconds * 1_000 / Double(directCount)
        let singleMs = single * 1_000 / Double(steps)
        let result: JSONValue = [
            "kind": .string(kind), "store": .string(postgres == nil ? "sqlite (synchronous=\(synchronous))" : "postgresql, \(nodes) node(s)"), "runs": .integer(Int64(runs)), "steps_per_run": .integer(Int64(steps)),
            "steps_per_s": .number((transitions / many).rounded()), "run_seconds": .number((many * 1000).rounded() / 1000),
            "transition_ms_alone": .number((singleMs * 1000).rounded() / 1000), "direct_commit_ms": .number((directMs * 1000).rounded() / 1000),
            "direct_commits_per_s": .number((Double(directCount) / directSeconds).rounded()),
            "transition_vs_direct_commit": .number((singleMs / directMs * 100).rounded() / 100),
        ]
        print(JSONWriter.string(result))
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
            default:
                let next = index + 1 < steps ? "s\(index + 1)" : "end"
                workflow += "  - { id: s\(index), kind: branch, cases: [{ if: \"true\", next: \(next) }] }\n"
            }
        }
        return workflow
    }

    static func timeRuns(_ count: Int, definition: WorkflowDefinition, engine: WorkflowEngine, store: any RunStore) async throws -> Double {
        let start = ContinuousClock.now
        var ids: [String] = []
        for _ in 0..<count {
            ids.append(try await engine.start(definition, input: [:], startedBy: "bench", userID: nil, parentRunID: nil, idempotencyKey: nil, budgets: nil).run.id)
        }
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
