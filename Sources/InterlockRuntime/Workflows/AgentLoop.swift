import InterlockCore
import InterlockPolicy
import InterlockProviders
import NIOCore
import Synchronization

/// The built-in agent of an `agent` step: model ↔ tools through the governed pipeline until
/// the model's answer validates against the step's output schema, the iteration limit is
/// hit, or the model repeats a tool call it already made with the same arguments.
///
/// Every model answer and tool result is checkpointed (an `agent_turn` event) before the
/// loop goes on, so an agent resumed after a crash continues its conversation: tool calls
/// already answered are not made again, and one that was in flight is made again with the
/// same idempotency key.
struct AgentLoop {
    let runner: StepRunner
    let task: StepTask
    let agent: AgentStep

    /// Longest tool answer the model is shown.
    static let maxToolTextBytes = 32 * 1024

    func run() async -> StepOutcome {
        do {
            return try await loop()
        } catch {
            return StepRunner.outcome(of: error)
        }
    }

    private func loop() async throws -> StepOutcome {
        let caller = try runner.caller(for: task.step)
        let bindings = StepRunner.cel(task.bindings)
        // The tools it may use: listed by the step and granted to its agent.
        var functions: [String: String] = [:]
        var toolSpecs: [JSONValue] = []
        if !agent.tools.isEmpty {
            let catalog = runner.engine.tools?.catalog(for: caller) ?? []
            for name in agent.tools {
                guard let tool = catalog.first(where: { $0.name == name }) else {
                    throw StepError(
                        code: "tool_not_granted", message: "Step '\(task.step.id)' lists tool '\(name)', which agent '\(caller.agent.id)' cannot use.", retryable: false)
                }
                functions[ToolDefinition.functionName(name)] = name
                toolSpecs.append(tool.catalogEntry["openai"] ?? .null)
            }
        }
        var system = try agent.instructions.render(bindings).stringValue ?? ""
        if let schema = agent.outputSchema {
            system += "\n\nWhen you are done, answer with only a JSON value matching this JSON schema:\n" + JSONWriter.string(schema.document)
        }
        let prompt = try agent.prompt?.render(bindings) ?? .object(JSONObject(task.bindings.sorted { $0.key < $1.key }.map { ($0.key, $0.value) }))
        var messages: [JSONValue] = [
            ["role": "system", "content": .string(system)], ["role": "user", "content": .string(prompt.stringValue ?? JSONWriter.string(prompt))],
        ]
        var iterations = 0
        var feedbacks = 0
        var seenCalls = Set<String>()
        var turns = task.turns
        // Replay what this attempt already did.
        var pending: [JSONValue] = []
        for turn in turns {
            switch turn["type"]?.stringValue {
            case "model":
                let message = turn["message"] ?? .null
                messages.append(message)
                iterations += 1
                pending = message["tool_calls"]?.arrayValue ?? []
                for call in pending { seenCalls.insert(Self.signature(call)) }
            case "tool":
                messages.append(["role": "tool", "tool_call_id": turn["call_id"] ?? "", "content": turn["content"] ?? ""])
                pending.removeAll { $0["id"] == turn["call_id"] }
            case "feedback":
                messages.append(["role": "user", "content": turn["text"] ?? ""])
                feedbacks += 1
            default:
                break
            }
        }
        while true {
            // Tool calls the model asked for and that have no checkpointed result yet.
            for call in pending {
                let callID = call["id"]?.stringValue ?? ""
                let function = call["function"]?["name"]?.stringValue ?? ""
                var content: String
                if let name = functions[function] {
                    let arguments = (try? JSONParser.parse(call["function"]?["arguments"]?.stringValue ?? "{}")) ?? .object([:])
                    let index = turns.count
                    do {
                        let result = try await runner.callTool(
                            name, arguments: arguments, task: task,
                            key: RunState.idempotencyKey(runID: runner.record.id, path: task.path, attempt: task.attempt) + ":\(index)",
                            requestID: runner.requestID(task, suffix: ":\(index)"))
                        content = result.text
                    } catch let error as GatewayError {
                        // A budget stop or a held call ends the step; other refusals go back to the model.
                        switch StepRunner.outcome(of: error) {
                        case .stopped(let limit, let message): return .stopped(limit: limit, message: message)
                        case .waiting(let wait): return .waiting(wait)
                        case .abandoned: return .abandoned
                        default: content = "Error (\(error.code)): \(error.message)"
                        }
                    }
                } else {
                    content = "Error: there is no tool '\(function)' here. Use one of: \(functions.keys.sorted().joined(separator: ", "))."
                }
                if content.utf8.count > Self.maxToolTextBytes { content = String(decoding: content.utf8.prefix(Self.maxToolTextBytes), as: UTF8.self) + "…" }
                let turn: JSONValue = ["type": "tool", "call_id": .string(callID), "name": .string(function), "content": .string(content)]
                try await checkpoint(turn)
                turns.append(turn)
                messages.append(["role": "tool", "tool_call_id": .string(callID), "content": .string(content)])
            }
            pending = []
            guard iterations < agent.maxIterations else {
                throw StepError(
                    code: "max_iterations", message: "The agent of step '\(task.step.id)' used its \(agent.maxIterations) model turns without a valid answer.",
                    retryable: false)
            }
            iterations += 1
            let message = try await callModel(messages: messages, tools: toolSpecs, caller: caller, turn: turns.count)
            let turn: JSONValue = ["type": "model", "message": message]
            try await checkpoint(turn)
            turns.append(turn)
            messages.append(message)
            let calls = message["tool_calls"]?.arrayValue ?? []
            if !calls.isEmpty {
                for call in calls {
                    let signature = Self.signature(call)
                    guard seenCalls.insert(signature).inserted else {
                        throw StepError(
                            code: "loop_detected",
                            message: "The agent of step '\(task.step.id)' called '\(call["function"]?["name"]?.stringValue ?? "")' again with the same arguments.",
                            retryable: false)
                    }
                }
                pending = calls
                continue
            }
            // An answer: the step's output if it validates.
            let text = RequestTranslation.textOf(message["content"])
            switch validate(text) {
            case .success(let output):
                return .completed(output)
            case .failure(let problem):
                guard feedbacks < agent.maxOutputRetries else {
                    throw StepError(code: "invalid_output", message: "The agent's answer is not valid: \(problem)")
                }
                feedbacks += 1
                let feedback = "Your answer is not valid: \(problem). Answer again with only the JSON value asked for."
                let turn: JSONValue = ["type": "feedback", "text": .string(feedback)]
                try await checkpoint(turn)
                turns.append(turn)
                messages.append(["role": "user", "content": .string(feedback)])
            }
        }
    }

