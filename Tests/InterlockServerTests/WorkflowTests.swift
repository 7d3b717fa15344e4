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
}
