import InterlockCore
import InterlockProviders

/// Guardrails on a streamed model answer, in the upstream's own event format (before any
/// translation). Text deltas are scanned together with a bounded look-behind window of what
/// was already sent, so a secret split across chunks is still found. When a rule may redact
/// or block, the last `window` bytes of text are held back until more text (or the end)
/// arrives, so nothing a rule would stop has reached the agent when it is found; a
/// flag-only guard holds nothing back. Tool-call arguments (OpenAI `tool_calls` deltas,
/// Anthropic `input_json_delta`) are guarded the same way, each call as its own text.
struct StreamGuard {
    private struct Choice {
        /// The last `window` bytes already released, as the upstream sent them.
        var context: [UInt8] = []
        /// Text received and not yet released.
        var pending: [UInt8] = []
        /// Bytes released so far (absolute offset of `pending`).
        var released = 0
        /// Redactions still to apply, in absolute offsets.
        var redactions: [Range<Int>] = []
        var reported = Set<String>()
    }

    let plan: GuardrailPlan
    let window: Int
    let native: WireFormat
    let holdBack: Bool
    private var choices: [Int: Choice] = [:]
    /// The last OpenAI chunk, as a template for text released at the end.
    private var template: JSONObject?
    /// Every hit so far.
    private(set) var hits: [GuardrailHit] = []
    /// The hit that stopped the stream, if one did.
    private(set) var blocked: GuardrailHit?

    init(plan: GuardrailPlan, window: Int, native: WireFormat) {
        self.plan = plan
        self.window = window
        self.native = native
        holdBack = plan.strongest >= .redact
    }

    /// The events to pass on for one upstream event (none once blocked).
    mutating func filter(_ event: ServerSentEvent) -> [ServerSentEvent] {
        guard blocked == nil else { return [] }
        switch native {
        case .openAI: return filterOpenAI(event)
        case .anthropic: return filterAnthropic(event)
        }
    }

    /// What is still held back, as events (the upstream ended without its own end events).
    mutating func finish() -> [ServerSentEvent] {
        guard blocked == nil else { return [] }
        var events: [ServerSentEvent] = []
        for key in choices.keys.sorted() {
            let text = release(key, all: true)
            guard !text.isEmpty else { continue }
            switch (native, key) {
            case (.openAI, 2_000_000...), (.openAI, 1_000_000...):
                events.append(openAIToolArguments(choice: (key - 1_000_000) / 1_000, tool: (key - 1_000_000) % 1_000, text))
            case (.openAI, _):
                events.append(openAIText(key, text))
            case (.anthropic, 2_000_000...):
                events.append(anthropicJSON(key - 2_000_000, text))
            case (.anthropic, _):
                events.append(anthropicText(key, text))
            }
        }
        return events
    }

    // MARK: Text

    /// Text held back past this is released anyway (redactions applied), so a block that
    /// never ends (a private key without its END line) cannot hold the answer or make every
    /// chunk rescan an ever longer text.
    static let maxHeldBytes = 8 * 1024

    /// Keys of the streams of text inside an answer: a choice's (or content block's) text is
    /// keyed by its index; tool-call arguments get their own keys.
    static func toolKey(choice: Int, tool: Int) -> Int { 1_000_000 + choice * 1_000 + tool }
    static func jsonKey(block: Int) -> Int { 2_000_000 + block }

