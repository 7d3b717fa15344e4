import InterlockCore
import InterlockPolicy
import InterlockStore
import Logging
import Metrics
import Synchronization

/// What a step attempt came to.
enum StepOutcome: Sendable {
    case completed(JSONValue, supervisor: String? = nil)
    case failed(StepError)
    case waiting(StepWait)
    /// A run budget refused a call: the run stops.
    case stopped(limit: String, message: String)
    /// The attempt was abandoned (the run stops here, the node shuts down): nothing recorded.
    case abandoned
    /// The attempt runs again as it is (a policy approval it waited for was given, by `supervisor`).
    case rerun(supervisor: String?)
}

/// One claimed run on this node: reads its history, asks the planner what is next, carries
/// it out, and checkpoints each result (with the next steps' starts) in one transaction
/// before anything after it begins. Ends when the run finishes, waits for something outside,
/// loses its lease, or the node stops — and gives the lease back.
final class RunExecution: Sendable {
    /// Messages to the execution's loop.
    enum Message: Sendable {
        case finished(path: String, attempt: Int, StepOutcome)
        /// An agent step's checkpoint: committed before the agent goes on (`done(true)`).
        case checkpoint(path: String, attempt: Int, turn: JSONValue, done: @Sendable (Bool) -> Void)
        /// Something the run may be waiting for happened (or a signal came).
        case nudge
        case leaseLost
    }

    /// How others reach a running execution.
    struct Handle: Sendable {
        let continuation: AsyncStream<Message>.Continuation
        func nudge() { continuation.yield(.nudge) }
        func leaseLost() { continuation.yield(.leaseLost) }
    }

    let engine: WorkflowEngine
    let runID: String
    let handle: Handle
    private let messages: AsyncStream<Message>
    /// Who answered last; the steps' calls name them.
    private let supervisor = SupervisorCell(nil)
    /// The definition's container step ids, found once (the status is computed at every checkpoint).
    private let containers = Mutex<Set<String>?>(nil)

    private func containerIDs(_ definition: WorkflowDefinition) -> Set<String> {
        containers.withLock { cached in
            if let cached { return cached }
            let ids = definition.containerIDs
            cached = ids
            return ids
        }
    }
    /// Every step attempt launched, so none outlives the execution (the store may close next).
    private let launched = Mutex<[String: (attempt: Int, task: Task<Void, Never>)]>([:])

    init(engine: WorkflowEngine, runID: String) {
        self.engine = engine
        self.runID = runID
        let (stream, continuation) = AsyncStream<Message>.makeStream()
        self.messages = stream
        self.handle = Handle(continuation: continuation)
    }

    var logger: Logger {
        var logger = engine.logger
        logger[metadataKey: "interlock.run.id"] = .string(runID)
        return logger
    }

    /// Executes the run until it waits, ends or is lost. `confirmingLease`: the run was
    /// claimed while an execution of it was ending here; that claim may have been the one
    /// the ending execution gave up (it outlived its lease), so it goes on only if the
    /// lease is still this node's.
    func run(confirmingLease: Bool = false) async {
        var iterator = messages.makeAsyncIterator()
        do {
            if confirmingLease {
                let now = engine.wallClockMs()
                let held = try await engine.store.renewLeases(owner: engine.owner, runIDs: [runID], leaseUntilMs: now + Int64(engine.settings.leaseMs))
                guard held.contains(runID) else {
                    await finish(&iterator)
                    return
                }
            }
            try await execute(&iterator)
            await finish(&iterator)
        } catch let lost as RunLeaseLost {
            await finish(&iterator)
            logger.warning("run lease lost; another worker has the run", metadata: ["error": "\(lost)"])
        } catch {
            await finish(&iterator)
            if engine.isStopping { return }
            logger.error("run execution failed; it is retried shortly", metadata: ["error": "\(error)"])
            // Off this node's hands, due again after a pause (a persistent fault must not spin).
            try? await engine.store.releaseRun(
                runID: runID, owner: engine.owner, readyAtMs: engine.wallClockMs() + 5_000, finished: false, nowMs: engine.wallClockMs())
        }
    }

