import FoundationEssentials
import InterlockCore
import NIOCore
import Synchronization

/// A scripted OpenAI-compatible model that runs inside Interlock: offline quick starts,
/// demos and tests. Rules match the conversation (the last user message, tool results) and
/// answer with text or tool calls, streamed or not, after a configurable latency; an error
/// rule makes it fail a given number of times to exercise retries, breakers and fallbacks.
public final class MockModelUpstream: ModelUpstream {
    private let errorCounts = Mutex<[String: Int]>([:])

    public init() {}

    public func send(_ call: UpstreamCall) async throws -> UpstreamResponse {
        let settings = call.provider.mock ?? MockSettings()
        guard case .object(let request)? = try? JSONParser.parse(call.body) else {
            return MockModelUpstream.error(status: 400, message: "mock: request body is not a JSON object")
        }
        if call.operation == .embeddings {
            try await MockModelUpstream.pause(milliseconds: settings.latencyMs)
            return embeddings(request: request, call: call, settings: settings)
        }
        let conversation = Conversation(request)
        let rule = choose(settings.rules, conversation: conversation, provider: call.provider.id, model: call.deployment.model)
        try await MockModelUpstream.pause(milliseconds: rule?.latencyMs ?? settings.latencyMs)
        if let rule, let status = rule.errorStatus {
            return MockModelUpstream.error(status: status, message: rule.errorMessage ?? "mock: scripted error")
        }
        let text: String? = rule.map { $0.text ?? ($0.toolCalls.isEmpty ? "" : nil) } ?? "Mock answer to: \(conversation.lastUser)"
        let toolCalls = rule?.toolCalls ?? []
        let promptTokens = rule?.promptTokens ?? max(1, conversation.characterCount / 4)
        let completionTokens = rule?.completionTokens ?? MockModelUpstream.countTokens(text: text, toolCalls: toolCalls)
        let usage = TokenUsage(inputTokens: promptTokens, outputTokens: completionTokens, cachedInputTokens: min(rule?.cachedTokens ?? 0, promptTokens))
        let id = "mock-\(UInt64.random(in: 0...UInt64.max))"
        let created = Int64(Date().timeIntervalSince1970)
        if call.stream {
            let includeUsage = request["stream_options"]?["include_usage"]?.boolValue ?? false
            let events = MockModelUpstream.streamEvents(
                id: id, model: call.deployment.model, created: created, text: text, toolCalls: toolCalls, usage: includeUsage ? usage : nil)
            let delay = settings.streamChunkDelayMs
            let stream = AsyncThrowingStream<ByteBuffer, any Error> { continuation in
                let task = Task {
                    for event in events {
                        if delay > 0 {
                            do { try await Task.sleep(for: .milliseconds(delay)) } catch { break }
                        }
                        continuation.yield(ByteBuffer(bytes: event))
                    }
                    continuation.finish()
                }
                continuation.onTermination = { _ in task.cancel() }
            }
            return UpstreamResponse(status: 200, retryAfter: nil, contentType: "text/event-stream", body: .generated(stream))
        }
        var message: JSONObject = ["role": "assistant", "content": text.map(JSONValue.string) ?? .null]
        if !toolCalls.isEmpty { message["tool_calls"] = .array(MockModelUpstream.toolCallValues(toolCalls, id: id)) }
        let response: JSONValue = [
            "id": .string(id), "object": "chat.completion", "created": .integer(created), "model": .string(call.deployment.model),
            "choices": [["index": 0, "message": .object(message), "logprobs": .null, "finish_reason": toolCalls.isEmpty ? "stop" : "tool_calls"]],
            "usage": ResponseTranslation.openAIUsage(usage),
        ]
        return MockModelUpstream.json(status: 200, response)
    }

    private func choose(_ rules: [MockRule], conversation: Conversation, provider: String, model: String) -> MockRule? {
        for (index, rule) in rules.enumerated() where conversation.matches(rule.match, model: model) {
            if rule.errorStatus != nil, let times = rule.errorTimes {
                let key = "\(provider)#\(index)"
                let used = errorCounts.withLock { counts -> Int in
                    let used = counts[key, default: 0]
                    if used < times { counts[key] = used + 1 }
                    return used
                }
                if used >= times { continue }
            }
            return rule
        }
        return nil
    }

    private static func pause(milliseconds: Int) async throws {
        if milliseconds > 0 { try await Task.sleep(for: .milliseconds(milliseconds)) }
    }

    private static func countTokens(text: String?, toolCalls: [MockRule.ToolCall]) -> Int {
        let words = text.map { $0.split(whereSeparator: { $0 == " " || $0 == "\n" }).count } ?? 0
        let arguments = toolCalls.reduce(0) { $0 + JSONWriter.bytes($1.arguments).count / 4 + 1 }
        return max(1, words + arguments)
    }

    private static func toolCallValues(_ calls: [MockRule.ToolCall], id: String) -> [JSONValue] {
        calls.enumerated().map { index, call in
            [
                "id": .string("call_\(index)_\(id.suffix(8))"), "type": "function",
                "function": ["name": .string(call.name), "arguments": .string(JSONWriter.string(call.arguments))],
            ]
        }
    }