    /// Takes a text delta of one stream of text and returns the text that may be released now.
    private mutating func take(_ index: Int, _ text: String, path: String) -> String {
        var choice = choices[index] ?? Choice()
        choice.pending += Array(text.utf8)
        let scanned = choice.context + choice.pending
        let base = choice.released - choice.context.count
        for hit in plan.scan(String(decoding: scanned, as: UTF8.self), path: path, field: nil) {
            let absolute = (base + hit.range.lowerBound)..<(base + hit.range.upperBound)
            guard absolute.upperBound > choice.released else { continue }
            let key = "\(hit.detector)@\(absolute.lowerBound)"
            guard choice.reported.insert(key).inserted else {
                // The same finding, grown with the new text (a key still arriving): widen its
                // redaction so none of the rest goes out.
                let clippedStart = max(absolute.lowerBound, choice.released)
                if hit.action == .redact, let position = choice.redactions.firstIndex(where: { $0.lowerBound == clippedStart && $0.upperBound < absolute.upperBound }) {
                    choice.redactions[position] = choice.redactions[position].lowerBound..<absolute.upperBound
                    if let recorded = hits.lastIndex(where: { $0.detector == hit.detector && $0.range.lowerBound == absolute.lowerBound }) {
                        hits[recorded].range = absolute
                    }
                }
                continue
            }
            var recorded = hit
            recorded.range = absolute
            hits.append(recorded)
            switch hit.action {
            case .block, .requireApproval:
                if blocked == nil { blocked = recorded }
            case .redact:
                choice.redactions.append(max(absolute.lowerBound, choice.released)..<absolute.upperBound)
            case .flag:
                break
            }
        }
        let overflowing = choice.pending.count > Self.maxHeldBytes
        choices[index] = choice
        return blocked == nil ? release(index, all: !holdBack || overflowing) : ""
    }

    /// Releases what may go now: all of it, or all but the last `window` bytes (never
    /// splitting a character or a redaction).
    private mutating func release(_ index: Int, all: Bool) -> String {
        guard var choice = choices[index] else { return "" }
        var cut = all ? choice.pending.count : max(0, choice.pending.count - window)
        while cut > 0, cut < choice.pending.count, choice.pending[cut] & 0xC0 == 0x80 { cut -= 1 }
        let received = choice.released + choice.pending.count
        for range in choice.redactions where range.lowerBound < choice.released + cut && (choice.released + cut < range.upperBound || (!all && range.upperBound == received)) {
            // Never split a redaction; one that reaches the end of what arrived may still grow.
            cut = max(0, range.lowerBound - choice.released)
        }
        guard cut > 0 else { return "" }
        let raw = Array(choice.pending[0..<cut])
        var output: [UInt8] = []
        var cursor = 0
        var remaining: [Range<Int>] = []
        for range in choice.redactions.sorted(by: { $0.lowerBound < $1.lowerBound }) {
            let start = range.lowerBound - choice.released
            let end = range.upperBound - choice.released
            guard start < cut else {
                remaining.append(range)
                continue
            }
            if start >= cursor {
                output += raw[cursor..<start]
                let detector = hits.last { $0.range == range || $0.range.overlaps(range) }?.detector ?? "guardrail"
                output += Array("[REDACTED:\(detector)]".utf8)
            }
            cursor = max(cursor, min(end, cut))
        }
        output += raw[min(cursor, cut)..<cut]
        choice.redactions = remaining
        choice.pending.removeFirst(cut)
        choice.released += cut
        // The window starts on a character: a stray continuation byte would decode as U+FFFD
        // (three bytes) and shift every offset after it.
        var context = Array((choice.context + raw).suffix(window))
        while let first = context.first, first & 0xC0 == 0x80 { context.removeFirst() }
        choice.context = context
        choices[index] = choice
        return String(decoding: output, as: UTF8.self)
    }

    // MARK: OpenAI chunks

    private mutating func filterOpenAI(_ event: ServerSentEvent) -> [ServerSentEvent] {
        if event.isDone {
            return finish() + [event]
        }
        guard case .object(var chunk)? = try? JSONParser.parse(event.data), case .array(var list)? = chunk["choices"], !list.isEmpty else {
            return [event]
        }
        template = chunk
        for position in list.indices {
            guard case .object(var choice) = list[position] else { continue }
            let index = Int(choice["index"]?.int64Value ?? Int64(position))
            guard case .object(var delta)? = choice["delta"] else { continue }
            var text = delta["content"]?.stringValue.map { take(index, $0, path: "choices[\(index)].delta.content") }
            if blocked != nil { return [] }
            // Tool-call arguments stream too, each call as its own text.
            var calls = delta["tool_calls"]?.arrayValue ?? []
            for position in calls.indices {
                guard case .object(var call) = calls[position], case .object(var function)? = call["function"],
                    let arguments = function["arguments"]?.stringValue
                else { continue }
                let tool = Int(call["index"]?.int64Value ?? Int64(position))
                function["arguments"] = .string(take(
                    Self.toolKey(choice: index, tool: tool), arguments, path: "choices[\(index)].delta.tool_calls[\(tool)].function.arguments"))
                if blocked != nil { return [] }
                call["function"] = .object(function)
                calls[position] = .object(call)
            }
            // The choice ends here: everything held back goes out with this chunk.
            if let reason = choice["finish_reason"], reason != .null {
                text = (text ?? "") + release(index, all: true)
                for key in choices.keys.sorted() where key >= 1_000_000 && key < 2_000_000 && (key - 1_000_000) / 1_000 == index {
                    let rest = release(key, all: true)
                    guard !rest.isEmpty else { continue }
                    calls.append(["index": .integer(Int64((key - 1_000_000) % 1_000)), "function": ["arguments": .string(rest)]])
                }
            }
            if let text { delta["content"] = .string(text) }
            if !calls.isEmpty { delta["tool_calls"] = .array(calls) }
            choice["delta"] = .object(delta)
            list[position] = .object(choice)
        }
        chunk["choices"] = .array(list)
        return [ServerSentEvent(event: event.event, data: JSONWriter.bytes(.object(chunk)))]
    }