    /// Ends the execution: no more messages are taken, a step waiting for its checkpoint is
    /// told it was not written, and the step attempts still running are stopped and awaited.
    private func finish(_ iterator: inout AsyncStream<Message>.Iterator) async {
        handle.continuation.finish()
        while let message = await iterator.next() {
            if case .checkpoint(_, _, _, let done) = message { done(false) }
        }
        await stopSteps()
    }

    /// Stops the step attempts still running (a cancelled run, a lost lease, shutdown) and
    /// waits until they have: nothing of this run touches the store after it returns. Their
    /// results are not recorded; an interrupted attempt is begun again by whoever runs the
    /// run next, with the same idempotency key.
    private func stopSteps() async {
        let tasks = launched.withLock { launched in
            defer { launched = [:] }
            return launched.values.map(\.task)
        }
        for task in tasks { task.cancel() }
        for task in tasks { await task.value }
    }

    /// The mutable state of the loop.
    private struct Loop {
        var state: RunState
        var record: RunRecord
        var batch: [RunEvent] = []
        var consumedSignals: [Int64] = []
        var running: [String: (attempt: Int, task: Task<Void, Never>)] = [:]
        var acks: [@Sendable (Bool) -> Void] = []
        var alerts: [(String, JSONObject)] = []
        var checkSignals = true
        var lastSignalCheckMs: Int64 = 0

        mutating func add(_ kind: RunEvent.Kind, nowMs: Int64) {
            let event = RunEvent(seq: state.lastSeq + 1, timeMs: nowMs, kind: kind)
            state.apply(event)
            batch.append(event)
        }
    }

