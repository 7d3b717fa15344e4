import InterlockCore
import InterlockProviders
import Testing

@Suite struct RequestTranslationTests {
    @Test func openAIToAnthropicMovesSystemToolsAndResults() throws {
        let request = try #require(try JSONParser.parse(#"""
            {"model":"smart","temperature":1.5,"stop":"END","user":"u1","max_tokens":99,
             "tools":[{"type":"function","function":{"name":"get_weather","description":"d","parameters":{"type":"object"}}}],
             "tool_choice":"required","parallel_tool_calls":false,
             "messages":[
               {"role":"system","content":"Be brief."},
               {"role":"user","content":[{"type":"text","text":"look"},{"type":"image_url","image_url":{"url":"data:image/png;base64,AAAA"}}]},
               {"role":"assistant","content":null,"tool_calls":[{"id":"c1","type":"function","function":{"name":"get_weather","arguments":"{\"city\":\"Paris\"}"}},{"id":"c2","type":"function","function":{"name":"get_weather","arguments":"{}"}}]},
               {"role":"tool","tool_call_id":"c1","content":"sunny"},
               {"role":"tool","tool_call_id":"c2","content":"rain"}
             ]}
            """#).objectValue)
        let out = JSONValue.object(try RequestTranslation.anthropicBody(fromOpenAI: request, model: "claude-x", defaultMaxTokens: 1000))
        #expect(out["model"] == "claude-x")
        #expect(out["system"] == "Be brief.")
        #expect(out["max_tokens"] == 99)
        #expect(out["temperature"] == .number(1))  // Anthropic's range ends at 1
        #expect(out["stop_sequences"] == ["END"])
        #expect(out["metadata"]?["user_id"] == "u1")
        #expect(out["tools"]?.arrayValue?.first?["input_schema"] == ["type": "object"])
        #expect(out["tool_choice"] == ["type": "any", "disable_parallel_tool_use": true])
        let messages = try #require(out["messages"]?.arrayValue)
        #expect(messages.map { $0["role"]?.stringValue } == ["user", "assistant", "user"])
        #expect(messages[0]["content"]?.arrayValue?[1]["source"] == ["type": "base64", "media_type": "image/png", "data": "AAAA"])
        #expect(messages[1]["content"]?.arrayValue?.first?["input"] == ["city": "Paris"])
        // Both tool results merge into one user turn, as Anthropic requires alternating roles.
        #expect(messages[2]["content"]?.arrayValue?.map { $0["tool_use_id"]?.stringValue } == ["c1", "c2"])
    }

    @Test func anthropicToOpenAISplitsToolResultsIntoToolMessages() throws {
        let request = try #require(try JSONParser.parse(#"""
            {"model":"fast","max_tokens":50,"system":[{"type":"text","text":"S"}],"stream":true,"stop_sequences":["X"],
             "tool_choice":{"type":"tool","name":"f"},"tools":[{"name":"f","input_schema":{"type":"object"}}],
             "messages":[
               {"role":"user","content":"hi"},
               {"role":"assistant","content":[{"type":"text","text":"calling"},{"type":"tool_use","id":"t1","name":"f","input":{"a":1}}]},
               {"role":"user","content":[{"type":"tool_result","tool_use_id":"t1","content":[{"type":"text","text":"42"}]},{"type":"text","text":"thanks"}]}
             ]}
            """#).objectValue)
        let out = JSONValue.object(try RequestTranslation.openAIBody(fromAnthropic: request, model: "gpt-x"))
        let messages = try #require(out["messages"]?.arrayValue)
        #expect(messages.map { $0["role"]?.stringValue } == ["system", "user", "assistant", "tool", "user"])
        #expect(messages[2]["tool_calls"]?.arrayValue?.first?["function"]?["arguments"] == #"{"a":1}"#)
        #expect(messages[3]["content"] == "42")
        #expect(out["stream_options"] == ["include_usage": true])
        #expect(out["stop"] == ["X"])
        #expect(out["tool_choice"] == ["type": "function", "function": ["name": "f"]])
    }

    @Test func invalidShapesGetTheirPathNamed() throws {
        let request = try #require(try JSONParser.parse(#"{"model":"m","messages":[{"role":"wizard","content":"x"}]}"#).objectValue)
        #expect(throws: GatewayError.self) { try RequestTranslation.anthropicBody(fromOpenAI: request, model: "c", defaultMaxTokens: 10) }
        do {
            _ = try RequestTranslation.anthropicBody(fromOpenAI: request, model: "c", defaultMaxTokens: 10)
        } catch {
            #expect(error.param == "messages[0].role")
        }
    }
}

@Suite struct UsageReadingTests {
    func usage(_ body: String, _ format: WireFormat) -> TokenUsage? {
        Array(body.utf8).withUnsafeBytes { UsageReading.fromBody($0, format: format) }
    }

    @Test func bodyUsageMatchesTheDecodedObject() throws {
        let openAI = #"{"id":"c","choices":[{"message":{"content":"the \"usage\": {}"}}],"usage":{"prompt_tokens":12,"completion_tokens":5,"prompt_tokens_details":{"cached_tokens":4,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":2}}}"#
        #expect(usage(openAI, .openAI) == TokenUsage(inputTokens: 12, outputTokens: 5, cachedInputTokens: 4))
        #expect(usage(openAI, .openAI) == UsageReading.openAI(try JSONParser.parse(openAI)["usage"]))
        let anthropic = #"{"type":"message","content":[],"usage":{"input_tokens":10,"cache_read_input_tokens":30,"cache_creation_input_tokens":5,"output_tokens":7}}"#
        #expect(usage(anthropic, .anthropic) == TokenUsage(inputTokens: 45, outputTokens: 7, cachedInputTokens: 30))
        #expect(usage(anthropic, .anthropic) == UsageReading.anthropic(try JSONParser.parse(anthropic)["usage"]))
        // Missing counts are 0; a float that is a whole number counts; other types do not.
        #expect(usage(#"{"usage":{"prompt_tokens":3.0,"completion_tokens":"9"}}"#, .openAI) == TokenUsage(inputTokens: 3, outputTokens: 0, cachedInputTokens: 0))
    }

    /// Plain digits are read directly; every other number goes through the parser. Both give
    /// what the decoded-object reader gives.
    @Test(arguments: ["0", "7", "1099511627775", "123456789012345678", "1234567890123456789", "99999999999999999999", "-3", "1e2", "2.5", "12.0"])
    func countsReadFromTheBytesMatchTheDecodedObject(number: String) throws {
        let body = #"{"usage":{"prompt_tokens":\#(number),"completion_tokens":1}}"#
        let read = try #require(usage(body, .openAI))
        #expect(read == UsageReading.openAI(try JSONParser.parse(body)["usage"]))
        if number == "1099511627775" { #expect(read.inputTokens == 1_099_511_627_775) }
        if number == "123456789012345678" { #expect(read.inputTokens == TokenUsage.maximumCount) }
    }

    /// Counts an upstream reports are capped, and negative ones are 0: Anthropic's input is a
    /// sum of three counts, which trapped on overflow before.
    @Test func hugeAndNegativeCountsAreCapped() {
        let huge = #"{"usage":{"input_tokens":9223372036854775807,"cache_read_input_tokens":9223372036854775807,"cache_creation_input_tokens":1,"output_tokens":-4}}"#
        let read = usage(huge, .anthropic)
        #expect(read == TokenUsage(inputTokens: 2 * TokenUsage.maximumCount + 1, outputTokens: 0, cachedInputTokens: TokenUsage.maximumCount))
        #expect(read == UsageReading.anthropic(try? JSONParser.parse(huge)["usage"]))
        #expect(usage(#"{"usage":{"prompt_tokens":99999999999999999,"completion_tokens":2}}"#, .openAI)?.inputTokens == TokenUsage.maximumCount)
    }

    @Test func noUsageWithoutAWellFormedUsageObject() {
        #expect(usage(#"{"id":"c","choices":[]}"#, .openAI) == nil)
        #expect(usage(#"{"usage":null}"#, .openAI) == nil)
        #expect(usage(#"{"usage":{"prompt_tokens":1}"#, .openAI) == nil, "a truncated body")
        #expect(usage(#"[{"usage":{"prompt_tokens":1}}]"#, .openAI) == nil, "not an object")
    }
}

@Suite struct StreamTranscoderTests {
    func openAIChunk(_ delta: String, finish: String = "null") -> ServerSentEvent {
        ServerSentEvent(data: #"{"id":"c1","object":"chat.completion.chunk","choices":[{"index":0,"delta":\#(delta),"finish_reason":\#(finish)}]}"#)
    }

    func events(_ bytes: [UInt8]) -> [ServerSentEvent] {
        var parser = ServerSentEventParser()
        return parser.consume(bytes)
    }

    @Test func openAIStreamWithToolCallsBecomesAnthropicEvents() throws {
        var transcoder = StreamTranscoder(from: .openAI, to: .anthropic, alias: "smart", clientWantsUsage: false, created: 1, requestID: "r")
        var out: [UInt8] = []
        out += transcoder.transcode(openAIChunk(#"{"role":"assistant","content":"Let me check."}"#))
        out += transcoder.transcode(openAIChunk(#"{"tool_calls":[{"index":0,"id":"call_9","type":"function","function":{"name":"get_weather","arguments":""}}]}"#))
        out += transcoder.transcode(openAIChunk(#"{"tool_calls":[{"index":0,"function":{"arguments":"{\"city\":"}}]}"#))
        out += transcoder.transcode(openAIChunk(#"{"tool_calls":[{"index":0,"function":{"arguments":"\"Paris\"}"}}]}"#))
        out += transcoder.transcode(openAIChunk("{}", finish: #""tool_calls""#))
        out += transcoder.transcode(ServerSentEvent(data: #"{"id":"c1","choices":[],"usage":{"prompt_tokens":30,"completion_tokens":12}}"#))
        out += transcoder.transcode(ServerSentEvent(data: "[DONE]"))
        out += transcoder.finish(completed: true)
        let names = events(out).map { $0.event ?? "" }
        #expect(names == [
            "message_start", "content_block_start", "content_block_delta", "content_block_stop",
            "content_block_start", "content_block_delta", "content_block_delta", "content_block_stop", "message_delta", "message_stop",
        ])
        let parsed = try events(out).map { try JSONParser.parse($0.data) }
        #expect(parsed[4]["content_block"]?["id"] == "call_9")
        let arguments = parsed[5...6].compactMap { $0["delta"]?["partial_json"]?.stringValue }.joined()
        #expect(try JSONParser.parse(arguments) == ["city": "Paris"])
        #expect(parsed[8]["delta"]?["stop_reason"] == "tool_use")
        #expect(parsed[8]["usage"]?["output_tokens"] == 12)
        #expect(transcoder.reportedUsage == TokenUsage(inputTokens: 30, outputTokens: 12))
        #expect(transcoder.sawEnd)
    }

    @Test func passthroughDropsTheUsageChunkTheAgentDidNotAskFor() {
        for wantsUsage in [false, true] {
            var transcoder = StreamTranscoder(from: .openAI, to: .openAI, alias: "fast", clientWantsUsage: wantsUsage, created: 1, requestID: "r")
            let text = transcoder.transcode(openAIChunk(#"{"content":"hi"}"#))
            let usage = transcoder.transcode(ServerSentEvent(data: #"{"id":"c1","choices":[],"usage":{"prompt_tokens":5,"completion_tokens":1}}"#))
            #expect(text == openAIChunk(#"{"content":"hi"}"#).encoded())
            #expect(usage.isEmpty == !wantsUsage)
            #expect(transcoder.reportedUsage == TokenUsage(inputTokens: 5, outputTokens: 1))
        }
    }

    @Test func brokenUpstreamEndsWithAnErrorEventInTheAgentsFormat() throws {
        var openAI = StreamTranscoder(from: .anthropic, to: .openAI, alias: "a", clientWantsUsage: false, created: 1, requestID: "r")
        let tail = events(openAI.finish(completed: false))
        #expect(try JSONParser.parse(tail[0].data)["error"]?["code"] == "upstream_stream_interrupted")
        var anthropic = StreamTranscoder(from: .openAI, to: .anthropic, alias: "a", clientWantsUsage: false, created: 1, requestID: "r")
        #expect(events(anthropic.finish(completed: false)).first?.event == "error")
    }
}

@Suite struct RequestPreparationTests {
    @Test func azureUsesDeploymentPathApiVersionAndApiKeyHeader() {
        var provider = ProviderSettings(id: "az", kind: .azureOpenAI, baseURL: "https://res.openai.azure.com/", apiKey: Secret("azure-secret"))
        provider.apiVersion = "2024-10-21"
        var deployment = DeploymentSettings(id: "d", providerID: "az", model: "gpt-4o")
        deployment.azureDeployment = "prod-gpt4o"
        let endpoint = RequestPreparation.endpoint(provider: provider, deployment: deployment, operation: .embeddings)
        #expect(endpoint.url == "https://res.openai.azure.com/openai/deployments/prod-gpt4o/embeddings?api-version=2024-10-21")
        #expect(endpoint.headers.contains { $0 == ("api-key", "azure-secret") })
        #expect(!endpoint.headers.contains { $0.0 == "authorization" })
    }

    @Test func openAIAndAnthropicEndpoints() {
        let openAI = RequestPreparation.endpoint(provider: ProviderSettings(id: "o", kind: .openai, baseURL: "http://localhost:8000/v1"), deployment: DeploymentSettings(id: "d", providerID: "o", model: "m"), operation: .chat)
        #expect(openAI.url == "http://localhost:8000/v1/chat/completions")
        #expect(!openAI.headers.contains { $0.0 == "authorization" })  // keyless local server
        var withHeaders = ProviderSettings(id: "a", kind: .anthropic, baseURL: "https://api.anthropic.com", apiKey: Secret("k"))
        withHeaders.headers = [("x-team", Secret("blue"))]
        let anthropic = RequestPreparation.endpoint(provider: withHeaders, deployment: DeploymentSettings(id: "d", providerID: "a", model: "m"), operation: .chat)
        #expect(anthropic.url == "https://api.anthropic.com/v1/messages")
        #expect(anthropic.headers.contains { $0 == ("x-api-key", "k") })
        #expect(anthropic.headers.contains { $0 == ("anthropic-version", "2023-06-01") })
        #expect(anthropic.headers.contains { $0 == ("x-team", "blue") })
    }

    @Test func sameFormatSplicesModelAndStreamUsageWithoutReencoding() throws {
        let body = Array(#"{"model" : "fast", "messages":[{"role":"user","content":"hi \u00e9"}],"stream":true}"#.utf8)
        let request = try ModelRequest.parse(body: body, format: .openAI, operation: .chat)
        let provider = ProviderSettings(id: "o", kind: .openai, baseURL: "http://x/v1")
        let out = try RequestPreparation.body(for: request, provider: provider, deployment: DeploymentSettings(id: "d", providerID: "o", model: "gpt-4o-mini"), defaultMaxTokens: 100)
        #expect(String(decoding: out, as: UTF8.self) == #"{"model" : "gpt-4o-mini", "messages":[{"role":"user","content":"hi \u00e9"}],"stream":true,"stream_options":{"include_usage":true}}"#)
    }
}