    private func openAIToolArguments(choice: Int, tool: Int, _ text: String) -> ServerSentEvent {
        var chunk = template ?? ["object": "chat.completion.chunk"]
        chunk["choices"] = [[
            "index": .integer(Int64(choice)), "delta": ["tool_calls": [["index": .integer(Int64(tool)), "function": ["arguments": .string(text)]]]],
            "finish_reason": .null,
        ]]
        chunk["usage"] = nil
        return ServerSentEvent(data: JSONWriter.bytes(.object(chunk)))
    }

    private func openAIText(_ index: Int, _ text: String) -> ServerSentEvent {
        var chunk = template ?? ["object": "chat.completion.chunk"]
        chunk["choices"] = [["index": .integer(Int64(index)), "delta": ["content": .string(text)], "finish_reason": .null]]
        chunk["usage"] = nil
        return ServerSentEvent(data: JSONWriter.bytes(.object(chunk)))
    }

    // MARK: Anthropic events

    private mutating func filterAnthropic(_ event: ServerSentEvent) -> [ServerSentEvent] {
        switch event.event {
        case "content_block_delta":
            guard case .object(var payload)? = try? JSONParser.parse(event.data), case .object(var delta)? = payload["delta"] else { return [event] }
            let index = Int(payload["index"]?.int64Value ?? 0)
            let field: String
            let key: Int
            switch delta["type"]?.stringValue {
            case "text_delta": (field, key) = ("text", index)
            case "input_json_delta": (field, key) = ("partial_json", Self.jsonKey(block: index))
            default: return [event]
            }
            guard let text = delta[field]?.stringValue else { return [event] }
            let released = take(key, text, path: field == "text" ? "content[\(index)].text" : "content[\(index)].input")
            if blocked != nil || released.isEmpty { return [] }
            delta[field] = .string(released)
            payload["delta"] = .object(delta)
            return [ServerSentEvent(event: event.event, data: JSONWriter.bytes(.object(payload)))]
        case "content_block_stop":
            let index = Int((try? JSONParser.parse(event.data))?["index"]?.int64Value ?? 0)
            let text = release(index, all: true)
            let json = release(Self.jsonKey(block: index), all: true)
            return (text.isEmpty ? [] : [anthropicText(index, text)]) + (json.isEmpty ? [] : [anthropicJSON(index, json)]) + [event]
        case "message_delta", "message_stop":
            return finish() + [event]
        default:
            return [event]
        }
    }

    private func anthropicJSON(_ index: Int, _ text: String) -> ServerSentEvent {
        ServerSentEvent(
            event: "content_block_delta",
            data: JSONWriter.bytes([
                "type": "content_block_delta", "index": .integer(Int64(index)), "delta": ["type": "input_json_delta", "partial_json": .string(text)],
            ]))
    }

    private func anthropicText(_ index: Int, _ text: String) -> ServerSentEvent {
        ServerSentEvent(
            event: "content_block_delta",
            data: JSONWriter.bytes(["type": "content_block_delta", "index": .integer(Int64(index)), "delta": ["type": "text_delta", "text": .string(text)]]))
    }
}