    private func execute(_ iterator: inout AsyncStream<Message>.Iterator) async throws {
        let store = engine.store
        guard let record = try await store.run(id: runID) else {
            try await store.releaseRun(runID: runID, owner: engine.owner, readyAtMs: nil, finished: true, nowMs: engine.wallClockMs())
            return
        }
        let history = try await store.runEvents(runID: runID, afterSeq: 0)
        var loop = Loop(state: RunState(history), record: record)
        supervisor.value = record.supervisor
        let definition: WorkflowDefinition
        do {
            definition = try await engine.catalog.definition(hash: record.workflowHash)
        } catch let error as StepError {
            loop.add(.runFailed(error: error), nowMs: engine.wallClockMs())
            try await commit(&loop, definition: nil)
            try await store.releaseRun(runID: runID, owner: engine.owner, readyAtMs: nil, finished: true, nowMs: engine.wallClockMs())
            return
        }
        let planner = RunPlanner(definition: definition)
        var usage = record.usage
        // The ledger may know calls settled after the last checkpoint (a crash in between).
        if let spend = try? await store.runSpend(runID: runID) {
            usage.tokens = max(usage.tokens, spend.tokens)
            usage.cost = max(usage.cost, spend.cost)
        }
        engine.governor.openRunBudget(runID: runID, limits: loop.state.budgets, used: usage)
        defer { engine.governor.closeRunBudget(runID: runID) }
        let runner = StepRunner(engine: engine, record: record, definition: definition, handle: handle, supervisor: supervisor)
        var timer: Task<Void, Never>?
        var timerAt: Int64 = 0
        defer {
            // Checkpoints taken but not written (the execution is ending) are refused.
            for ack in loop.acks { ack(false) }
            timer?.cancel()
            for (_, entry) in loop.running { entry.task.cancel() }
        }

        while true {
            let now = engine.wallClockMs()
            // Operators' requests, when nudged and at least every poll interval.
            if loop.checkSignals || now - loop.lastSignalCheckMs >= Int64(engine.settings.pollIntervalMs) {
                loop.checkSignals = false
                loop.lastSignalCheckMs = now
                for signal in try await store.runSignals(runID: runID) {
                    apply(signal, to: &loop, definition: definition, nowMs: now)
                    loop.consumedSignals.append(signal.id)
                }
            }
            if loop.state.status == .cancelled {
                for (_, entry) in loop.running { entry.task.cancel() }
                loop.running = [:]
            }
            var launches: [StepTask] = []
            if !loop.state.status.isTerminal {
                let plan = planner.plan(loop.state, nowMs: now)
                for action in plan.actions {
                    try await perform(action, loop: &loop, definition: definition, runner: runner, launches: &launches, nowMs: now)
                }
                var committed = false
                if !loop.batch.isEmpty || !loop.consumedSignals.isEmpty {
                    try await commit(&loop, definition: definition)
                    committed = true
                }
                for task in launches { launch(task, loop: &loop, runner: runner) }
                // Plan again after every change: a result may open the next steps.
                if committed || !launches.isEmpty { continue }
                if loop.running.isEmpty, plan.isIdle || engine.isStopping {
                    // The summary says what the run is now (a fork or a claimed run may show `queued`).
                    if status(of: loop.state, definition: definition) != loop.record.status { try await commit(&loop, definition: definition) }
                    try await release(&loop, readyAtMs: engine.isStopping ? now : plan.wakeAtMs)
                    return
                }
                // One timer for the earliest thing due. One armed earlier that fires no later
                // is kept (it only makes the loop look again): most transitions wait for a
                // step's result, not for time, and need no new timer.
                let wakeAt = min(plan.wakeAtMs ?? Int64.max, now + Int64(engine.settings.pollIntervalMs))
                if timer == nil || timerAt <= now || timerAt > wakeAt {
                    timer?.cancel()
                    timerAt = wakeAt
                    let handle = self.handle
                    timer = Task {
                        try? await Task.sleep(for: .milliseconds(max(0, wakeAt - engine.wallClockMs())))
                        if !Task.isCancelled { handle.nudge() }
                    }
                }
            } else {
                if !loop.batch.isEmpty || !loop.consumedSignals.isEmpty { try await commit(&loop, definition: definition) }
                for (_, entry) in loop.running { entry.task.cancel() }
                try await release(&loop, readyAtMs: nil)
                return
            }
            // Wait for a result, a checkpoint, a nudge or the timer.
            guard let message = await iterator.next() else { return }
            switch message {
            case .finished(let path, let attempt, let outcome):
                launched.withLock { launched in
                    if launched[path]?.attempt == attempt { launched[path] = nil }
                }
                guard loop.running[path]?.attempt == attempt else { continue }
                loop.running[path] = nil
                self.record(outcome, path: path, attempt: attempt, definition: definition, loop: &loop, nowMs: engine.wallClockMs())
            case .checkpoint(let path, let attempt, let turn, let done):
                guard loop.running[path]?.attempt == attempt, !loop.state.status.isTerminal else {
                    done(false)
                    continue
                }
                loop.add(.agentTurn(path: path, attempt: attempt, turn: turn), nowMs: engine.wallClockMs())
                loop.acks.append(done)
            case .nudge:
                loop.checkSignals = true
            case .leaseLost:
                throw RunLeaseLost(runID: runID)
            }
        }
    }

    /// An operator's request, as history.
    private func apply(_ signal: RunSignal, to loop: inout Loop, definition: WorkflowDefinition, nowMs: Int64) {
        let status = loop.state.status
        switch signal.kind {
        case "pause" where !status.isTerminal && !loop.state.paused:
            loop.add(.paused(by: signal.by), nowMs: nowMs)
        case "resume" where loop.state.paused && !status.isTerminal:
            loop.add(.resumed(by: signal.by), nowMs: nowMs)
        case "cancel" where !status.isTerminal:
            loop.add(.cancelled(by: signal.by, reason: signal.data["reason"]?.stringValue), nowMs: nowMs)
        case "retry" where status == .failed || status == .stoppedByBudget:
            let paths = loop.state.failuresToRetry(definition)
            loop.add(.retried(by: signal.by, budgets: signal.data["budgets"].map { RunBudgetLimits(json: $0) }, paths: paths), nowMs: nowMs)
            engine.governor.openRunBudget(
                runID: runID, limits: loop.state.budgets, used: engine.governor.runUsage(runID: runID)?.used ?? loop.record.usage)
        default:
            // Asked of a run no longer in the state it was asked in: nothing to do.
            break
        }
    }

