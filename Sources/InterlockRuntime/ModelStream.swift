import InterlockCore
import InterlockProviders
public import NIOCore

/// A model answer being streamed to the agent. The response writer calls `run` once; it
/// relays upstream events (translated when the formats differ) and, however the stream
/// ends — completed, broken upstream, or agent gone — settles the call exactly once with the
/// usage the upstream reported or, failing that, an estimate of what was delivered.
public final class ModelStream: @unchecked Sendable {
    // @unchecked: the iterator and transcoder are touched only by the single task that runs
    // `run`; the object is handed from the gateway to that task and never shared otherwise.
    private var iterator: UpstreamBody.Iterator
    private var parser: ServerSentEventParser
    private var transcoder: StreamTranscoder
    private var pending: [UInt8]
    private var upstreamEnded: Bool
    private let estimatedInputTokens: Int
    private let settle: @Sendable (TokenUsage, UsageRecord.Outcome, Int) -> Void
    private var settled = false

    init(
        iterator: UpstreamBody.Iterator, parser: ServerSentEventParser, transcoder: StreamTranscoder, pending: [UInt8], upstreamEnded: Bool,
        estimatedInputTokens: Int, settle: @escaping @Sendable (TokenUsage, UsageRecord.Outcome, Int) -> Void
    ) {
        self.iterator = iterator
        self.parser = parser
        self.transcoder = transcoder
        self.pending = pending
        self.upstreamEnded = upstreamEnded
        self.estimatedInputTokens = estimatedInputTokens
        self.settle = settle
    }

    deinit {
        // A stream that was never run (the agent left before the body started) still counts.
        if !settled { settle(TokenUsage(inputTokens: estimatedInputTokens), .partial, 499) }
    }

    public func run(write: (ByteBuffer) async throws -> Void) async {
        var agentGone = false
        var upstreamBroke = false
        do {
            try await write(ByteBuffer(bytes: pending))
            pending = []
        } catch {
            agentGone = true
        }
        while !agentGone, !upstreamEnded {
            let chunk: ByteBuffer?
            do {
                chunk = try await iterator.next()
            } catch {
                upstreamBroke = true
                break
            }
            guard let chunk else {
                upstreamEnded = true
                break
            }
            var out: [UInt8] = []
            for event in parser.consume(chunk.readableBytesView) { out += transcoder.transcode(event) }
            guard !out.isEmpty else { continue }
            do {
                try await write(ByteBuffer(bytes: out))
            } catch {
                agentGone = true
            }
        }
        if !agentGone {
            var tail: [UInt8] = []
            if let event = parser.finish() { tail += transcoder.transcode(event) }
            tail += transcoder.finish(completed: !upstreamBroke)
            if !tail.isEmpty {
                do { try await write(ByteBuffer(bytes: tail)) } catch { agentGone = true }
            }
        }
        let (usage, outcome) = Self.outcome(transcoder: transcoder, estimatedInputTokens: estimatedInputTokens, upstreamBroke: upstreamBroke, agentGone: agentGone)
        settled = true
        settle(usage, outcome, agentGone ? 499 : 200)
    }

    /// How a finished stream is billed: the usage the upstream reported or, failing that, the
    /// prompt estimate and one token per delivered fragment; `partial` unless it completed.
    static func outcome(transcoder: StreamTranscoder, estimatedInputTokens: Int, upstreamBroke: Bool, agentGone: Bool) -> (TokenUsage, UsageRecord.Outcome) {
        let complete = transcoder.sawEnd && !agentGone && !upstreamBroke
        let usage = transcoder.reportedUsage ?? TokenUsage(inputTokens: estimatedInputTokens, outputTokens: transcoder.deliveredFragments)
        return (usage, complete ? .success : .partial)
    }
}
