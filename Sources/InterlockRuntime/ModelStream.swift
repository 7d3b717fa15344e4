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
    private let settle: StreamSettlement
    private let admission: CallGovernor.Admission
    private var settled = false
    /// Guardrails on the answer's text, when any apply (see `StreamGuard`).
    private var streamGuard: StreamGuard?
    /// Audits the guard's hits when the stream ends.
    private let recordHits: @Sendable ([GuardrailHit]) -> Void

    init(
        iterator: UpstreamBody.Iterator, parser: ServerSentEventParser, transcoder: StreamTranscoder, pending: [UInt8], upstreamEnded: Bool,
        estimatedInputTokens: Int, admission: CallGovernor.Admission, streamGuard: StreamGuard? = nil,
        recordHits: @escaping @Sendable ([GuardrailHit]) -> Void = { _ in }, settle: @escaping StreamSettlement
    ) {
        self.streamGuard = streamGuard
        self.recordHits = recordHits
        self.admission = admission
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
        if !settled { settle(TokenUsage(inputTokens: estimatedInputTokens), .partial, 499, nil) }
    }

    private enum Pull {
        case chunk(ByteBuffer?)
        case cutOff
    }

    /// The iterator, handed to the child task that reads it and back (one reader at a time).
    private final class IteratorBox: @unchecked Sendable {
        var iterator: UpstreamBody.Iterator
        init(_ iterator: UpstreamBody.Iterator) { self.iterator = iterator }
    }

    /// The next upstream chunk, unless the agent is disabled first: an idle upstream must
    /// not keep a disabled agent's stream open.
    private func pull() async throws -> Pull {
        // Checked before and after: a chunk already buffered must not win over a disable.
        if admission.isCutOff { return .cutOff }
        let box = IteratorBox(iterator)
        let admission = self.admission
        let result = try await withThrowingTaskGroup(of: Pull.self) { group in
            group.addTask { .chunk(try await box.iterator.next()) }
            group.addTask {
                await admission.waitForCutOff()
                return .cutOff
            }
            let first = try await group.next()!
            group.cancelAll()
            return first
        }
        iterator = box.iterator
        return admission.isCutOff ? .cutOff : result
    }

    public func run(write: (ByteBuffer) async throws -> Void) async {
        var agentGone = false
        var upstreamBroke = false
        var cutOff = false
        var blocked = streamGuard?.blocked != nil
        do {
            try await write(ByteBuffer(bytes: pending))
            pending = []
        } catch {
            agentGone = true
        }
        while !agentGone, !upstreamEnded, !blocked, !parser.overflowed {
            let chunk: ByteBuffer?
            do {
                switch try await pull() {
                case .chunk(let next): chunk = next
                case .cutOff:
                    cutOff = true
                    chunk = nil
                }
            } catch {
                upstreamBroke = true
                break
            }
            if cutOff { break }
            guard let chunk else {
                upstreamEnded = true
                break
            }
            var out: [UInt8] = []
            for event in parser.consume(chunk.readableBytesView) {
                for passed in Self.guarded(event, &streamGuard) { out += transcoder.transcode(passed) }
            }
            if streamGuard?.blocked != nil {
                blocked = true
                if !out.isEmpty { _ = try? await write(ByteBuffer(bytes: out)) }
                break
            }
            guard !out.isEmpty else { continue }
            do {
                try await write(ByteBuffer(bytes: out))
            } catch {
                agentGone = true
            }
        }
        // An event outgrew `gateway.max_stream_event_bytes`: the rest is not read.
        if parser.overflowed { upstreamBroke = true }
        if !agentGone, blocked, let hit = streamGuard?.blocked {
            let tail = transcoder.finish(completed: false, interruption: Self.guardrailInterruption(hit))
            do { try await write(ByteBuffer(bytes: tail)) } catch { agentGone = true }
        } else if !agentGone, cutOff {
            let tail = transcoder.finish(completed: false, interruption: .agentDisabled(admission.call.agent.id))
            do { try await write(ByteBuffer(bytes: tail)) } catch { agentGone = true }
        } else if !agentGone {
            var tail: [UInt8] = []
            if let event = parser.finish() {
                for passed in Self.guarded(event, &streamGuard) { tail += transcoder.transcode(passed) }
            }
            for held in streamGuard?.finish() ?? [] { tail += transcoder.transcode(held) }
            if let hit = streamGuard?.blocked {
                // The last event was the one a guardrail stopped.
                blocked = true
                tail += transcoder.finish(completed: false, interruption: Self.guardrailInterruption(hit))
            }
            if !blocked { tail += Self.ending(&transcoder, parser, completed: !upstreamBroke) }
            if !tail.isEmpty {
                do { try await write(ByteBuffer(bytes: tail)) } catch { agentGone = true }
            }
        }
        let (usage, outcome) = Self.outcome(
            transcoder: transcoder, estimatedInputTokens: estimatedInputTokens, upstreamBroke: upstreamBroke || cutOff || blocked, agentGone: agentGone)
        if let hits = streamGuard?.hits, !hits.isEmpty { recordHits(hits) }
        settled = true
        let errorCode = cutOff ? "agent_disabled" : blocked ? "guardrail_blocked" : Self.errorCode(parser)
        settle(usage, outcome, agentGone ? 499 : (blocked ? 403 : 200), errorCode)
    }

    /// The agent's last bytes when the upstream ended (`completed`) or broke off, or when one
    /// of its events outgrew `gateway.max_stream_event_bytes`. Both relays end this way.
    static func ending(_ transcoder: inout StreamTranscoder, _ parser: ServerSentEventParser, completed: Bool) -> [UInt8] {
        parser.overflowed
            ? transcoder.finish(completed: false, interruption: .eventTooLarge(limitBytes: parser.maxEventBytes))
            : transcoder.finish(completed: completed)
    }

    /// The ledger's error code for a stream the parser stopped, if it did.
    static func errorCode(_ parser: ServerSentEventParser) -> String? {
        parser.overflowed ? StreamInterruption.eventTooLargeCode : nil
    }

    static func guardrailInterruption(_ hit: GuardrailHit) -> StreamInterruption {
        StreamInterruption(
            type: "permission_error", code: "guardrail_blocked",
            message: "Blocked by a guardrail: the answer contained \(GuardrailStage.describe(hit.detector)); the stream was stopped.")
    }

    /// An upstream event through the guard, if there is one.
    static func guarded(_ event: ServerSentEvent, _ streamGuard: inout StreamGuard?) -> [ServerSentEvent] {
        guard streamGuard != nil else { return [event] }
        return streamGuard!.filter(event)
    }

    /// How a finished stream is billed: the usage the upstream reported or, failing that, the
    /// prompt estimate and one token per delivered fragment; `partial` unless it completed.
    static func outcome(transcoder: StreamTranscoder, estimatedInputTokens: Int, upstreamBroke: Bool, agentGone: Bool) -> (TokenUsage, UsageRecord.Outcome) {
        let complete = transcoder.sawEnd && !agentGone && !upstreamBroke
        let usage = transcoder.reportedUsage ?? TokenUsage(inputTokens: estimatedInputTokens, outputTokens: transcoder.deliveredFragments)
        return (usage, complete ? .success : .partial)
    }
}

/// Settles a finished stream: usage, outcome, status, and the error code when it was stopped.
typealias StreamSettlement = @Sendable (TokenUsage, UsageRecord.Outcome, Int, String?) -> Void