    private func perform(
        _ action: RunAction, loop: inout Loop, definition: WorkflowDefinition, runner: StepRunner, launches: inout [StepTask], nowMs: Int64
    ) async throws {
        switch action {
        case .start(let task):
            guard loop.running[task.path] == nil, !engine.isStopping else { return }
            switch task.step.kind {
            case .parallel:
                loop.add(.stepStarted(path: task.path, attempt: task.attempt, data: nil), nowMs: nowMs)
            case .map(let items, _, _):
                do {
                    let rendered = try items.render(StepRunner.cel(task.bindings))
                    guard case .array = rendered else {
                        throw StepError(code: "expression_error", message: "'items' of step '\(task.step.id)' is a \(rendered.typeName), not a list.", retryable: false)
                    }
                    loop.add(.stepStarted(path: task.path, attempt: task.attempt, data: rendered), nowMs: nowMs)
                } catch {
                    loop.add(.stepStarted(path: task.path, attempt: task.attempt, data: .array([])), nowMs: nowMs)
                    loop.add(.stepFailed(path: task.path, attempt: task.attempt, error: error as? StepError ?? StepError(code: "expression_error", message: "\(error)"), retryAtMs: nil), nowMs: nowMs)
                }
            case .sleep(let duration):
                // A timer: begun and waiting in one checkpoint.
                if !task.resumed { loop.add(.stepStarted(path: task.path, attempt: task.attempt, data: nil), nowMs: nowMs) }
                loop.add(.stepWaiting(path: task.path, wait: .sleep(untilMs: nowMs + duration)), nowMs: nowMs)
            case .waitEvent(let type, _, let after):
                // Events count from the step named in `after` (the request it waits for an answer
                // to), else from now; begun and waiting in one checkpoint, so none is missed.
                var position = after.flatMap { task.bindings[$0]?["seq"]?.int64Value }
                if position == nil { position = try await engine.store.lastEventSeq() }
                let timeout = task.step.timeoutMs ?? engine.settings.waitTimeoutMs
                if !task.resumed { loop.add(.stepStarted(path: task.path, attempt: task.attempt, data: nil), nowMs: nowMs) }
                loop.add(.stepWaiting(path: task.path, wait: .event(type: type, afterSeq: position ?? 0, deadlineMs: nowMs + timeout)), nowMs: nowMs)
            case .branch:
                // Evaluated here: no I/O, nothing to resume.
                if !task.resumed { loop.add(.stepStarted(path: task.path, attempt: task.attempt, data: nil), nowMs: nowMs) }
                self.record(runner.branch(task), path: task.path, attempt: task.attempt, definition: definition, loop: &loop, nowMs: nowMs)
            default:
                if !task.resumed { loop.add(.stepStarted(path: task.path, attempt: task.attempt, data: nil), nowMs: nowMs) }
                launches.append(task)
                // Launched after the commit; marked now so a replan does not start it twice.
                loop.running[task.path] = (task.attempt, Task {})
            }
        case .checkWait(let task, let wait):
            if let outcome = try await runner.check(wait, task: task, nowMs: nowMs) {
                self.record(outcome, path: task.path, attempt: task.attempt, definition: definition, loop: &loop, nowMs: nowMs)
            }
        case .completeStep(let path, let output):
            loop.add(.stepCompleted(path: path, output: output), nowMs: nowMs)
        case .failStep(let path, let attempt, let error):
            for (running, entry) in loop.running where running.hasPrefix(path + ".") || running.hasPrefix(path + "[") {
                entry.task.cancel()
                loop.running[running] = nil
            }
            loop.add(.stepFailed(path: path, attempt: attempt, error: error, retryAtMs: nil), nowMs: nowMs)
        case .completeRun(let bindings, let last):
            do {
                let output = try definition.output?.render(StepRunner.cel(bindings)) ?? last
                if let schema = definition.outputSchema {
                    let violations = schema.validate(output)
                    if !violations.isEmpty {
                        throw StepError(
                            code: "invalid_output", message: "The run's output does not match the workflow's output schema: \(violations.map(\.description).joined(separator: "; ")).",
                            retryable: false)
                    }
                }
                loop.add(.runCompleted(output: output), nowMs: nowMs)
            } catch {
                loop.add(.runFailed(error: error as? StepError ?? StepError(code: "expression_error", message: "\(error)", retryable: false)), nowMs: nowMs)
            }
        case .failRun(let error):
            loop.add(.runFailed(error: error), nowMs: nowMs)
        case .stopByBudget(let limit, let message):
            stop(limit: limit, message: message, loop: &loop, nowMs: nowMs)
        }
    }

