import AsyncHTTPClient
import FoundationEssentials
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import InterlockConfig
import InterlockCore
import InterlockProviders
import InterlockRuntime
import InterlockServer
import InterlockStore
import Logging
import NIOCore
import NIOPosix
import Prometheus
import Testing

/// Builds the same router production uses, on an in-memory store and the mock provider.
struct Harness {
    let services: InterlockServices
    let router: Router<InterlockRequestContext>

    static func make(_ yaml: String) async throws -> Harness {
        let configuration = try ConfigLoader.parse(yaml, file: "test.yaml", environment: [:])
        let store = try await SQLiteStore.open(path: ":memory:")
        try await store.migrate()
        let logger = Logger(label: "test")
        let ledger = UsageLedgerWriter(
            store: store, flushInterval: .milliseconds(10), maxBatch: 100, maxBacklog: configuration.ledger.maxBacklogRecords, logger: logger)
        let audit = try await AuditLog.open(
            store: store, node: "test-node", flushInterval: .milliseconds(10), maxBatch: 100, maxBacklog: configuration.audit.maxBacklogRecords,
            logger: logger, wallClockMs: { Int64(Date().timeIntervalSince1970 * 1000) })
        let governor = try await CallGovernor.open(
            configuration: configuration, store: store, ledger: ledger, audit: audit,
            tokens: try await TokenService.open(store: store, settings: configuration.auth, nowMs: Int64(Date().timeIntervalSince1970 * 1000)),
            logger: logger)
        let gateway = ModelGateway(
            configuration: configuration, governor: governor, httpUpstream: HTTPModelUpstream(client: .shared), mockUpstream: MockModelUpstream(), logger: logger)
        let tools =
            configuration.toolSources.isEmpty
            ? nil : try await ToolGateway.open(configuration: configuration, governor: governor, client: .shared, store: store, logger: logger)
        let workflows = WorkflowEngine(
            configuration: configuration, store: store, governor: governor, models: gateway, tools: tools, httpClient: .shared, logger: logger)
        try await workflows.open()
        let services = InterlockServices(
            configuration: configuration, gateway: gateway, store: store, ledger: ledger, metrics: PrometheusCollectorRegistry(),
            loopClient: try LoopHTTPClient(group: MultiThreadedEventLoopGroup.singleton), tools: tools, workflows: workflows)
        return Harness(services: services, router: buildRouter(services))
    }

    /// The server production runs: the router behind the event-loop path.
    func application() -> some ApplicationProtocol {
        Application(router: router, server: .interlock(services), configuration: .init(address: .hostname("127.0.0.1", port: 0)))
    }

    /// Runs `body` with the workflow engine's worker running (stopped afterwards).
    func withWorker<T: Sendable>(_ body: () async throws -> T) async throws -> T {
        let engine = services.workflows!
        let worker = Task { try await engine.run() }
        do {
            let result = try await body()
            worker.cancel()
            _ = await worker.result
            return result
        } catch {
            worker.cancel()
            _ = await worker.result
            throw error
        }
    }

    /// `withWorker`, then `close` whatever happened.
    func withWorkerClosing(_ body: () async throws -> Void) async throws {
        do {
            try await withWorker(body)
        } catch {
            try? await close()
            throw error
        }
        try await close()
    }

    /// sqlite-nio requires connections to be closed before they are released.
    func close() async throws {
        await services.tools?.shutdown()
        await services.ledger.flush()
        await services.gateway.governor.audit?.writer.flush()
        try await services.store.close()
    }
}

let baseConfig = """
    providers:
      mock:
        type: mock
        rules:
          - match: { last_user_contains: bounded }
            reply: { text: "ok" }
            usage: { prompt_tokens: 10, completion_tokens: 1000 }
          - match: { last_user_contains: pricey }
            reply: { text: "ok" }
            usage: { prompt_tokens: 1000, completion_tokens: 1000 }
    models:
      fast:
        deployments:
          - provider: mock
            model: m
            price: { input_per_mtok: 1, output_per_mtok: 2 }
      other:
        deployments:
          - provider: mock
            model: o
    agents:
      - id: a
        api_key: test-key-aaaaaaaaaaaa
        models: [fast]
      - id: poor
        api_key: test-key-pppppppppppp
        models: [fast]
        budgets: { daily_usd: 0.05 }
    """