    static func streamEvents(id: String, model: String, created: Int64, text: String?, toolCalls: [MockRule.ToolCall], usage: TokenUsage?) -> [[UInt8]] {
        func chunk(_ delta: JSONValue, finish: JSONValue = .null) -> [UInt8] {
            let value: JSONValue = [
                "id": .string(id), "object": "chat.completion.chunk", "created": .integer(created), "model": .string(model),
                "choices": [["index": 0, "delta": delta, "logprobs": .null, "finish_reason": finish]],
            ]
            return ServerSentEvent(data: JSONWriter.bytes(value)).encoded()
        }
        var events: [[UInt8]] = [chunk(["role": "assistant", "content": ""])]
        if let text, !text.isEmpty {
            // One fragment per word, spaces kept, like a tokenizer would roughly split it.
            var piece = ""
            for character in text {
                piece.append(character)
                if character == " " {
                    events.append(chunk(["content": .string(piece)]))
                    piece = ""
                }
            }
            if !piece.isEmpty { events.append(chunk(["content": .string(piece)])) }
        }
        for (index, call) in toolValues(toolCalls, id: id).enumerated() {
            let arguments = call["function"]?["arguments"]?.stringValue ?? "{}"
            let half = arguments.index(arguments.startIndex, offsetBy: arguments.count / 2)
            events.append(chunk(["tool_calls": [["index": .integer(Int64(index)), "id": call["id"] ?? "", "type": "function", "function": ["name": call["function"]?["name"] ?? "", "arguments": ""]]]]))
            events.append(chunk(["tool_calls": [["index": .integer(Int64(index)), "function": ["arguments": .string(String(arguments[..<half]))]]]]))
            events.append(chunk(["tool_calls": [["index": .integer(Int64(index)), "function": ["arguments": .string(String(arguments[half...]))]]]]))
        }
        events.append(chunk([:], finish: toolCalls.isEmpty ? "stop" : "tool_calls"))
        if let usage {
            let value: JSONValue = [
                "id": .string(id), "object": "chat.completion.chunk", "created": .integer(created), "model": .string(model),
                "choices": [], "usage": ResponseTranslation.openAIUsage(usage),
            ]
            events.append(ServerSentEvent(data: JSONWriter.bytes(value)).encoded())
        }
        events.append(ServerSentEvent(data: "[DONE]").encoded())
        return events
    }

    private static func toolValues(_ calls: [MockRule.ToolCall], id: String) -> [JSONValue] { toolCallValues(calls, id: id) }

    private func embeddings(request: JSONObject, call: UpstreamCall, settings: MockSettings) -> UpstreamResponse {
        let inputs: [String]
        switch request["input"] {
        case .string(let text)?: inputs = [text]
        case .array(let items)?: inputs = items.map { $0.stringValue ?? JSONWriter.string($0) }
        default: return MockModelUpstream.error(status: 400, message: "mock: 'input' must be a string or an array")
        }
        let dimensions = Int(clamping: request["dimensions"]?.int64Value ?? Int64(settings.embeddingDimensions))
        var data: [JSONValue] = []
        var tokens = 0
        for (index, input) in inputs.enumerated() {
            tokens += max(1, input.utf8.count / 4)
            // Deterministic pseudo-random unit vector seeded by the text (FNV-1a then xorshift).
            var state: UInt64 = 0xcbf2_9ce4_8422_2325
            for byte in input.utf8 { state = (state ^ UInt64(byte)) &* 0x100_0000_01b3 }
            var vector: [Double] = []
            for _ in 0..<max(1, dimensions) {
                state ^= state << 13
                state ^= state >> 7
                state ^= state << 17
                vector.append(Double(state % 20_000) / 10_000 - 1)
            }
            let norm = max(1e-9, vector.reduce(0) { $0 + $1 * $1 }.squareRoot())
            data.append(["object": "embedding", "index": .integer(Int64(index)), "embedding": .array(vector.map { .number(($0 / norm * 1e6).rounded() / 1e6) })])
        }
        return MockModelUpstream.json(status: 200, [
            "object": "list", "data": .array(data), "model": .string(call.deployment.model),
            "usage": ["prompt_tokens": .integer(Int64(tokens)), "total_tokens": .integer(Int64(tokens))],
        ])
    }

    private static func json(status: Int, _ value: JSONValue) -> UpstreamResponse {
        let bytes = JSONWriter.bytes(value)
        let stream = AsyncThrowingStream<ByteBuffer, any Error> { continuation in
            continuation.yield(ByteBuffer(bytes: bytes))
            continuation.finish()
        }
        return UpstreamResponse(status: status, retryAfter: nil, contentType: "application/json", body: .generated(stream))
    }

    private static func error(status: Int, message: String) -> UpstreamResponse {
        var response = json(status: status, ["error": ["message": .string(message), "type": "mock_error", "code": .string("mock_\(status)")]])
        if status == 429 { response.retryAfter = .milliseconds(50) }
        return response
    }
}

/// What the mock looks at in a chat request.
private struct Conversation {
    var lastUser = ""
    var lastToolResult: String?
    var system = ""
    var characterCount = 0

    init(_ request: JSONObject) {
        let messages = request["messages"]?.arrayValue ?? []
        for message in messages {
            let text = RequestTranslation.textOf(message["content"])
            characterCount += text.count
            switch message["role"]?.stringValue {
            case "user":
                lastUser = text
                lastToolResult = nil
            case "tool", "function":
                lastToolResult = text
            case "system", "developer":
                system += text
            default:
                break
            }
        }
    }

    func matches(_ match: MockRule.Match, model: String) -> Bool {
        if let wanted = match.model, wanted != model { return false }
        if let needle = match.lastUserContains, !lastUser.lowercased().contains(needle.lowercased()) { return false }
        if let exact = match.lastUserEquals, lastUser != exact { return false }
        if let hasTool = match.hasToolResult, hasTool != (lastToolResult != nil) { return false }
        if let needle = match.toolResultContains, !(lastToolResult?.lowercased().contains(needle.lowercased()) ?? false) { return false }
        if let needle = match.systemContains, !system.lowercased().contains(needle.lowercased()) { return false }
        return true
    }
}