    private func stop(limit: String, message: String, loop: inout Loop, nowMs: Int64) {
        guard !loop.state.status.isTerminal else { return }
        loop.add(.stoppedByBudget(limit: limit, message: message), nowMs: nowMs)
        loop.alerts.append(("run.stopped_by_budget", ["limit": .string(limit), "message": .string(message)]))
    }

    /// A step's result as history: the output, a retry (with its backoff) or the failure, a wait.
    private func record(_ outcome: StepOutcome, path: String, attempt: Int, definition: WorkflowDefinition, loop: inout Loop, nowMs: Int64) {
        guard !loop.state.status.isTerminal else { return }
        switch outcome {
        case .completed(let output, let supervisor):
            loop.add(.stepCompleted(path: path, output: output), nowMs: nowMs)
            if let supervisor {
                loop.record.supervisor = supervisor
                self.supervisor.value = supervisor
            }
        case .failed(let error):
            let step = definition.step(RunState.stepID(path))
            var retryAt: Int64?
            if let retry = step?.retry, retry.retries(error, afterAttempt: attempt) {
                var generator = SystemRandomNumberGenerator()
                retryAt = nowMs + retry.backoffMs(afterAttempt: attempt, using: &generator)
            }
            loop.add(.stepFailed(path: path, attempt: attempt, error: error, retryAtMs: retryAt), nowMs: nowMs)
            Counter(label: "interlock_workflow_step_failures_total", dimensions: [("workflow", definition.name), ("code", error.code)]).increment()
        case .waiting(let wait):
            loop.add(.stepWaiting(path: path, wait: wait), nowMs: nowMs)
        case .stopped(let limit, let message):
            loop.add(
                .stepFailed(path: path, attempt: attempt, error: StepError(code: "run_budget_exceeded", message: message, retryable: false), retryAtMs: nil),
                nowMs: nowMs)
            stop(limit: limit, message: message, loop: &loop, nowMs: nowMs)
        case .rerun(let supervisor):
            loop.add(.stepStarted(path: path, attempt: attempt, data: nil), nowMs: nowMs)
            if let supervisor {
                loop.record.supervisor = supervisor
                self.supervisor.value = supervisor
            }
        case .abandoned:
            break
        }
    }

    private func launch(_ task: StepTask, loop: inout Loop, runner: StepRunner) {
        let handle = self.handle
        let timeoutMs = task.step.timeoutMs ?? Int64(engine.settings.stepTimeoutMs)
        let work = Task {
            let outcome = await runner.perform(task, timeoutMs: timeoutMs)
            handle.continuation.yield(.finished(path: task.path, attempt: task.attempt, outcome))
        }
        loop.running[task.path] = (task.attempt, work)
        launched.withLock { $0[task.path] = (task.attempt, work) }
    }