func chat(_ model: String = "fast", _ text: String = "hi", extra: String = "") -> ByteBuffer {
    ByteBuffer(string: #"{"model":"\#(model)","messages":[{"role":"user","content":"\#(text)"}]\#(extra)}"#)
}

func auth(_ key: String) -> HTTPFields {
    [.authorization: "Bearer \(key)", .contentType: "application/json"]
}

@Suite struct ModelRouteTests {
    @Test func authenticationAndGrantsAreDefaultDeny() async throws {
        let harness = try await Harness.make(baseConfig)
        let app = Application(router: harness.router)
        try await app.test(.router) { client in
            try await client.execute(uri: "/v1/chat/completions", method: .post, body: chat()) { response in
                #expect(response.status == .unauthorized)
                // No credentials: the challenge carries no error code (RFC 6750 §3.1).
                #expect(response.headers[.wwwAuthenticate] == #"Bearer realm="interlock", resource_metadata="http://localhost/.well-known/oauth-protected-resource""#)
                let body = try JSONParser.parse(Array(response.body.readableBytesView))
                #expect(body["error"]?["code"] == "missing_api_key")
            }
            try await client.execute(uri: "/v1/chat/completions", method: .post, headers: auth("test-key-wrong-wrong"), body: chat()) { response in
                #expect(response.status == .unauthorized)
                #expect(response.headers[.wwwAuthenticate]?.contains(#"error="invalid_token""#) == true)
            }
            try await client.execute(uri: "/v1/chat/completions", method: .post, headers: auth("test-key-aaaaaaaaaaaa"), body: chat("other")) { response in
                #expect(response.status == .forbidden)
                let body = try JSONParser.parse(Array(response.body.readableBytesView))
                #expect(body["error"]?["code"] == "model_not_allowed")
            }
            try await client.execute(uri: "/v1/messages", method: .post, headers: [HTTPField.Name("x-api-key")!: "nope-nope-nope-nope"], body: chat()) { response in
                #expect(response.status == .unauthorized)
                let body = try JSONParser.parse(Array(response.body.readableBytesView))
                #expect(body["type"] == "error")
                #expect(body["error"]?["type"] == "authentication_error")
            }
        }
        try await harness.close()
    }

    /// Past `max_backlog_records` records waiting for the store, new calls get 503
    /// `store_backlog` with `Retry-After` and change nothing; once the writer catches up they
    /// are served again. (The harness runs no flush loop: records wait until `flush`.)
    @Test func callsAreRefusedWhileTheirRecordsCannotBeWritten() async throws {
        let harness = try await Harness.make(baseConfig + "\nledger: { max_backlog_records: 2 }\n")
        let app = Application(router: harness.router)
        let ledger = harness.services.ledger
        try await app.test(.router) { client in
            for _ in 0..<2 {
                try await client.execute(uri: "/v1/chat/completions", method: .post, headers: auth("test-key-aaaaaaaaaaaa"), body: chat()) { response in
                    #expect(response.status == .ok)
                }
            }
            #expect(ledger.isBehind)
            try await client.execute(uri: "/v1/chat/completions", method: .post, headers: auth("test-key-aaaaaaaaaaaa"), body: chat()) { response in
                #expect(response.status == .serviceUnavailable)
                #expect(response.headers[.retryAfter] == "1")
                let body = try JSONParser.parse(Array(response.body.readableBytesView))
                #expect(body["error"]?["code"] == "store_backlog")
            }
            #expect(ledger.backlog == 2, "the refusal wrote no record")
            await ledger.flush()
            #expect(!ledger.isBehind)
            try await client.execute(uri: "/v1/chat/completions", method: .post, headers: auth("test-key-aaaaaaaaaaaa"), body: chat()) { response in
                #expect(response.status == .ok)
            }
        }
        await harness.services.ledger.flush()
        #expect(try await harness.services.store.recentUsage(limit: 10).count == 3)
        try await harness.close()
    }

    @Test func servesChatAndRecordsUsage() async throws {
        let harness = try await Harness.make(baseConfig)
        let app = Application(router: harness.router)
        try await app.test(.router) { client in
            try await client.execute(uri: "/v1/chat/completions", method: .post, headers: auth("test-key-aaaaaaaaaaaa"), body: chat("fast", "pricey")) { response in
                #expect(response.status == .ok)
                #expect(response.headers[HTTPField.Name("x-interlock-deployment")!] == "fast/mock/m")
                #expect(response.headers[HTTPField.Name("x-interlock-cost-usd")!] == "0.003")
                let body = try JSONParser.parse(Array(response.body.readableBytesView))
                #expect(body["choices"]?.arrayValue?.first?["message"]?["content"] == "ok")
            }
        }
        await harness.services.ledger.flush()
        let records = try await harness.services.store.recentUsage(limit: 10)
        #expect(records.count == 1)
        #expect(records.first?.cost == USD(dollars: 0.003))
        #expect(records.first?.usage == TokenUsage(inputTokens: 1000, outputTokens: 1000))
        try await harness.close()
    }

    @Test func badInputNamesTheProblemAndSendsNothingUpstream() async throws {
        let harness = try await Harness.make(baseConfig)
        let app = Application(router: harness.router)
        try await app.test(.router) { client in
            try await client.execute(uri: "/v1/chat/completions", method: .post, headers: auth("test-key-aaaaaaaaaaaa"), body: ByteBuffer(string: "{oops")) { response in
                #expect(response.status == .badRequest)
                let body = try JSONParser.parse(Array(response.body.readableBytesView))
                #expect(body["error"]?["code"] == "invalid_json")
            }
            try await client.execute(uri: "/v1/chat/completions", method: .post, headers: auth("test-key-aaaaaaaaaaaa"), body: chat(extra: #","n":"two""#)) { response in
                #expect(response.status == .badRequest)
                let body = try JSONParser.parse(Array(response.body.readableBytesView))
                #expect(body["error"]?["param"] == "n")
            }
            try await client.execute(uri: "/v1/chat/completions", method: .post, headers: auth("test-key-aaaaaaaaaaaa"), body: chat("missing")) { response in
                #expect(response.status == .notFound)
            }
            let big = ByteBuffer(string: #"{"model":"fast","messages":[{"role":"user","content":""# + String(repeating: "x", count: 5_000_000) + #""}]}"#)
            try await client.execute(uri: "/v1/chat/completions", method: .post, headers: auth("test-key-aaaaaaaaaaaa"), body: big) { response in
                #expect(response.status == .contentTooLarge)
            }
        }
        await harness.services.ledger.flush()
        #expect(try await harness.services.store.recentUsage(limit: 10).isEmpty)
        // Each refusal is in the audit log with its reason; none cost anything.
        await harness.services.gateway.governor.audit?.writer.flush()
        let refusals = try await harness.services.store.auditRecords(afterPosition: 0, limit: 10).records
        #expect(refusals.map { $0.reason ?? "" } == ["invalid_json", "invalid_parameter", "model_not_found"])
        #expect(refusals.allSatisfy { $0.decision == "deny" && $0.agentID == "a" && $0.costNanos == nil })
        try await harness.close()
    }

    /// Many parallel requests against a small dollar budget: spend never exceeds the budget by
    /// more than the largest single reservation.
    @Test func concurrentRequestsCannotOverspendTheBudget() async throws {
        let harness = try await Harness.make(baseConfig)
        let app = Application(router: harness.router)
        let statuses = try await app.test(.router) { client in
            try await withThrowingTaskGroup(of: HTTPResponse.Status.self) { group in
                for _ in 0..<60 {
                    group.addTask {
                        try await client.execute(
                            uri: "/v1/chat/completions", method: .post, headers: auth("test-key-pppppppppppp"),
                            body: chat("fast", "bounded", extra: #","max_tokens":1000"#)
                        ) { $0.status }
                    }
                }
                var statuses: [HTTPResponse.Status] = []
                for try await status in group { statuses.append(status) }
                return statuses
            }
        }
        await harness.services.ledger.flush()
        let spent = try await harness.services.store.spend(agentID: "poor", sinceMs: 0)
        let budget = USD(dollars: 0.05)
        // Largest reservation: estimated prompt (~30 tokens) + 1000 output tokens at $1/$2 per million.
        let largestReservation = USD(dollars: 0.0021)
        #expect(spent.cost <= budget + largestReservation)
        // Each call really costs $0.00201, so about 24 fit in the budget, however they interleave.
        #expect(statuses.filter { $0 == .ok }.count >= 20)
        #expect(statuses.contains(.tooManyRequests))
        #expect(statuses.allSatisfy { $0 == .ok || $0 == .tooManyRequests })
        try await harness.close()
    }

    /// A request the deployment's provider cannot take (embeddings on Anthropic) is refused
    /// before it takes a breaker permit or TPM tokens, so it leaves the deployment as it was.
    @Test func refusedTranslationKeepsNoReservation() async throws {
        let harness = try await Harness.make("""
            providers:
              claude:
                type: anthropic
                api_key: not-used-in-this-test
            models:
              vectors:
                deployments:
                  - id: claude-vectors
                    provider: claude
                    model: c
                    limits: { tpm: 1000 }
            agents:
              - id: a
                api_key: test-key-aaaaaaaaaaaa
                models: [vectors]
            """)
        let app = Application(router: harness.router)
        try await app.test(.router) { client in
            for _ in 0..<3 {
                try await client.execute(
                    uri: "/v1/embeddings", method: .post, headers: auth("test-key-aaaaaaaaaaaa"),
                    body: ByteBuffer(string: #"{"model":"vectors","input":"hello"}"#)
                ) { response in
                    #expect(response.status == .badRequest)
                    let body = try JSONParser.parse(Array(response.body.readableBytesView))
                    #expect(body["error"]?["code"] == "operation_not_supported")
                }
            }
        }
        let state = try #require(harness.services.gateway.deploymentState("claude-vectors"))
        #expect(state.limiter.hasCapacity(tokens: 1000))
        #expect(state.breakerState == "closed")
        try await harness.close()
    }
}
