import FoundationEssentials
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import InterlockCore
import InterlockRuntime
import InterlockStore
import NIOCore
import Testing

/// Workflows end to end on the router production uses, with the worker running: runs started
/// over the API, tool steps through the tool gateway, branches, a human approval, the answer.
@Suite struct WorkflowTests {
    func json(_ response: TestResponse) throws -> JSONValue { try JSONParser.parse(Array(response.body.readableBytesView)) }

    static let operatorToken = "op-token-000000000000001"
    static let adminToken = "admin-token-00000000001"

    /// A config with the weather API as tools, two agents and an operator, and `workflows`
    /// written to files.
    static func config(port: Int, specPath: String, workflows: [String], extra: String = "") throws -> String {
        var files: [String] = []
        for text in workflows {
            let path = FileManager.default.temporaryDirectory.appendingPathComponent("wf-\(UInt32.random(in: 0...UInt32.max)).yaml").path
            try Data(text.utf8).write(to: URL(fileURLWithPath: path))
            files.append(path)
        }
        return """
            providers:
              mock:
                type: mock
                rules:
                  - match: { system_contains: "vendor checker", has_tool_result: true }
                    reply: { text: '{"vendor_ok": true}' }
                  - match: { system_contains: "vendor checker" }
                    reply: { tool_calls: [{ name: weather__getForecast, arguments: { city: Oslo } }] }
                  - match: { system_contains: "looper" }
                    reply: { tool_calls: [{ name: weather__getForecast, arguments: { city: Rome } }] }
                  - match: { system_contains: "sloppy" }
                    reply: { text: "not json at all" }
            models:
              fast:
                deployments:
                  - { provider: mock, model: m, price: { input_per_mtok: 1, output_per_mtok: 2 } }
            tools:
              weather:
                type: openapi
                spec: \(specPath)
                base_url: http://127.0.0.1:\(port)
                auth: { bearer: weather-upstream-secret }
                tools:
                  getForecast: { side_effects: read, idempotent: true }
                  createAlert: { side_effects: write }
            agents:
              - { id: runner, api_key: runner-key-000000000001, models: [fast], tools: ["weather.*"] }
              - { id: starter, api_key: starter-key-00000000001, workflows: [alerting, checker, looping, sloppy], events: ["heat.*"] }
              - { id: stranger, api_key: stranger-key-0000000001 }
            operators:
              - { id: alice, token: \(operatorToken), role: operator }
              - { id: root, token: \(adminToken), role: admin }
            workflows:
              poll_interval_ms: 50
              files: [\(files.joined(separator: ", "))]
            \(extra)
            """
    }

    static let alerting = """
        workflow: alerting
        agent: runner
        input: { type: object, required: [city], properties: { city: { type: string } } }
        budgets: { max_steps: 20 }
        steps:
          - id: forecast
            kind: tool
            tool: weather.getForecast
            reads: [input]
            arguments: { city: "{{ input.city }}" }
          - id: hot
            kind: branch
            reads: [forecast]
            cases:
              - { if: "forecast.high > 20", next: approve }
            default: end
          - id: approve
            kind: approval
            reads: [input]
            message: "Raise a heat alert for {{ input.city }}?"
          - id: alert
            kind: tool
            tool: weather.createAlert
            reads: [input, forecast]
            arguments: { city: "{{ input.city }}", level: "{{ forecast.high }}" }
        """

    /// Polls the run until `done` holds (or fails the test after a few seconds).
    func waitFor(_ client: some TestClientProtocol, _ id: String, timeout: Duration = .seconds(10), _ done: (JSONValue) -> Bool) async throws -> JSONValue {
        let deadline = ContinuousClock.now + timeout
        var last: JSONValue = .null
        while ContinuousClock.now < deadline {
            last = try await client.execute(uri: "/v1/runs/\(id)", method: .get, headers: auth(Self.operatorToken)) { try json($0) }
            if done(last) { return last }
            try await Task.sleep(for: .milliseconds(30))
        }
        Issue.record("run \(id) did not get there: \(last)")
        return last
    }

