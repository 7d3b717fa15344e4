import FoundationEssentials
import InterlockCore
import InterlockPolicy
import InterlockProviders
import InterlockStore
import Logging
import NIOCore
import Synchronization
import Tracing

/// Carries out one step attempt of one run: tool calls and the built-in agent through the
/// governed pipeline as the step's agent (credential: the run), human requests as approval
/// records, events through the event log. Knows nothing of the run's history beyond the
/// task it is given; the execution records what it returns.
struct StepRunner: Sendable {
    let engine: WorkflowEngine
    let record: RunRecord
    let definition: WorkflowDefinition
    let handle: RunExecution.Handle
    /// The run's human supervisor as it is now (it changes when someone answers).
    let supervisor: SupervisorCell

    static func cel(_ bindings: [String: JSONValue]) -> [String: CELValue] {
        bindings.mapValues { CELValue(json: $0) }
    }

    /// The caller a step's calls are made as: the step's (or the workflow's) agent, with the
    /// run as its credential, so the run's budgets apply and the audit names the run.
    func caller(for step: WorkflowStep) throws(StepError) -> Caller {
        let id = step.agentID ?? definition.agentID
        guard let agent = engine.governor.registry.entry(id: id)?.agent else {
            throw StepError(code: "agent_unknown", message: "Agent '\(id)' is not registered on this node.", retryable: false)
        }
        return Caller(
            agent: agent, credential: .workflowRun(id: record.id), user: record.userID,
            run: RunReference(id: record.id, parentID: record.parentRunID, supervisor: supervisor.value))
    }

    func requestID(_ task: StepTask, suffix: String = "") -> String {
        "\(record.id):\(task.path):\(task.attempt)\(suffix)"
    }

    // MARK: - Attempts

    /// Runs the attempt in its span (`invoke_agent {agent}` for an agent step, per the GenAI
    /// conventions; `workflow_step {kind} {id}` otherwise), the parent of its calls' spans.
    func perform(_ task: StepTask, timeoutMs: Int64) async -> StepOutcome {
        let agentID = task.step.agentID ?? definition.agentID
        let name: String
        if case .agent = task.step.kind { name = "invoke_agent \(agentID)" } else { name = "workflow_step \(task.step.kind.name) \(task.step.id)" }
        return await withSpan(name, ofKind: .internal) { span in
            if span.isRecording {
                span.attributes["interlock.run.id"] = record.id
                span.attributes["interlock.workflow"] = definition.name
                span.attributes["interlock.step.path"] = task.path
                span.attributes["interlock.step.attempt"] = task.attempt
                span.attributes["interlock.agent.id"] = agentID
                if case .agent = task.step.kind {
                    span.attributes["gen_ai.operation.name"] = "invoke_agent"
                    span.attributes["gen_ai.agent.name"] = agentID
                }
            }
            let outcome = await attempt(task, timeoutMs: timeoutMs)
            if case .failed(let error) = outcome {
                span.attributes["error.type"] = error.code
                span.setStatus(SpanStatus(code: .error, message: error.code))
            }
            return outcome
        }
    }

    private func attempt(_ task: StepTask, timeoutMs: Int64) async -> StepOutcome {
        if task.step.kind.isDurableWait { return await begin(task) }
        return await withTaskGroup(of: StepOutcome?.self) { group in
            group.addTask { await self.work(task) }
            group.addTask {
                try? await Task.sleep(for: .milliseconds(timeoutMs))
                return Task.isCancelled ? nil : .failed(StepError(code: "timeout", message: "Step '\(task.step.id)' did not finish within \(timeoutMs) ms.", retryable: true))
            }
            defer { group.cancelAll() }
            while let result = await group.next() {
                if let result { return result }
            }
            return .abandoned
        }
    }

    private func work(_ task: StepTask) async -> StepOutcome {
        do {
            switch task.step.kind {
            case .tool(let name, let arguments):
                let rendered = try arguments.render(Self.cel(task.bindings))
                return try await callTool(
                    name, arguments: rendered, task: task, key: RunState.idempotencyKey(runID: record.id, path: task.path, attempt: task.attempt),
                    requestID: requestID(task)
                ).outcome
            case .agent(let agent):
                return await AgentLoop(runner: self, task: task, agent: agent).run()
            case .emit(let type, let payload, let dedupKey):
                let bindings = Self.cel(task.bindings)
                let body = try payload.render(bindings)
                // Emitting again after a crash publishes nothing new: the key is the step's.
                let key = try dedupKey.map { template throws(StepError) in
                    let value = try template.render(bindings)
                    return value.stringValue ?? JSONWriter.string(value)
                } ?? "run:\(record.id):\(task.path)"
                let published = try await engine.publish(type: type, payload: body, dedupKey: key, source: "run:\(record.id)")
                return .completed(["event_id": .string(published.event.id), "seq": .integer(published.event.seq), "type": .string(type)])
            default:
                return .failed(StepError(code: "internal", message: "Step kind '\(task.step.kind.name)' is not run by a worker.", retryable: false))
            }
        } catch {
            return Self.outcome(of: error)
        }
    }