    /// What the runs API shows: `waiting` when nothing runs and a step waits for something.
    private func status(of state: RunState, definition: WorkflowDefinition?) -> RunStatus {
        guard state.status == .running, let definition else { return state.status }
        let containers = containerIDs(definition)
        let busy = state.steps.contains { path, step in
            step.phase == .running && !containers.contains(RunState.stepID(path))
        }
        let waits = state.steps.values.contains { if case .waiting = $0.phase { true } else { false } }
        return !busy && waits ? .waiting : .running
    }

    /// Writes the batch (with the run's summary) as one transaction under the lease.
    private func commit(_ loop: inout Loop, definition: WorkflowDefinition?) async throws {
        let now = engine.wallClockMs()
        let state = loop.state
        let status = status(of: state, definition: definition)
        let usage = engine.governor.runUsage(runID: runID)?.used ?? loop.record.usage
        let update = RunUpdate(
            status: status, output: state.output, error: state.error, stopLimit: state.stopLimit, budgets: state.budgets, usage: usage,
            stepsStarted: state.stepsStarted, supervisor: loop.record.supervisor, updatedMs: now, finishedMs: state.finishedMs)
        do {
            try await engine.store.appendRunEvents(
                runID: runID, owner: engine.owner, events: loop.batch, update: update, consumedSignals: loop.consumedSignals,
                leaseUntilMs: now + Int64(engine.settings.leaseMs))
        } catch {
            for ack in loop.acks { ack(false) }
            loop.acks = []
            throw error
        }
        for ack in loop.acks { ack(true) }
        loop.acks = []
        loop.record.lastSeq = state.lastSeq
        loop.record.status = status
        loop.record.usage = usage
        let events = loop.batch
        loop.batch = []
        loop.consumedSignals = []
        observe(events, definition: definition, loop: &loop, nowMs: now)
    }

    /// Metrics, audit and alerts for what was just committed.
    private func observe(_ events: [RunEvent], definition: WorkflowDefinition?, loop: inout Loop, nowMs: Int64) {
        let workflow = loop.record.workflow
        for event in events {
            switch event.kind {
            case .stepCompleted:
                Counter(label: "interlock_workflow_steps_total", dimensions: [("workflow", workflow), ("outcome", "completed")]).increment()
            case .runCompleted, .runFailed, .cancelled, .stoppedByBudget:
                let outcome = RunState([event]).status.rawValue
                Counter(label: "interlock_runs_finished_total", dimensions: [("workflow", workflow), ("status", outcome)]).increment()
                var reason: String? = nil
                if case .stoppedByBudget(let limit, _) = event.kind { reason = limit }
                if case .runFailed(let error) = event.kind { reason = error.code }
                engine.governor.audit?.record(AuditRecord(
                    timestampMs: 0, node: "", action: "run.\(outcome)", agentID: loop.record.agentID, userID: loop.record.userID, runID: runID,
                    parentRunID: loop.record.parentRunID, supervisor: loop.record.supervisor, target: "workflow:\(workflow)",
                    decision: outcome == "completed" ? "allow" : "deny", reason: reason, requestID: runID))
            default:
                break
            }
        }
        for (type, fields) in loop.alerts {
            var notification = fields
            notification["run"] = .string(runID)
            notification["workflow"] = .string(workflow)
            if type == "run.stopped_by_budget" {
                Counter(label: "interlock_run_budget_stops_total", dimensions: [("workflow", workflow), ("limit", fields["limit"]?.stringValue ?? "")]).increment()
                logger.warning(
                    "run stopped by its budget",
                    metadata: ["interlock.workflow": "\(workflow)", "interlock.run.limit": "\(fields["limit"]?.stringValue ?? "")"])
            }
            engine.notifier.send(type, notification, nowMs: nowMs)
        }
        loop.alerts = []
    }

    private func release(_ loop: inout Loop, readyAtMs: Int64?) async throws {
        try await engine.store.releaseRun(
            runID: runID, owner: engine.owner, readyAtMs: readyAtMs, finished: loop.state.status.isTerminal, nowMs: engine.wallClockMs())
    }
}