    @Test func aRunCallsToolsBranchesWaitsForAHumanAndFinishes() async throws {
        try await FakeWeatherAPI.serve { api, port, specPath in
            let harness = try await Harness.make(try Self.config(port: port, specPath: specPath, workflows: [Self.alerting]))
            try await harness.withWorkerClosing {
                try await Application(router: harness.router).test(.router) { client in
                    // Default deny, and bad input changes nothing.
                    try await client.execute(
                        uri: "/v1/runs", method: .post, headers: auth("stranger-key-0000000001"), body: ByteBuffer(string: #"{"workflow":"alerting","input":{"city":"Oslo"}}"#)
                    ) { response in
                        #expect(response.status == .forbidden)
                        let body = try json(response)
                        #expect(body["error"]?["code"] == "workflow_not_allowed")
                    }
                    try await client.execute(
                        uri: "/v1/runs", method: .post, headers: auth("starter-key-00000000001"), body: ByteBuffer(string: #"{"workflow":"alerting","input":{"town":"Oslo"}}"#)
                    ) { response in
                        #expect(response.status == .badRequest)
                        let body = try json(response)
                        #expect(body["error"]?["code"] == "invalid_input")
                    }
                    let start = ByteBuffer(string: #"{"workflow":"alerting","input":{"city":"Oslo"},"idempotency_key":"k-1"}"#)
                    let started = try await client.execute(uri: "/v1/runs", method: .post, headers: auth("starter-key-00000000001"), body: start) { response in
                        #expect(response.status == .created)
                        return try json(response)
                    }
                    let id = try #require(started["id"]?.stringValue)
                    // The same key again: the same run, not a second one.
                    try await client.execute(uri: "/v1/runs", method: .post, headers: auth("starter-key-00000000001"), body: start) { response in
                        #expect(response.status == .ok)
                        let body = try json(response)
                        #expect(body["id"]?.stringValue == id)
                    }
                    let waiting = try await waitFor(client, id) { $0["status"] == "waiting" }
                    let steps = waiting["steps"]?.arrayValue ?? []
                    #expect(steps.map { $0["path"]?.stringValue ?? "" } == ["forecast", "hot", "approve"])
                    #expect(steps.first?["output"]?["high"] == 21)
                    #expect(steps.last?["waiting_for"]?["kind"] == "human")
                    // Other agents do not see the run; its starter does.
                    try await client.execute(uri: "/v1/runs/\(id)", method: .get, headers: auth("runner-key-000000000001")) { response in
                        #expect(response.status == .notFound)
                    }
                    let approvals = try await client.execute(uri: "/v1/approvals?run=\(id)", method: .get, headers: auth(Self.operatorToken)) { try json($0) }
                    let approval = try #require(approvals["data"]?.arrayValue?.first)
                    #expect(approval["kind"] == "approval" && approval["reason"] == "Raise a heat alert for Oslo?")
                    let approvalID = try #require(approval["id"]?.stringValue)
                    // Agents cannot answer; an operator can, once.
                    let answer = ByteBuffer(string: #"{"decision":"approve","comment":"go"}"#)
                    try await client.execute(uri: "/v1/approvals/\(approvalID)", method: .post, headers: auth("starter-key-00000000001"), body: answer) { response in
                        #expect(response.status == .forbidden)
                    }
                    try await client.execute(uri: "/v1/approvals/\(approvalID)", method: .post, headers: auth(Self.operatorToken), body: answer) { response in
                        #expect(response.status == .ok)
                    }
                    try await client.execute(uri: "/v1/approvals/\(approvalID)", method: .post, headers: auth(Self.operatorToken), body: answer) { response in
                        #expect(response.status == .conflict)
                    }
                    let done = try await waitFor(client, id) { $0["status"] == "completed" }
                    #expect(done["output"] == ["city": "Oslo", "level": 21])
                    #expect(done["supervisor"] == "operator:alice")
                    #expect(done["usage"]?["tool_calls"] == 2)
                    let alerts = api.requests.withLock { $0.filter { $0.path == "/alerts" } }
                    #expect(alerts.count == 1)
                    #expect(alerts.first?.idempotencyKey?.isEmpty == false, "the step's idempotency key reaches the upstream")
                    let history = try await client.execute(uri: "/v1/runs/\(id)/events", method: .get, headers: auth("starter-key-00000000001")) { try json($0) }
                    let kinds = history["data"]?.arrayValue?.compactMap { $0["kind"]?.stringValue } ?? []
                    #expect(kinds.first == "run_started" && kinds.last == "run_completed")
                }
            }
        }
    }

    static let agents = [
        """
        workflow: checker
        agent: runner
        steps:
          - id: check
            kind: agent
            model: fast
            reads: [input]
            instructions: "You are the vendor checker."
            tools: [weather.getForecast]
            output_schema: { type: object, required: [vendor_ok] }
        """,
        """
        workflow: looping
        agent: runner
        steps:
          - { id: spin, kind: agent, model: fast, instructions: "You are the looper.", tools: [weather.getForecast], max_iterations: 10 }
        """,
        """
        workflow: sloppy
        agent: runner
        steps:
          - { id: answer, kind: agent, model: fast, instructions: "You are sloppy.", output_schema: { type: object }, max_output_retries: 1 }
        """,
    ]

    func start(_ client: some TestClientProtocol, _ body: String, key: String = "starter-key-00000000001") async throws -> String {
        try await client.execute(uri: "/v1/runs", method: .post, headers: auth(key), body: ByteBuffer(string: body)) { response in
            #expect(response.status == .created, "\(String(buffer: response.body))")
            return try json(response)["id"]?.stringValue ?? ""
        }
    }

    @Test func theBuiltInAgentLoopsThroughToolsValidatesItsOutputAndStopsLoops() async throws {
        try await FakeWeatherAPI.serve { _, port, specPath in
            let harness = try await Harness.make(try Self.config(port: port, specPath: specPath, workflows: Self.agents))
            try await harness.withWorkerClosing {
                try await Application(router: harness.router).test(.router) { client in
                    let good = try await start(client, #"{"workflow":"checker","input":{"vendor":"ACME"}}"#)
                    let loop = try await start(client, #"{"workflow":"looping"}"#)
                    let sloppy = try await start(client, #"{"workflow":"sloppy"}"#)
                    let done = try await waitFor(client, good) { $0["status"] == "completed" }
                    #expect(done["output"] == ["vendor_ok": true])
                    #expect(done["usage"]?["model_calls"] == 2 && done["usage"]?["tool_calls"] == 1)
                    let history = try await client.execute(uri: "/v1/runs/\(good)/events", method: .get, headers: auth(Self.operatorToken)) { try json($0) }
                    let turns = history["data"]?.arrayValue?.filter { $0["kind"] == "agent_turn" }.compactMap { $0["data"]?["turn"]?["type"]?.stringValue }
                    #expect(turns == ["model", "tool", "model"], "every model answer and tool result is checkpointed")

                    let looped = try await waitFor(client, loop) { $0["status"] == "failed" }
                    #expect(looped["error"]?["code"] == "loop_detected")
                    #expect(looped["usage"]?["tool_calls"] == 1, "the repeated call is not made")

                    let invalid = try await waitFor(client, sloppy) { $0["status"] == "failed" }
                    #expect(invalid["error"]?["code"] == "invalid_output")
                    #expect(invalid["usage"]?["model_calls"] == 2, "one answer sent back with the error, then it gives up")
                }
            }
        }
    }

    static let flows = [
        """
        workflow: spender
        agent: runner
        budgets: { max_tool_calls: 1 }
        steps:
          - { id: one, kind: tool, tool: weather.getForecast, arguments: { city: Oslo } }
          - { id: two, kind: tool, tool: weather.createAlert, arguments: { city: Oslo, level: 1 } }
        """,
        """
        workflow: fanout
        agent: runner
        steps:
          - id: each
            kind: map
            reads: [input]
            items: "{{ input.cities }}"
            max_concurrency: 2
            steps:
              - { id: look, kind: tool, tool: weather.getForecast, arguments: { city: "{{ item }}", days: "{{ index + 1 }}" } }
          - id: both
            kind: parallel
            branches:
              nap: [{ id: rest, kind: sleep, duration_ms: 50 }]
              call: [{ id: ping, kind: tool, tool: weather.getForecast, arguments: { city: Bergen } }]
        output:
          reads: [each, both]
          value: { days: "{{ each.map(f, f.days) }}", bergen: "{{ both.call.city }}" }
        """,
        """
        workflow: retrying
        agent: runner
        steps:
          - id: alert
            kind: tool
            tool: weather.createAlert
            arguments: { city: Oslo, level: 2 }
            retry: { max_attempts: 3, initial_backoff_ms: 10, max_backoff_ms: 20 }
        """,
        """
        workflow: napper
        agent: runner
        steps:
          - { id: nap, kind: sleep, duration_ms: 1500 }
          - { id: after, kind: tool, tool: weather.getForecast, arguments: { city: Nap } }
        """,
        """
        workflow: asking
        agent: runner
        steps:
          - id: amount
            kind: input
            message: "How much?"
            schema: { type: object, required: [usd], properties: { usd: { type: number } } }
        """,
    ]

    @Test func budgetsMapsParallelRetriesPausesAndInputs() async throws {
        try await FakeWeatherAPI.serve { api, port, specPath in
            let harness = try await Harness.make(
                try Self.config(port: port, specPath: specPath, workflows: Self.flows).replacing(
                    "workflows: [alerting, checker, looping, sloppy]", with: "workflows: [spender, fanout, retrying, napper, asking]"))
            try await harness.withWorkerClosing {
                try await Application(router: harness.router).test(.router) { client in
                    // A budget stops the run before the call that would pass it.
                    let spender = try await start(client, #"{"workflow":"spender"}"#)
                    let stopped = try await waitFor(client, spender) { $0["status"] == "stopped_by_budget" }
                    #expect(stopped["stopped_by"] == "max_tool_calls")
                    #expect(stopped["budget_consumed"]?["max_tool_calls"] == ["limit": 1, "used": 1])
                    #expect(api.requests.withLock { $0.filter { $0.path == "/alerts" }.count } == 0, "the second tool was never called")
                    // An operator raises the budget and retries: the run goes on from where it stopped.
                    try await client.execute(
                        uri: "/v1/runs/\(spender)/retry", method: .post, headers: auth(Self.operatorToken),
                        body: ByteBuffer(string: #"{"budgets":{"max_tool_calls":5}}"#)
                    ) { response in #expect(response.status == .accepted) }
                    _ = try await waitFor(client, spender) { $0["status"] == "completed" }
                    #expect(api.requests.withLock { $0.filter { $0.path == "/forecast/Oslo" }.count } == 1, "the finished step was not run again")

                    // Inputs are data: past the 64 KiB of small control bodies, up to server.max_body_bytes.
                    let note = String(repeating: "x", count: 100_000)
                    let fan = try await start(client, #"{"workflow":"fanout","input":{"cities":["A","B","C"],"note":"\#(note)"}}"#)
                    let fanned = try await waitFor(client, fan) { $0["status"] == "completed" }
                    #expect(fanned["output"] == ["days": [1, 2, 3], "bergen": "Bergen"])

                    let alertsBefore = api.requests.withLock { $0.filter { $0.path == "/alerts" }.count }
                    api.failuresLeft.withLock { $0 = 1 }
                    let retry = try await start(client, #"{"workflow":"retrying"}"#)
                    let retried = try await waitFor(client, retry) { $0["status"] == "completed" }
                    #expect(retried["steps"]?.arrayValue?.first?["attempt"] == 2)
                    let keys = api.requests.withLock { $0.filter { $0.path == "/alerts" }.dropFirst(alertsBefore).map(\.idempotencyKey) }
                    #expect(keys.count == 2 && keys[0] != keys[1], "each attempt has its own key")

                    // Pause holds the next step; resume lets it go; cancel ends a run.
                    let napper = try await start(client, #"{"workflow":"napper"}"#)
                    try await client.execute(uri: "/v1/runs/\(napper)/pause", method: .post, headers: auth(Self.operatorToken)) { response in
                        #expect(response.status == .accepted)
                    }
                    try await client.execute(uri: "/v1/runs/\(napper)/pause", method: .post, headers: auth("starter-key-00000000001")) { response in
                        #expect(response.status == .forbidden, "an agent may cancel its run, not steer it")
                    }
                    _ = try await waitFor(client, napper) { $0["status"] == "paused" }
                    try await Task.sleep(for: .milliseconds(500))
                    #expect(api.requests.withLock { $0.filter { $0.path == "/forecast/Nap" }.count } == 0)
                    try await client.execute(uri: "/v1/runs/\(napper)/resume", method: .post, headers: auth(Self.operatorToken)) { response in
                        #expect(response.status == .accepted)
                    }
                    _ = try await waitFor(client, napper) { $0["status"] == "completed" }
                    let cancelled = try await start(client, #"{"workflow":"napper"}"#)
                    try await client.execute(uri: "/v1/runs/\(cancelled)/cancel", method: .post, headers: auth("starter-key-00000000001")) { response in
                        #expect(response.status == .accepted)
                    }
                    _ = try await waitFor(client, cancelled) { $0["status"] == "cancelled" }
                    try await client.execute(uri: "/v1/runs/\(cancelled)/resume", method: .post, headers: auth(Self.operatorToken)) { response in
                        #expect(response.status == .conflict)
                    }

                    // An input request takes an answer that matches its schema.
                    let asking = try await start(client, #"{"workflow":"asking"}"#)
                    _ = try await waitFor(client, asking) { $0["status"] == "waiting" }
                    let approvals = try await client.execute(uri: "/v1/approvals?run=\(asking)", method: .get, headers: auth(Self.operatorToken)) { try json($0) }
                    let id = try #require(approvals["data"]?.arrayValue?.first?["id"]?.stringValue)
                    try await client.execute(
                        uri: "/v1/approvals/\(id)", method: .post, headers: auth(Self.operatorToken),
                        body: ByteBuffer(string: #"{"decision":"approve","answer":{"usd":"lots"}}"#)
                    ) { response in
                        #expect(response.status == .badRequest)
                        let body = try json(response)
                        #expect(body["error"]?["code"] == "invalid_answer")
                    }
                    try await client.execute(
                        uri: "/v1/approvals/\(id)", method: .post, headers: auth(Self.operatorToken),
                        body: ByteBuffer(string: #"{"decision":"approve","answer":{"usd":12.5}}"#)
                    ) { response in #expect(response.status == .ok) }
                    let answered = try await waitFor(client, asking) { $0["status"] == "completed" }
                    #expect(answered["output"] == ["usd": 12.5])
                }
            }
        }
    }

    /// A signal that lands while the execution is giving its run back makes the run due at
    /// once; the scheduler may claim it before the ending execution is off its list. Such a
    /// claim must still be executed, not held unused until the lease runs out (30 s here).
    /// The nap is long so that a loaded machine still pauses each run before it wakes. A
    /// stress test: with two busy loops beside it, it failed two runs of three before the fix.
    @Test func runsClaimedWhileTheirExecutionEndsAreExecuted() async throws {
        try await FakeWeatherAPI.serve { _, port, specPath in
            let napper = """
                workflow: napper
                agent: runner
                steps:
                  - { id: nap, kind: sleep, duration_ms: 2500 }
                """
            let harness = try await Harness.make(
                try Self.config(port: port, specPath: specPath, workflows: [napper]).replacing(
                    "workflows: [alerting, checker, looping, sloppy]", with: "workflows: [napper]"))
            try await harness.withWorkerClosing {
                try await Application(router: harness.router).test(.router) { client in
                    for _ in 0..<5 {
                        var ids: [String] = []
                        for _ in 0..<8 {
                            let id = try await start(client, #"{"workflow":"napper"}"#)
                            ids.append(id)
                            try await client.execute(uri: "/v1/runs/\(id)/pause", method: .post, headers: auth(Self.operatorToken)) { response in
                                #expect(response.status == .accepted)
                            }
                        }
                        for id in ids {
                            let paused = try await waitFor(client, id, timeout: .seconds(5)) { $0["status"] == "paused" }
                            #expect(paused["status"] == "paused")
                            try await client.execute(uri: "/v1/runs/\(id)/resume", method: .post, headers: auth(Self.operatorToken)) { response in
                                #expect(response.status == .accepted)
                            }
                        }
                        for id in ids {
                            let done = try await waitFor(client, id, timeout: .seconds(5)) { $0["status"] == "completed" }
                            #expect(done["status"] == "completed")
                        }
                    }
                }
            }
        }
    }

    static let eventFlows = [
        """
        workflow: heatwatch
        agent: runner
        on: { event: heat.reported, if: "event.payload.level > 3", input: { city: "{{ event.payload.city }}" } }
        steps:
          - { id: ack, kind: emit, event: heat.acknowledged, reads: [input], payload: { city: "{{ input.city }}" } }
          - { id: cleared, kind: wait_event, event: heat.cleared, reads: [input, ack], after: ack, if: "event.payload.city == input.city", timeout_ms: 60000 }
        """
    ]

    @Test func eventsStartRunsOnceAndWakeWaitingSteps() async throws {
        try await FakeWeatherAPI.serve { _, port, specPath in
            let harness = try await Harness.make(try Self.config(port: port, specPath: specPath, workflows: Self.eventFlows))
            try await harness.withWorkerClosing {
                try await Application(router: harness.router).test(.router) { client in
                    func publish(_ body: String, key: String = "starter-key-00000000001") async throws -> HTTPResponse.Status {
                        try await client.execute(uri: "/v1/events", method: .post, headers: auth(key), body: ByteBuffer(string: body)) { $0.status }
                    }
                    #expect(try await publish(#"{"type":"heat.reported","payload":{"city":"Oslo","level":5},"dedup_key":"h-1"}"#) == .accepted)
                    #expect(try await publish(#"{"type":"heat.reported","payload":{"city":"Oslo","level":5},"dedup_key":"h-1"}"#) == .ok, "a duplicate")
                    #expect(try await publish(#"{"type":"heat.reported","payload":{"city":"Rome","level":2}}"#) == .accepted)
                    #expect(try await publish(#"{"type":"other.thing","payload":{}}"#) == .forbidden, "agents publish only granted types")
                    var runs: [JSONValue] = []
                    for _ in 0..<200 {
                        runs = try await client.execute(uri: "/v1/runs?workflow=heatwatch", method: .get, headers: auth(Self.operatorToken)) { try json($0) }["data"]?
                            .arrayValue ?? []
                        if runs.first?["status"] == "waiting" { break }
                        try await Task.sleep(for: .milliseconds(20))
                    }
                    #expect(runs.count == 1, "one run for the event sent twice, none for the cool one")
                    let id = try #require(runs.first?["id"]?.stringValue)
                    #expect(try await publish(#"{"type":"heat.cleared","payload":{"city":"Rome"}}"#, key: Self.operatorToken) == .accepted)
                    try await Task.sleep(for: .milliseconds(200))
                    let still = try await client.execute(uri: "/v1/runs/\(id)", method: .get, headers: auth(Self.operatorToken)) { try json($0) }
                    #expect(still["status"] == "waiting", "an event for another city does not match")
                    #expect(try await publish(#"{"type":"heat.cleared","payload":{"city":"Oslo"}}"#, key: Self.operatorToken) == .accepted)
                    let done = try await waitFor(client, id) { $0["status"] == "completed" }
                    #expect(done["output"]?["payload"] == ["city": "Oslo"])
                    #expect(done["trigger_event"] != nil && done["started_by"]?.stringValue?.hasPrefix("event:") == true)
                    let ack = done["steps"]?.arrayValue?.first { $0["path"] == "ack" }
                    #expect(ack?["output"]?["type"] == "heat.acknowledged" && ack?["output"]?["event_id"]?.stringValue?.hasPrefix("evt_") == true)
                }
            }
        }
    }

    static let guarded = [
        """
        workflow: guarded
        agent: runner
        steps:
          - { id: alert, kind: tool, tool: weather.createAlert, arguments: { city: Oslo, level: 3 } }
          - { id: slow, kind: tool, tool: weather.slow, timeout_ms: 100, retry: { max_attempts: 1 }, on_error: end }
        """
    ]

    @Test func aPolicyHoldInsideAStepWaitsDurablyAndTheApproverSupervisesTheRun() async throws {
        try await FakeWeatherAPI.serve { api, port, specPath in
            let config = try Self.config(
                port: port, specPath: specPath, workflows: Self.guarded + [Self.alerting],
                extra: """
                    policy:
                      rules:
                        - { name: alerts-need-a-human, condition: "true", effect: require_approval, reason: Alerts wake people up., targets: ["tool:weather.createAlert"] }
                    """
            ).replacing("workflows: [alerting, checker, looping, sloppy]", with: "workflows: [guarded, alerting]")
            let harness = try await Harness.make(config)
            let services = harness.services
            try await harness.withWorkerClosing {
                try await Application(router: harness.router).test(.router) { client in
                    let id = try await start(client, #"{"workflow":"guarded"}"#)
                    let waiting = try await waitFor(client, id) { $0["status"] == "waiting" }
                    #expect(waiting["steps"]?.arrayValue?.first?["waiting_for"]?["kind"] == "policy")
                    #expect(api.requests.withLock { $0.filter { $0.path == "/alerts" }.count } == 0)
                    let approvals = try await client.execute(uri: "/v1/approvals?run=\(id)", method: .get, headers: auth(Self.operatorToken)) { try json($0) }
                    let approval = try #require(approvals["data"]?.arrayValue?.first)
                    #expect(approval["kind"] == "policy" && approval["policy"] == "alerts-need-a-human")
                    try await client.execute(
                        uri: "/v1/approvals/\(approval["id"]?.stringValue ?? "")", method: .post, headers: auth(Self.operatorToken),
                        body: ByteBuffer(string: #"{"decision":"approve"}"#)
                    ) { response in #expect(response.status == .ok) }
                    // The held call goes through once; the slow tool then times out into its error path.
                    let done = try await waitFor(client, id) { $0["status"] == "completed" }
                    #expect(api.requests.withLock { $0.filter { $0.path == "/alerts" }.count } == 1)
                    let slow = done["steps"]?.arrayValue?.first { $0["path"] == "slow" }
                    #expect(slow?["status"] == "failed" && slow?["error"]?["code"] == "timeout")
                    // The approver is the run's supervisor, in the audit log too.
                    await services.gateway.governor.audit?.writer.flush()
                    let page = try await services.store.auditRecords(matching: AuditFilter(), afterPosition: 0, limit: 1000)
                    let supervised = page.records.filter { $0.runID == id && $0.action == "tool.call" && $0.target == "weather.createAlert" && $0.decision == "allow" }
                    #expect(!supervised.isEmpty && supervised.allSatisfy { $0.supervisor == "operator:alice" }, "\(supervised.map(\.supervisor))")

                    // A fork from the checkpoint before the approval asks again, with a new approval.
                    let other = try await start(client, #"{"workflow":"alerting","input":{"city":"Oslo"}}"#)
                    _ = try await waitFor(client, other) { $0["status"] == "waiting" }
                    let history = try await client.execute(uri: "/v1/runs/\(other)/events", method: .get, headers: auth(Self.operatorToken)) { try json($0) }
                    let hot = try #require(history["data"]?.arrayValue?.first { $0["kind"] == "step_completed" && $0["data"]?["path"] == "hot" }?["seq"]?.int64Value)
                    let fork = try await client.execute(
                        uri: "/v1/runs/\(other)/fork", method: .post, headers: auth(Self.operatorToken), body: ByteBuffer(string: #"{"at_seq":\#(hot)}"#)
                    ) { response in
                        #expect(response.status == .created)
                        return try json(response)
                    }
                    let forkID = try #require(fork["id"]?.stringValue)
                    #expect(fork["forked_from"]?.stringValue == other)
                    _ = try await waitFor(client, forkID) { $0["status"] == "waiting" }
                    let asked = try await client.execute(uri: "/v1/approvals?run=\(forkID)", method: .get, headers: auth(Self.operatorToken)) { try json($0) }
                    #expect(asked["data"]?.arrayValue?.count == 1, "the fork asks its own question")
                    try await client.execute(uri: "/v1/runs/\(other)/fork", method: .post, headers: auth("starter-key-00000000001")) { response in
                        #expect(response.status == .forbidden)
                    }
                }
            }
        }
    }

    @Test func workflowsPostedThroughTheAPIRunAndTheWebhookHearsAboutPeopleAndBudgets() async throws {
        try await FakeWeatherAPI.serve { api, port, specPath in
            let config = try Self.config(
                port: port, specPath: specPath, workflows: [Self.alerting],
                extra: """
                    audit: { flush_interval_ms: 10 }
                    """
            ).replacing(
                "  poll_interval_ms: 50\n",
                with: "  poll_interval_ms: 50\n  webhook: { url: \"http://127.0.0.1:\(port)/hooks\", payload: { kind: \"{{ notification.type }}\", run: \"{{ notification.run }}\", limit: \"{{ has(notification.limit) ? notification.limit : '' }}\" } }\n")
            let harness = try await Harness.make(config)
            try await harness.withWorkerClosing {
                try await Application(router: harness.router).test(.router) { client in
                    let posted = """
                        workflow: posted
                        agent: runner
                        budgets: { max_tool_calls: 0 }
                        steps:
                          - { id: ask, kind: approval, message: "Go?" }
                          - { id: call, kind: tool, tool: weather.getForecast, arguments: { city: Paris } }
                        """
                    try await client.execute(uri: "/v1/workflows", method: .post, headers: auth(Self.operatorToken), body: ByteBuffer(string: posted)) { response in
                        #expect(response.status == .forbidden, "defining workflows takes an admin")
                    }
                    try await client.execute(
                        uri: "/v1/workflows", method: .post, headers: auth(Self.adminToken), body: ByteBuffer(string: "workflow: broken\nagent: runner\nsteps: [{id: x, kind: nope}]\n")
                    ) { response in
                        #expect(response.status == .badRequest)
                        let body = try json(response)
                        #expect(body["error"]?["code"] == "invalid_workflow")
                        #expect(body["error"]?["errors"]?.arrayValue?.first?.stringValue?.contains("3:") == true, "errors name their line")
                    }
                    try await client.execute(uri: "/v1/workflows", method: .post, headers: auth(Self.adminToken), body: ByteBuffer(string: posted)) { response in
                        #expect(response.status == .created)
                    }
                    try await client.execute(
                        uri: "/v1/workflows", method: .post, headers: auth(Self.adminToken), body: ByteBuffer(string: Self.alerting)
                    ) { response in
                        #expect(response.status == .conflict, "a workflow from the configuration is the configuration's")
                    }
                    try await client.execute(uri: "/v1/workflows/posted", method: .get, headers: auth("starter-key-00000000001")) { response in
                        #expect(response.status == .notFound, "not granted: not shown")
                    }
                    let id = try await start(client, #"{"workflow":"posted"}"#, key: Self.operatorToken)
                    _ = try await waitFor(client, id) { $0["status"] == "waiting" }
                    var hooks: [JSONValue] = []
                    for _ in 0..<100 where hooks.isEmpty {
                        hooks = api.hooks.withLock { $0 }
                        try await Task.sleep(for: .milliseconds(20))
                    }
                    #expect(hooks.first == ["kind": "approval.requested", "run": .string(id), "limit": ""], "the configured payload")
                    let approvals = try await client.execute(uri: "/v1/approvals?run=\(id)", method: .get, headers: auth(Self.operatorToken)) { try json($0) }
                    let approvalID = try #require(approvals["data"]?.arrayValue?.first?["id"]?.stringValue)
                    try await client.execute(
                        uri: "/v1/approvals/\(approvalID)", method: .post, headers: auth(Self.operatorToken), body: ByteBuffer(string: #"{"decision":"approve"}"#)
                    ) { response in #expect(response.status == .ok) }
                    let stopped = try await waitFor(client, id) { $0["status"] == "stopped_by_budget" }
                    #expect(stopped["stopped_by"] == "max_tool_calls" && stopped["supervisor"] == "operator:alice")
                    for _ in 0..<100 where api.hooks.withLock({ $0.count }) < 2 { try await Task.sleep(for: .milliseconds(20)) }
                    #expect(api.hooks.withLock { $0.last } == ["kind": "run.stopped_by_budget", "run": .string(id), "limit": "max_tool_calls"])
                    #expect(api.requests.withLock { $0.filter { $0.path == "/forecast/Paris" }.count } == 0)
                }
            }
        }
    }
}