    /// Whatever an attempt threw, as its outcome.
    static func outcome(of error: any Error) -> StepOutcome {
        switch error {
        case let error as StepError: .failed(error)
        case let error as GatewayError: outcome(of: error)
        case is CancellationError: .abandoned
        default: .failed(StepError(code: "internal", message: "\(error)", retryable: true))
        }
    }

    /// A refused or failed call as a step outcome: a run budget stops the run, a policy
    /// approval makes the step wait, transient failures may be retried.
    static func outcome(of error: GatewayError) -> StepOutcome {
        switch error.code {
        case "run_budget_exceeded":
            return .stopped(limit: error.details?["limit"]?.stringValue ?? "budget", message: error.message)
        case "approval_pending":
            if let id = error.details?["approval_id"]?.stringValue {
                return .waiting(.policy(approvalID: id, deadlineMs: error.details?["expires_ms"]?.int64Value))
            }
        case "request_cancelled":
            return .abandoned
        default:
            break
        }
        let transient: Bool =
            switch error.kind {
            case .rateLimit, .upstream, .unavailable, .internal: true
            default: false
            }
        return .failed(StepError(code: error.code, message: error.message, retryable: transient))
    }

    struct ToolCallResult {
        var outcome: StepOutcome
        /// What the model is shown (agent steps): the answer, or the error.
        var text: String
    }

    /// One tool call through the tool gateway, with the idempotency key of this attempt.
    func callTool(_ name: String, arguments: JSONValue, task: StepTask, key: String, requestID: String) async throws -> ToolCallResult {
        guard let tools = engine.tools else {
            throw StepError(code: "tool_not_found", message: "No tools are configured on this node.", retryable: false)
        }
        let caller = try caller(for: task.step)
        let result = try await tools.invoke(name, arguments: JSONWriter.bytes(arguments), caller: caller, requestID: requestID, idempotencyKey: key)
        if result.isError {
            let text = result.content.stringValue ?? JSONWriter.string(result.content)
            return ToolCallResult(
                outcome: .failed(StepError(code: "tool_error", message: "Tool '\(name)' answered with an error: \(String(text.prefix(500)))", retryable: false)),
                text: text)
        }
        return ToolCallResult(outcome: .completed(result.content), text: result.content.stringValue ?? JSONWriter.string(result.content))
    }

    // MARK: - Branches

    func branch(_ task: StepTask) -> StepOutcome {
        guard case .branch(let cases, let otherwise) = task.step.kind else { return .failed(StepError(code: "internal", message: "not a branch")) }
        let bindings = Self.cel(task.bindings)
        for branchCase in cases {
            do {
                if try branchCase.condition.evaluate(bindings).boolValue == true { return .completed(["next": .string(branchCase.next)]) }
            } catch {
                return .failed(
                    StepError(code: "expression_error", message: "Condition '\(branchCase.condition.source)' of step '\(task.step.id)' failed: \(error)", retryable: false))
            }
        }
        guard let otherwise else {
            return .failed(StepError(code: "no_branch", message: "No case of step '\(task.step.id)' held and it has no default.", retryable: false))
        }
        return .completed(["next": .string(otherwise)])
    }

    // MARK: - Durable waits

