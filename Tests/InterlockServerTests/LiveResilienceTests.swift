import AsyncHTTPClient
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import InterlockCore
import InterlockServer
import NIOCore
import Synchronization
import Testing

/// An OpenAI-compatible upstream whose behaviour depends on the requested model.
final class ScriptedUpstream: Sendable {
    let calls = Mutex<[String: Int]>([:])
    let lastTraceParent = Mutex<String?>(nil)
    /// Streams that Interlock closed while the upstream was still writing, by model.
    let cut = Mutex<[String: Int]>([:])

    func count(_ model: String) -> Int { calls.withLock { $0[model, default: 0] } }

    static func completion(_ text: String) -> Response {
        Response(status: .ok, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(string:
            #"{"id":"x","object":"chat.completion","created":1,"model":"up","choices":[{"index":0,"message":{"role":"assistant","content":"\#(text)"},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}"#)))
    }

    func router() -> Router<BasicRequestContext> {
        let router = Router()
        router.post("/v1/chat/completions") { request, context -> Response in
            var request = request
            let body = try await request.collectBody(upTo: 1 << 20)
            let model = try JSONParser.parse(Array(body.readableBytesView))["model"]?.stringValue ?? ""
            let call = self.calls.withLock { calls -> Int in
                calls[model, default: 0] += 1
                return calls[model]!
            }
            self.lastTraceParent.withLock { $0 = request.headers[HTTPField.Name("traceparent")!] }
            switch model {
            case "limited" where call == 1:
                return Response(status: .tooManyRequests, headers: [HTTPField.Name("retry-after-ms")!: "150", .contentType: "application/json"],
                    body: .init(byteBuffer: ByteBuffer(string: #"{"error":{"message":"slow down"}}"#)))
            case "down":
                return Response(status: .serviceUnavailable, body: .init(byteBuffer: ByteBuffer(string: #"{"error":{"message":"maintenance"}}"#)))
            case "slow-stream":
                return Response(status: .ok, headers: [.contentType: "text/event-stream"], body: ResponseBody { writer in
                    for index in 0..<40 {
                        let chunk = #"data: {"id":"s","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"w\#(index) "},"finish_reason":null}]}"# + "\n\n"
                        try await writer.write(ByteBuffer(string: chunk))
                        try await Task.sleep(for: .milliseconds(50))
                    }
                    try await writer.write(ByteBuffer(string: "data: [DONE]\n\n"))
                    try await writer.finish(nil)
                })
            case "endless-stream":
                // One event, then an event that never ends: written until Interlock hangs up.
                return Response(status: .ok, headers: [.contentType: "text/event-stream"], body: ResponseBody { writer in
                    do {
                        try await writer.write(ByteBuffer(string: #"data: {"id":"s","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"first "},"finish_reason":null}]}"# + "\n\ndata: "))
                        for _ in 0..<2_000 {
                            try await writer.write(ByteBuffer(repeating: UInt8(ascii: "x"), count: 1_024))
                            try await Task.sleep(for: .milliseconds(5))
                        }
                        try await writer.finish(nil)
                    } catch {
                        self.cut.withLock { $0[model, default: 0] += 1 }
                        throw error
                    }
                })
            default:
                return Self.completion("served by \(model)")
            }
        }
        return router
    }
}

@Suite struct LiveResilienceTests {
    func config(base: String) -> String {
        """
        gateway:
          retries: { max_attempts: 2, initial_backoff_ms: 1, max_backoff_ms: 1000 }
          breaker: { consecutive_failures: 2, open_ms: 60000 }
          max_stream_event_bytes: 4096
        providers:
          up:
            type: openai
            base_url: \(base)/v1
          mock:
            type: mock
        models:
          limited:
            deployments: [{ provider: up, model: limited }]
          flaky:
            fallbacks: [backup]
            deployments: [{ id: down-deployment, provider: up, model: down }]
          backup:
            deployments: [{ id: backup-deployment, provider: mock, model: m }]
          slow:
            deployments: [{ provider: up, model: slow-stream, price: { input_per_mtok: 1, output_per_mtok: 1 } }]
          plain:
            deployments: [{ provider: up, model: plain }]
          endless:
            deployments: [{ provider: up, model: endless-stream }]
        agents:
          - id: a
            api_key: test-key-aaaaaaaaaaaa
            models: ["*"]
        """
    }

    /// The scripted upstream and Interlock in front of it, both live: `body` gets the upstream,
    /// Interlock's services and a client of it.
    func withGateway(_ body: @escaping @Sendable (ScriptedUpstream, InterlockServices, any TestClientProtocol) async throws -> Void) async throws {
        let upstream = ScriptedUpstream()
        let upstreamApp = Application(router: upstream.router(), configuration: .init(address: .hostname("127.0.0.1", port: 0)))
        try await upstreamApp.test(.live) { upstreamClient in
            let harness = try await Harness.make(config(base: "http://127.0.0.1:\(upstreamClient.port!)"))
            let services = harness.services
            try await harness.application().test(.live) { client in try await body(upstream, services, client) }
            try await harness.close()
        }
    }

    /// The ledger row of the call to `target`, once the ledger has written it.
    func billed(_ target: String, in services: InterlockServices) async throws -> UsageRecord {
        var record: UsageRecord?
        for _ in 0..<100 {
            await services.ledger.flush()
            record = try await services.store.recentUsage(limit: 5).first { $0.target == target }
            if record != nil { break }
            try await Task.sleep(for: .milliseconds(50))
        }
        return try #require(record)
    }

    @Test func retryAfterBreakerFallbackAndTraceContext() async throws {
        try await withGateway { upstream, services, client in
            // 429 with retry-after-ms: the retry waits that long, then succeeds.
            try await client.execute(uri: "/v1/chat/completions", method: .post, headers: auth("test-key-aaaaaaaaaaaa"), body: chat("limited")) { response in
                #expect(response.status == .ok)
                #expect(response.headers[HTTPField.Name("x-interlock-attempts")!] == "2")
                // First attempt on the event loop, the retry on the async path.
                #expect(response.headers[HTTPField.Name("x-interlock-path")!] == "event-loop,async")
                let queued = Double(response.headers[HTTPField.Name("x-interlock-queue-ms")!] ?? "0") ?? 0
                #expect(queued >= 140)
            }
            // A deployment that keeps failing: two attempts, breaker opens, fallback alias answers.
            try await client.execute(uri: "/v1/chat/completions", method: .post, headers: auth("test-key-aaaaaaaaaaaa"), body: chat("flaky")) { response in
                #expect(response.status == .ok)
                #expect(response.headers[HTTPField.Name("x-interlock-deployment")!] == "backup-deployment")
                #expect(response.headers[HTTPField.Name("x-interlock-attempts")!] == "3")
            }
            #expect(upstream.count("down") == 2)
            #expect(services.gateway.deploymentState("down-deployment")?.breakerState == "open")
            // With the breaker open the broken deployment is not called at all.
            try await client.execute(uri: "/v1/chat/completions", method: .post, headers: auth("test-key-aaaaaaaaaaaa"), body: chat("flaky")) { response in
                #expect(response.status == .ok)
                #expect(response.headers[HTTPField.Name("x-interlock-attempts")!] == "1")
            }
            #expect(upstream.count("down") == 2)
            // The agent's W3C trace context reaches the upstream.
            let traceParent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
            var headers = auth("test-key-aaaaaaaaaaaa")
            headers[HTTPField.Name("traceparent")!] = traceParent
            try await client.execute(uri: "/v1/chat/completions", method: .post, headers: headers, body: chat("plain")) { response in
                #expect(response.status == .ok)
                #expect(response.headers[HTTPField.Name("x-interlock-path")!] == "event-loop")
            }
            #expect(upstream.lastTraceParent.withLock { $0 } == traceParent)
        }
    }

    /// The agent hangs up mid-stream: Interlock stops reading the upstream and bills what was delivered.
    @Test func agentDisconnectMidStreamIsBilledAsPartial() async throws {
        try await withGateway { _, services, client in
            let url = "http://127.0.0.1:\(client.port!)/v1/chat/completions"
            let received = try await withThrowingTaskGroup(of: Int.self) { group in
                group.addTask {
                    var request = HTTPClientRequest(url: url)
                    request.method = .POST
                    request.headers.add(name: "authorization", value: "Bearer test-key-aaaaaaaaaaaa")
                    request.body = .bytes(chat("slow", "go", extra: #","stream":true"#))
                    let response = try await HTTPClient.shared.execute(request, timeout: .seconds(10))
                    var bytes = 0
                    for try await chunk in response.body {
                        bytes += chunk.readableBytes
                        if bytes > 400 { break }  // hang up after a few events
                    }
                    return bytes
                }
                return try await group.next()!
            }
            #expect(received > 400)
            let billed = try await billed("slow", in: services)
            #expect(billed.outcome == .partial)
            #expect(billed.status == 499)
            #expect(billed.usage.outputTokens > 0 && billed.usage.outputTokens < 40)
            #expect(billed.cost > .zero)
        }
    }

    /// An upstream event past `gateway.max_stream_event_bytes` ends the agent's stream with an
    /// error event (the async path's relay), closes the upstream, and bills what was delivered.
    @Test func aStreamEventPastItsBoundEndsTheStream() async throws {
        try await withGateway { upstream, services, client in
            var request = HTTPClientRequest(url: "http://127.0.0.1:\(client.port!)/v1/chat/completions")
            request.method = .POST
            request.headers.add(name: "authorization", value: "Bearer test-key-aaaaaaaaaaaa")
            request.body = .bytes(chat("endless", "go", extra: #","stream":true"#))
            let response = try await HTTPClient.shared.execute(request, timeout: .seconds(10))
            #expect(response.status == .ok)
            let body = String(buffer: try await response.body.collect(upTo: 1 << 20))
            #expect(body.contains(#""content":"first ""#))
            #expect(body.contains(#""code":"upstream_event_too_large""#) && body.contains("more than 4096 bytes"), "\(body)")
            #expect(!body.contains("[DONE]") && !body.contains("xxxx"))
            let billed = try await billed("endless", in: services)
            #expect(billed.outcome == .partial && billed.status == 200 && billed.errorCode == "upstream_event_too_large")
            #expect(billed.usage.outputTokens == 1)
            for _ in 0..<100 where upstream.cut.withLock({ $0["endless-stream"] }) == nil { try await Task.sleep(for: .milliseconds(50)) }
            #expect(upstream.cut.withLock { $0["endless-stream"] } == 1)
        }
    }
}