    /// The output: JSON matching the schema when there is one; otherwise the answer as JSON
    /// if it is JSON, else as text.
    private func validate(_ text: String) -> Result<JSONValue, ValidationProblem> {
        var body = Substring(text).trimmingCharacters
        // Models like to fence JSON.
        if body.hasPrefix("```") {
            body = body.drop { $0 != "\n" }.dropFirst()
            if let end = body.range(of: "```", options: .backwards) { body = body[..<end.lowerBound] }
            body = body.trimmingCharacters
        }
        guard let schema = agent.outputSchema else {
            return .success((try? JSONParser.parse(String(body))) ?? .string(text))
        }
        let value: JSONValue
        do {
            value = try JSONParser.parse(String(body))
        } catch {
            return .failure(ValidationProblem(text: "it is not JSON (\(error))"))
        }
        let violations = schema.validate(value)
        guard violations.isEmpty else { return .failure(ValidationProblem(text: violations.map(\.description).joined(separator: "; "))) }
        return .success(value)
    }

    struct ValidationProblem: Error, CustomStringConvertible {
        var text: String
        var description: String { text }
    }

    /// Name and canonical arguments: the same call twice has the same signature.
    static func signature(_ call: JSONValue) -> String {
        let name = call["function"]?["name"]?.stringValue ?? ""
        let arguments = (try? JSONParser.parse(call["function"]?["arguments"]?.stringValue ?? "{}")) ?? .null
        return name + "\u{0}" + String(decoding: CanonicalJSON.bytes(arguments), as: UTF8.self)
    }

    private func callModel(messages: [JSONValue], tools: [JSONValue], caller: Caller, turn: Int) async throws -> JSONValue {
        var body: JSONObject = ["model": .string(agent.model), "messages": .array(messages)]
        if !tools.isEmpty { body["tools"] = .array(tools) }
        if let maxTokens = agent.maxOutputTokens { body["max_tokens"] = .integer(Int64(maxTokens)) }
        let request = try ModelRequest.parse(body: JSONWriter.bytes(.object(body)), format: .openAI, operation: .chat)
        let result = try await runner.engine.models.handle(
            request, caller: caller, requestID: runner.requestID(task, suffix: ":\(turn)"), traceParent: nil, traceState: nil)
        guard case .complete(_, let buffer) = result else {
            throw StepError(code: "internal", message: "The model answered with a stream to a non-streamed call.")
        }
        let answer = try JSONParser.parse(Array(buffer.readableBytesView))
        guard let message = answer["choices"]?.arrayValue?.first?["message"], case .object(var fields) = message else {
            throw StepError(code: "upstream_error", message: "The model's answer has no message.", retryable: true)
        }
        // Only what the next request needs goes back to the model.
        fields = JSONObject(fields.filter { ["role", "content", "tool_calls"].contains($0.key) })
        if fields["role"] == nil { fields["role"] = "assistant" }
        return .object(fields)
    }

    private func checkpoint(_ turn: JSONValue) async throws {
        let handle = runner.handle
        let path = task.path
        let attempt = task.attempt
        let ack = CheckpointAck()
        let committed = await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Bool, Never>) in
                guard ack.wait(continuation) else { return }
                let result = handle.continuation.yield(.checkpoint(path: path, attempt: attempt, turn: turn, done: { ack.answer($0) }))
                if case .terminated = result { ack.answer(false) }
            }
        } onCancel: {
            ack.answer(false)
        }
        guard committed else { throw CancellationError() }
    }
}

/// The answer to one checkpoint: given once, by the execution (written or not) or by a
/// cancellation, whichever comes first — the waiting step is resumed exactly once.
final class CheckpointAck: Sendable {
    private enum State {
        case idle
        case waiting(CheckedContinuation<Bool, Never>)
        case answered(Bool)
    }

    private let state = Mutex(State.idle)

    /// Registers the waiter; false (and the waiter resumed) if the answer came first.
    func wait(_ continuation: CheckedContinuation<Bool, Never>) -> Bool {
        let early: Bool? = state.withLock { state in
            if case .answered(let value) = state { return value }
            state = .waiting(continuation)
            return nil
        }
        if let early {
            continuation.resume(returning: early)
            return false
        }
        return true
    }

    func answer(_ value: Bool) {
        let waiter: CheckedContinuation<Bool, Never>? = state.withLock { state in
            switch state {
            case .idle:
                state = .answered(value)
                return nil
            case .waiting(let continuation):
                state = .answered(value)
                return continuation
            case .answered:
                return nil
            }
        }
        waiter?.resume(returning: value)
    }
}

extension Substring {
    var trimmingCharacters: Substring {
        var text = self
        while let first = text.first, first.isWhitespace { text.removeFirst() }
        while let last = text.last, last.isWhitespace { text.removeLast() }
        return text
    }
}
