import AsyncHTTPClient
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import InterlockCore
import InterlockServer
import NIOCore
import Synchronization
import Testing

/// A fake provider started in the test: an OpenAI endpoint that fails first and an Anthropic
/// endpoint that streams, so the real HTTP adapters, retries and translation are exercised.
final class FakeProvider: Sendable {
    let openAICalls = Atomic<Int>(0)

    func router() -> Router<BasicRequestContext> {
        let router = Router()
        router.post("/v1/chat/completions") { request, _ -> Response in
            let call = self.openAICalls.add(1, ordering: .relaxed).newValue
            if call == 1 {
                return Response(status: .internalServerError, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(string: #"{"error":{"message":"boom with key sk-secret123456789"}}"#)))
            }
            let auth = request.headers[.authorization] ?? ""
            let text = auth == "Bearer upstream-openai-key" ? "authorized" : "wrong key"
            return Response(status: .ok, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(string: #"{"id":"x","object":"chat.completion","created":1,"model":"up","choices":[{"index":0,"message":{"role":"assistant","content":"\#(text)"},"finish_reason":"stop"}],"usage":{"prompt_tokens":11,"completion_tokens":7,"total_tokens":18}}"#)))
        }
        router.post("/v1/messages") { request, _ -> Response in
            let events = [
                #"event: message_start\#ndata: {"type":"message_start","message":{"id":"msg_1","type":"message","role":"assistant","model":"claude","content":[],"usage":{"input_tokens":25,"output_tokens":1}}}\#n\#n"#,
                #"event: content_block_start\#ndata: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}\#n\#n"#,
                #"event: content_block_delta\#ndata: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hello"}}\#n\#n"#,
                #"event: content_block_delta\#ndata: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":" world"}}\#n\#n"#,
                #"event: content_block_stop\#ndata: {"type":"content_block_stop","index":0}\#n\#n"#,
                #"event: message_delta\#ndata: {"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":9}}\#n\#n"#,
                #"event: message_stop\#ndata: {"type":"message_stop"}\#n\#n"#,
            ]
            let version = request.headers[HTTPField.Name("anthropic-version")!] ?? ""
            guard request.headers[HTTPField.Name("x-api-key")!] == "upstream-anthropic-key", version == "2023-06-01" else {
                return Response(status: .unauthorized)
            }
            return Response(status: .ok, headers: [.contentType: "text/event-stream"], body: ResponseBody { writer in
                for event in events {
                    // Split every event across two writes: the parser must not care.
                    let bytes = Array(event.utf8)
                    try await writer.write(ByteBuffer(bytes: bytes[..<(bytes.count / 2)]))
                    try await writer.write(ByteBuffer(bytes: bytes[(bytes.count / 2)...]))
                }
                try await writer.finish(nil)
            })
        }
        return router
    }
}

@Suite struct LiveUpstreamTests {
    @Test func retriesServerErrorsTranslatesAnthropicStreamsAndBillsThem() async throws {
        let fake = FakeProvider()
        let upstream = Application(router: fake.router(), configuration: .init(address: .hostname("127.0.0.1", port: 0)))
        try await upstream.test(.live) { upstreamClient in
            let base = "http://127.0.0.1:\(upstreamClient.port!)"
            let config = """
                gateway:
                  retries: { max_attempts: 3, initial_backoff_ms: 1, max_backoff_ms: 5 }
                providers:
                  up-openai:
                    type: openai
                    base_url: \(base)/v1
                    api_key: upstream-openai-key
                  up-anthropic:
                    type: anthropic
                    base_url: \(base)
                    api_key: upstream-anthropic-key
                models:
                  gpt:
                    deployments:
                      - provider: up-openai
                        model: up
                        price: { input_per_mtok: 1, output_per_mtok: 1 }
                  claude:
                    deployments:
                      - provider: up-anthropic
                        model: claude
                        price: { input_per_mtok: 1, output_per_mtok: 1 }
                agents:
                  - id: a
                    api_key: test-key-aaaaaaaaaaaa
                    models: [gpt, claude]
                """
            let harness = try await Harness.make(config)
            let app = harness.application()
            try await app.test(.live) { client in
                try await client.execute(uri: "/v1/chat/completions", method: .post, headers: auth("test-key-aaaaaaaaaaaa"), body: chat("gpt")) { response in
                    #expect(response.status == .ok)
                    #expect(response.headers[HTTPField.Name("x-interlock-attempts")!] == "2")
                    let body = try JSONParser.parse(Array(response.body.readableBytesView))
                    #expect(body["choices"]?.arrayValue?.first?["message"]?["content"] == "authorized")
                }
                try await client.execute(
                    uri: "/v1/chat/completions", method: .post, headers: auth("test-key-aaaaaaaaaaaa"),
                    body: chat("claude", "hi", extra: #","stream":true,"stream_options":{"include_usage":true}"#)
                ) { response in
                    #expect(response.status == .ok)
                    #expect(response.headers[.contentType] == "text/event-stream")
                    // Relayed and translated (Anthropic events to OpenAI chunks) on the event loop.
                    #expect(response.headers[HTTPField.Name("x-interlock-path")!] == "event-loop")
                    let text = String(buffer: response.body)
                    var content = ""
                    var usage: JSONValue?
                    for line in text.split(separator: "\n") where line.hasPrefix("data: ") && line != "data: [DONE]" {
                        let chunk = try JSONParser.parse(String(line.dropFirst(6)))
                        content += chunk["choices"]?.arrayValue?.first?["delta"]?["content"]?.stringValue ?? ""
                        if let found = chunk["usage"], !found.isNull { usage = found }
                    }
                    #expect(content == "Hello world")
                    #expect(text.hasSuffix("data: [DONE]\n\n"))
                    #expect(usage?["prompt_tokens"] == 25)
                    #expect(usage?["completion_tokens"] == 9)
                }
            }
            #expect(fake.openAICalls.load(ordering: .relaxed) == 2)
            await harness.services.ledger.flush()
            let records = try await harness.services.store.recentUsage(limit: 10)
            let stream = records.first { $0.target == "claude" }
            #expect(stream?.usage == TokenUsage(inputTokens: 25, outputTokens: 9))
            #expect(stream?.outcome == .success)
            #expect(stream?.cost == USD(dollars: 34.0 / 1_000_000))
            #expect(records.first { $0.target == "gpt" }?.attempts == 2)
            try await harness.close()
        }
    }
}
