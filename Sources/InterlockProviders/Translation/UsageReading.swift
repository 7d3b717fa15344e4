public import InterlockCore

/// Reads token usage from provider payloads.
public enum UsageReading {
    /// OpenAI `usage` object (chat completions, embeddings, stream usage chunks).
    public static func openAI(_ usage: JSONValue?) -> TokenUsage? {
        guard let usage, case .object = usage else { return nil }
        let input = TokenUsage.count(usage["prompt_tokens"]?.int64Value)
        let output = TokenUsage.count(usage["completion_tokens"]?.int64Value)
        let cached = TokenUsage.count(usage["prompt_tokens_details"]?["cached_tokens"]?.int64Value)
        return TokenUsage(inputTokens: input, outputTokens: output, cachedInputTokens: cached)
    }

    /// Anthropic `usage` object. Anthropic counts cache reads and writes apart from
    /// `input_tokens`; Interlock's input count includes them.
    public static func anthropic(_ usage: JSONValue?) -> TokenUsage? {
        guard let usage, case .object = usage else { return nil }
        let input = TokenUsage.count(usage["input_tokens"]?.int64Value)
        let cacheRead = TokenUsage.count(usage["cache_read_input_tokens"]?.int64Value)
        let cacheWrite = TokenUsage.count(usage["cache_creation_input_tokens"]?.int64Value)
        let output = TokenUsage.count(usage["output_tokens"]?.int64Value)
        return TokenUsage(inputTokens: input + cacheRead + cacheWrite, outputTokens: output, cachedInputTokens: cacheRead)
    }

    /// Usage of a complete (non-streamed) response body in its native format, read where the
    /// bytes are (the response buffer, no copy). Only the top-level `usage` member's counts
    /// are decoded, found by name without building a `JSONValue` (one pass over the usage
    /// object for all its counts); the same numbers as `openAI(_:)` and `anthropic(_:)` read
    /// from the decoded object.
    public static func fromBody(_ body: UnsafeRawBufferPointer, format: WireFormat) -> TokenUsage? {
        guard let span = try? JSONParser.member(named: "usage", in: body), span.kind == .object else { return nil }
        let usage = UnsafeRawBufferPointer(rebasing: body[span.valueRange])
        switch format {
        case .openAI:
            let found = members(("prompt_tokens", "completion_tokens", "prompt_tokens_details", ""), in: usage)
            var cached = 0
            if let details = found.2, details.kind == .object {
                let object = UnsafeRawBufferPointer(rebasing: usage[details.range])
                cached = count(members(("cached_tokens", "", "", ""), in: object).0, in: object)
            }
            return TokenUsage(inputTokens: count(found.0, in: usage), outputTokens: count(found.1, in: usage), cachedInputTokens: cached)
        case .anthropic:
            let found = members(("input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens", "output_tokens"), in: usage)
            let cacheRead = count(found.1, in: usage)
            return TokenUsage(
                inputTokens: count(found.0, in: usage) + cacheRead + count(found.2, in: usage), outputTokens: count(found.3, in: usage),
                cachedInputTokens: cacheRead)
        }
    }

    private typealias Member = (range: Range<Int>, kind: JSONKind)

    /// The first members of `object` called each of up to four names (`""`: no name), in one
    /// pass over it.
    private static func members(
        _ names: (StaticString, StaticString, StaticString, StaticString), in object: UnsafeRawBufferPointer
    ) -> (Member?, Member?, Member?, Member?) {
        var found: (Member?, Member?, Member?, Member?) = (nil, nil, nil, nil)
        try? JSONParser.forEachMember(in: object) { name, range, kind in
            if found.0 == nil, matches(name, names.0) {
                found.0 = (range, kind)
            } else if found.1 == nil, matches(name, names.1) {
                found.1 = (range, kind)
            } else if found.2 == nil, matches(name, names.2) {
                found.2 = (range, kind)
            } else if found.3 == nil, matches(name, names.3) {
                found.3 = (range, kind)
            }
        }
        return found
    }

    /// `""` names no member (an empty member name does not match it).
    private static func matches(_ bytes: UnsafeRawBufferPointer, _ name: StaticString) -> Bool {
        name.utf8CodeUnitCount > 0 && ASCIIText.equals(bytes, name)
    }

    /// An integer member of a usage object; 0 when absent, negative or not an integer, and
    /// capped at `TokenUsage.maximumCount`.
    private static func count(_ member: Member?, in object: UnsafeRawBufferPointer) -> Int {
        guard let member, member.kind == .number else { return 0 }
        let number = UnsafeRawBufferPointer(rebasing: object[member.range])
        // Counts are plain digits: read them as they are. Anything else (a sign, a fraction,
        // an exponent, 19 digits or more) goes through the parser.
        if (1...18).contains(number.count), number.allSatisfy({ $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") }) {
            return TokenUsage.count(Int64(number.reduce(0) { $0 * 10 + Int($1 - UInt8(ascii: "0")) }))
        }
        guard let value = try? JSONParser.parse(number) else { return 0 }
        return TokenUsage.count(value.int64Value)
    }
}