    /// Begins a wait: asks the human (an approval record, a webhook), or notes the event
    /// position or the wake-up time.
    private func begin(_ task: StepTask) async -> StepOutcome {
        let now = engine.wallClockMs()
        let timeout = task.step.timeoutMs ?? engine.settings.waitTimeoutMs
        do {
            switch task.step.kind {
            case .approval(let message), .input(let message, _):
                let text = try message.render(Self.cel(task.bindings))
                var schema: JSONValue?
                var kind = ApprovalRecord.Kind.approval
                if case .input(_, let answerSchema) = task.step.kind {
                    kind = .input
                    schema = answerSchema?.document
                }
                // The same attempt asks once, however often it is begun again.
                let id = "apr_" + String(AuditRecord.sha256Hex(Array("\(record.id)|\(task.path)|\(task.attempt)".utf8)).prefix(20))
                if try await engine.store.approval(id: id) == nil {
                    let messageText = text.stringValue ?? JSONWriter.string(text)
                    var approval = ApprovalRecord(
                        id: id, agentID: task.step.agentID ?? definition.agentID, targetKind: "workflow", target: "\(definition.name)/\(task.path)",
                        argumentsHash: AuditRecord.sha256Hex(JSONWriter.bytes(.object(JSONObject(task.bindings.sorted { $0.key < $1.key }.map { ($0.key, $0.value) }))))
                        , arguments: PolicyStage.capped(JSONWriter.string(.object(JSONObject(task.bindings.sorted { $0.key < $1.key }.map { ($0.key, $0.value) })))),
                        policy: "step:\(kind.rawValue)", policyVersion: definition.hash, reason: messageText, requestID: requestID(task), userID: record.userID,
                        runID: record.id, createdMs: now, expiresMs: now + timeout)
                    approval.kind = kind
                    approval.stepPath = task.path
                    approval.answerSchema = schema
                    try await engine.store.createApproval(approval)
                    engine.governor.audit?.record(AuditRecord(
                        timestampMs: 0, node: "", action: "approval.requested", agentID: approval.agentID, userID: record.userID, runID: record.id,
                        parentRunID: record.parentRunID, target: approval.target, decision: "require_approval", reason: "\(approval.policy):\(id)",
                        requestID: approval.requestID))
                    engine.notifier.send(
                        kind == .input ? "input.requested" : "approval.requested",
                        [
                            "run": .string(record.id), "workflow": .string(definition.name), "step": .string(task.path), "approval_id": .string(id),
                            "message": .string(messageText), "expires_ms": .integer(approval.expiresMs),
                        ], nowMs: now)
                }
                return .waiting(.human(approvalID: id, deadlineMs: now + timeout))
            default:
                return .failed(StepError(code: "internal", message: "Step kind '\(task.step.kind.name)' does not wait.", retryable: false))
            }
        } catch let error as StepError {
            return .failed(error)
        } catch {
            return .failed(StepError(code: "store_unavailable", message: "\(error)", retryable: true))
        }
    }

    /// Whether what a waiting step waits for has come: its outcome, or nil to wait on.
    func check(_ wait: StepWait, task: StepTask, nowMs: Int64) async throws -> StepOutcome? {
        switch wait {
        case .sleep(let until):
            return nowMs >= until ? .completed(["slept_until_ms": .integer(until)]) : nil
        case .human(let id, let deadline), .policy(let id, let deadline):
            guard let approval = try await engine.store.approval(id: id) else {
                return .failed(StepError(code: "approval_missing", message: "Approval \(id) is not in the store.", retryable: false))
            }
            switch approval.status {
            case .approved, .consumed:
                if case .policy = wait {
                    // The held call is made again by the same attempt (same key), and goes through.
                    return .rerun(supervisor: approval.decidedBy)
                }
                var output: JSONValue = [
                    "approved": true, "by": .string(approval.decidedBy ?? ""), "decided_ms": .integer(approval.decidedMs ?? nowMs),
                    "comment": approval.note.map(JSONValue.string) ?? .null,
                ]
                if approval.kind == .input { output = approval.answer ?? .null }
                return .completed(output, supervisor: approval.decidedBy)
            case .rejected:
                return .failed(
                    StepError(
                        code: "approval_rejected", message: "\(approval.decidedBy ?? "A person") rejected it\(approval.note.map { ": \($0)" } ?? ".")", retryable: false))
            case .pending, .expired:
                if let deadline, nowMs >= deadline {
                    return .failed(StepError(code: "approval_expired", message: "Nobody answered approval \(id) in time.", retryable: false))
                }
                return nil
            }
        case .event(let type, let afterSeq, let deadline):
            guard case .waitEvent(_, let condition, _) = task.step.kind else { return nil }
            var position = afterSeq
            let bindings = Self.cel(task.bindings)
            while true {
                let events = try await engine.store.events(afterSeq: position, type: type, limit: 500)
                for event in events {
                    position = event.seq
                    var scope = bindings
                    scope["event"] = CELValue(json: event.json)
                    do {
                        if let condition, try condition.evaluate(scope).boolValue != true { continue }
                    } catch {
                        continue
                    }
                    return .completed(event.json)
                }
                if events.count < 500 { break }
            }
            if let deadline, nowMs >= deadline {
                return .failed(StepError(code: "timeout", message: "No matching '\(type)' event came in time.", retryable: false))
            }
            return nil
        }
    }
}

/// The run's human supervisor, shared by its execution (which sets it when someone answers)
/// and its steps (whose calls name it in the audit log).
final class SupervisorCell: Sendable {
    private let state: Mutex<String?>

    init(_ value: String?) {
        state = Mutex(value)
    }

    var value: String? {
        get { state.withLock { $0 } }
        set { state.withLock { $0 = newValue } }
    }
}
