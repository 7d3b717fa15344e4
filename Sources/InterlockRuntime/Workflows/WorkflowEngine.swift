public import AsyncHTTPClient
import InterlockConfig
public import InterlockCore
import InterlockPolicy
public import InterlockStore
import FoundationEssentials
public import Logging
import Metrics
public import ServiceLifecycle
import Synchronization

/// Runs durable workflows on this node: claims due runs from the queue (leases, priorities,
/// timers), executes them step by step with a checkpoint in the store before each next
/// step, starts runs from events, and carries out operators' requests. Every model and tool
/// call of a step goes through the governed pipeline as the step's agent, attributed to the
/// run and counted against its budgets.
public final class WorkflowEngine: Service, Sendable {
    public let settings: WorkflowSettings
    public let catalog: WorkflowCatalog
    let store: any InterlockStore & RunStore & ClusterStore
    let governor: CallGovernor
    let models: ModelGateway
    let tools: ToolGateway?
    let notifier: WorkflowNotifier
    let logger: Logger
    let nodeID: String
    /// This process's lease owner name: the node id and an incarnation, so a restarted node
    /// knows its old leases from its own.
    let owner: String
    public let wallClockMs: @Sendable () -> Int64

    /// Wakes the scheduler (a run became due, one finished).
    let scheduleWake = WakeSignal()
    /// Wakes the event dispatcher (an event was published).
    let dispatchWake = WakeSignal()
    /// Runs executing here, by id, to nudge them when something they wait for happens.
    private struct ActiveRuns {
        var handles: [String: RunExecution.Handle] = [:]
        /// Runs the scheduler claimed while they were listed here.
        var claimedAgain: Set<String> = []
    }
    private let active = Mutex<ActiveRuns>(ActiveRuns())
    private let stopping = Atomic<Bool>(false)
    /// Short store writes started from synchronous callbacks (waking a run), awaited before
    /// `run` returns so none outlives the engine.
    private let background = Mutex<[Int: Task<Void, Never>]>([:])
    private let backgroundCounter = Atomic<Int>(0)

    public init(
        configuration: InterlockConfiguration, store: any InterlockStore & RunStore & ClusterStore, governor: CallGovernor, models: ModelGateway,
        tools: ToolGateway?, httpClient: HTTPClient, logger: Logger, owner: String? = nil, wallClockMs: (@Sendable () -> Int64)? = nil
    ) {
        self.settings = configuration.workflows
        self.store = store
        self.governor = governor
        self.models = models
        self.tools = tools
        self.logger = logger
        self.nodeID = configuration.node.id
        var generator = SystemRandomNumberGenerator()
        self.owner = owner ?? "\(configuration.node.id)/\(String(generator.next(), radix: 36))"
        let clock = wallClockMs ?? { Int64(Date().timeIntervalSince1970 * 1000) }
        self.wallClockMs = clock
        let references = WorkflowReferences(configuration)
        self.catalog = WorkflowCatalog(store: store, references: { references })
        self.notifier = WorkflowNotifier(settings: configuration.workflows.webhook, client: httpClient, node: configuration.node.id, logger: logger)
        governor.policy?.observeDecisions { [weak self] approval in
            guard let self, let runID = approval.runID else { return }
            self.nudge(runID)
        }
    }

    /// Loads the definitions (config files, workflows posted earlier). Call before `run`.
    public func open() async throws {
        try await catalog.load(settings, nowMs: wallClockMs())
    }

    var isStopping: Bool { stopping.load(ordering: .relaxed) || Task.isCancelled }

    // MARK: - The service

    public func run() async throws {
        // A restarted node takes its old runs back at once instead of waiting out their leases.
        try await store.releaseLeases(ownerPrefix: nodeID + "/")
        // Other nodes' wakes (answers, signals, events, new runs) arrive as notifications.
        let listener = Task { await self.followNotifications() }
        defer { listener.cancel() }
        await withGracefulShutdownHandler {
            await withDiscardingTaskGroup { group in
                group.addTask { await self.dispatchEvents() }
                group.addTask { await self.renewLeases() }
                while !self.isStopping {
                    let free = self.settings.maxActiveRuns - self.active.withLock { $0.handles.count }
                    if free > 0 {
                        let now = self.wallClockMs()
                        let claimed: [String]
                        do {
                            claimed = try await self.store.claimRuns(owner: self.owner, nowMs: now, leaseUntilMs: now + Int64(self.settings.leaseMs), limit: free)
                        } catch {
                            if !self.isStopping { self.logger.error("claiming runs failed", metadata: ["error": "\(error)"]) }
                            claimed = []
                        }
                        for runID in claimed {
                            // A run still executing here is not started a second time: its lease
                            // ran out (a paused process) or it was given back a moment ago. The
                            // execution looks again when it ends (`execute`).
                            let execution: RunExecution? = self.active.withLock { active in
                                guard active.handles[runID] == nil else {
                                    active.claimedAgain.insert(runID)
                                    return nil
                                }
                                let execution = RunExecution(engine: self, runID: runID)
                                active.handles[runID] = execution.handle
                                return execution
                            }
                            if let execution { group.addTask { await self.execute(execution) } }
                        }
                        if claimed.count == free { continue }
                    }
                    var waitMs = Int64(self.settings.pollIntervalMs)
                    if free > 0, let due = try? await self.store.nextRunDue() { waitMs = min(waitMs, max(0, due - self.wallClockMs())) }
                    if waitMs > 0 { await self.scheduleWake.wait(upTo: .milliseconds(waitMs)) }
                }
            }
            for task in background.withLock({ Array($0.values) }) { await task.value }
        } onGracefulShutdown: {
            self.stopping.store(true, ordering: .relaxed)
            self.scheduleWake.signal()
            self.dispatchWake.signal()
            for handle in self.active.withLock({ Array($0.handles.values) }) { handle.nudge() }
        }
    }

    /// Executes a claimed run, and again while the scheduler claimed it during an execution's
    /// end: the execution had given the run back (a step's result or a signal made it due at
    /// once) but was still listed here, so the claim started nothing. Without a second look
    /// the run would wait out the lease this node now holds.
    private func execute(_ first: RunExecution) async {
        var execution = first
        var claimedAgain = false
        while true {
            await execution.run(confirmingLease: claimedAgain)
            let runID = execution.runID
            let next: RunExecution? = active.withLock { active in
                guard active.claimedAgain.remove(runID) != nil else {
                    active.handles[runID] = nil
                    return nil
                }
                let next = RunExecution(engine: self, runID: runID)
                active.handles[runID] = next.handle
                return next
            }
            guard let next else { break }
            execution = next
            claimedAgain = true
        }
        scheduleWake.signal()
    }

    /// Nudges a run executing here that another node woke, and wakes the scheduler and the
    /// event dispatcher when other nodes say there is work.
    private func followNotifications() async {
        guard let stream = store.notifications() else { return }
        for await notification in stream {
            switch notification {
            case .runs(let runID):
                if let runID { active.withLock { $0.handles[runID] }?.nudge() }
                scheduleWake.signal()
            case .events:
                dispatchWake.signal()
            case .resync:
                for handle in active.withLock({ Array($0.handles.values) }) { handle.nudge() }
                scheduleWake.signal()
                dispatchWake.signal()
            case .registry, .signingKeys, .sessionEnded:
                break
            }
        }
    }

    /// Keeps the leases of the runs executing here alive; a run whose lease was lost stops.
    private func renewLeases() async {
        let interval = max(100, settings.leaseMs / 3)
        func done() -> Bool { (isStopping && active.withLock({ $0.handles.isEmpty })) || Task.isCancelled }
        while !done() {
            // In slices of 100 ms, so that a graceful shutdown is seen within one: a whole
            // interval (a third of the lease, 8 s by default) held every shutdown that long.
            var slept = 0
            while slept < interval, !done() {
                let slice = min(100, interval - slept)
                try? await Task.sleep(for: .milliseconds(slice))
                slept += slice
            }
            if done() { break }
            let ids = active.withLock { Array($0.handles.keys) }
            guard !ids.isEmpty else { continue }
            do {
                let held = try await store.renewLeases(owner: owner, runIDs: ids, leaseUntilMs: wallClockMs() + Int64(settings.leaseMs))
                for id in ids where !held.contains(id) { active.withLock { $0.handles[id] }?.leaseLost() }
            } catch {
                logger.warning("renewing run leases failed", metadata: ["error": "\(error)"])
            }
        }
    }

    /// Wakes a run executing here, and makes it due now in the store: an execution about to
    /// give the run back (it had just seen nothing to do) would otherwise miss the wake.
    func nudge(_ runID: String) {
        active.withLock { $0.handles[runID] }?.nudge()
        let now = wallClockMs()
        let key = backgroundCounter.add(1, ordering: .relaxed).newValue
        // Made under the lock, so the task's own removal (which takes it) comes after.
        background.withLock { tasks in
            tasks[key] = Task {
                try? await store.wakeRun(runID: runID, atMs: now)
                scheduleWake.signal()
                _ = self.background.withLock { $0.removeValue(forKey: key) }
            }
        }
    }

    // MARK: - Events and triggers

    /// Reads the event log from where it stopped: starts the runs whose triggers match (one
    /// per event and workflow, whatever happens in between: the idempotency key is the event)
    /// and wakes the runs waiting for each type.
    private func dispatchEvents() async {
        while !isStopping {
            do {
                // One dispatcher in the cluster at a time; the others stand by.
                let now = wallClockMs()
                guard try await store.holdLease("event_dispatch", owner: owner, nowMs: now, untilMs: now + Int64(settings.leaseMs)) else {
                    await dispatchWake.wait(upTo: .milliseconds(Int64(settings.pollIntervalMs)))
                    continue
                }
                var cursor = try await store.cursor("event_dispatch")
                while true {
                    let batch = try await store.events(afterSeq: cursor, type: nil, limit: 200)
                    guard !batch.isEmpty else { break }
                    for event in batch {
                        try await trigger(event)
                        for runID in try await store.runsWaiting(eventType: event.type) { nudge(runID) }
                        cursor = event.seq
                    }
                    try await store.setCursor("event_dispatch", to: cursor)
                }
            } catch {
                logger.error("dispatching events failed", metadata: ["error": "\(error)"])
            }
            await dispatchWake.wait(upTo: .milliseconds(Int64(settings.pollIntervalMs)))
        }
    }

    private func trigger(_ event: EventRecord) async throws {
        let bindings = ["event": CELValue(json: event.json)]
        for definition in catalog.all() {
            for trigger in definition.triggers where trigger.eventType == event.type {
                do {
                    if let condition = trigger.condition, try condition.evaluate(bindings).boolValue != true { continue }
                    let input = try trigger.input?.render(bindings) ?? event.payload
                    _ = try await start(
                        definition, input: input, startedBy: "event:\(event.id)", userID: nil, parentRunID: nil,
                        idempotencyKey: "event:\(event.id):\(definition.name)", budgets: nil, triggerEventID: event.id)
                } catch let error as GatewayError where error.kind == .internal {
                    // The store failed: the dispatcher stops here and reads this event again
                    // (the run's key is the event's, so a run started meanwhile is not doubled).
                    throw error
                } catch {
                    // The event itself does not fit (a condition that fails, input the workflow
                    // refuses): it never will; recorded, and the dispatcher goes on.
                    logger.warning(
                        "trigger did not start a run",
                        metadata: ["interlock.workflow": "\(definition.name)", "interlock.event.id": "\(event.id)", "error": "\(error)"])
                }
            }
        }
    }

    /// Publishes an event (once per dedup key) and wakes the dispatcher.
    public func publish(type: String, payload: JSONValue, dedupKey: String?, source: String) async throws(GatewayError) -> (event: EventRecord, created: Bool) {
        guard !type.isEmpty, type.utf8.count <= 128, type.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || "._-:/".contains($0)) }) else {
            throw GatewayError.invalidRequest("'type' must be 1 to 128 letters, digits, '.', '_', '-', ':' or '/'.", code: "invalid_field", param: "type")
        }
        if let dedupKey, dedupKey.isEmpty || dedupKey.utf8.count > 256 {
            throw GatewayError.invalidRequest("'dedup_key' must be 1 to 256 characters.", code: "invalid_field", param: "dedup_key")
        }
        let record = EventRecord(id: Self.newID("evt"), type: type, payload: payload, dedupKey: dedupKey, source: source, timeMs: wallClockMs())
        let result: (event: EventRecord, created: Bool)
        do {
            result = try await store.publishEvent(record)
        } catch {
            throw Self.storeError(error, logger: logger)
        }
        if result.created {
            Counter(label: "interlock_events_published_total", dimensions: [("type", type)]).increment()
            dispatchWake.signal()
        }
        return result
    }

    // MARK: - Runs

    /// Starts a run of `definition`: input checked against the workflow's schema, history
    /// begun, queued. With an idempotency key used before, the run it started instead.
    public func start(
        _ definition: WorkflowDefinition, input: JSONValue, startedBy: String, userID: String?, parentRunID: String?, idempotencyKey: String?,
        budgets: RunBudgetLimits?, triggerEventID: String? = nil
    ) async throws(GatewayError) -> (run: RunRecord, created: Bool) {
        if let schema = definition.inputSchema {
            let violations = schema.validate(input)
            if !violations.isEmpty {
                throw GatewayError(
                    kind: .invalidRequest, code: "invalid_input",
                    message: "The input does not match workflow '\(definition.name)': \(violations.map(\.description).joined(separator: "; ")).", param: "input")
            }
        }
        let now = wallClockMs()
        var limits = budgets ?? definition.budgets
        // A loop without a step limit cannot run forever.
        if limits.maxSteps == nil { limits.maxSteps = settings.defaultMaxSteps }
        var record = RunRecord(
            id: Self.newID("run"), workflow: definition.name, workflowHash: definition.hash, priority: definition.priority, agentID: definition.agentID,
            startedBy: startedBy, userID: userID, parentRunID: parentRunID, idempotencyKey: idempotencyKey, triggerEventID: triggerEventID, input: input,
            budgets: limits, createdMs: now)
        record.status = .queued
        let started = RunEvent(seq: 1, timeMs: now, kind: .runStarted(input: input, budgets: limits))
        let result: (run: RunRecord, created: Bool)
        do {
            result = try await store.createRun(record, events: [started], readyAtMs: now)
        } catch {
            throw Self.storeError(error, logger: logger)
        }
        if result.created {
            Counter(label: "interlock_runs_started_total", dimensions: [("workflow", definition.name)]).increment()
            governor.audit?.record(AuditRecord(
                timestampMs: 0, node: "", action: "run.start", agentID: definition.agentID, userID: userID, runID: record.id, parentRunID: parentRunID,
                target: "workflow:\(definition.name)", decision: "allow", reason: startedBy, requestID: record.id))
            scheduleWake.signal()
        }
        return result
    }

    public func run(id: String) async throws(GatewayError) -> RunRecord? {
        do {
            return try await store.run(id: id)
        } catch {
            throw Self.storeError(error, logger: logger)
        }
    }

    public func runs(_ filter: RunFilter) async throws(GatewayError) -> [RunRecord] {
        do {
            return try await store.runs(filter)
        } catch {
            throw Self.storeError(error, logger: logger)
        }
    }

    public func history(runID: String) async throws(GatewayError) -> [RunEvent] {
        do {
            return try await store.runEvents(runID: runID, afterSeq: 0)
        } catch {
            throw Self.storeError(error, logger: logger)
        }
    }

    /// What operators may ask of a run.
    public enum Control: String, Sendable, CaseIterable {
        case pause, resume, cancel, retry
    }

    /// Records an operator's request; the worker holding the run carries it out at once (a
    /// step in flight finishes and is checkpointed first; `cancel` stops it).
    public func control(_ runID: String, _ control: Control, by: String, reason: String? = nil, budgets: RunBudgetLimits? = nil) async throws(GatewayError)
        -> RunRecord
    {
        guard let run = try await run(id: runID) else { throw Self.runNotFound(runID) }
        let allowed: Bool =
            switch control {
            case .pause: !run.status.isTerminal && run.status != .paused
            case .resume: run.status == .paused
            case .cancel: !run.status.isTerminal
            case .retry: run.status == .failed || run.status == .stoppedByBudget
            }
        guard allowed else {
            throw GatewayError(
                kind: .conflict, code: "run_state_conflict", message: "Run \(runID) is \(run.status.rawValue); it cannot be asked to \(control.rawValue).")
        }
        var data = JSONObject()
        if let reason { data["reason"] = .string(reason) }
        if let budgets { data["budgets"] = budgets.json }
        do {
            try await store.addRunSignal(RunSignal(runID: runID, kind: control.rawValue, by: by, data: .object(data), createdMs: wallClockMs()))
        } catch {
            throw Self.storeError(error, logger: logger)
        }
        governor.audit?.record(AuditRecord(
            timestampMs: 0, node: "", action: "run.\(control.rawValue)", agentID: run.agentID, userID: run.userID, runID: runID, parentRunID: run.parentRunID,
            supervisor: by, target: "workflow:\(run.workflow)", decision: "allow", reason: reason, requestID: runID))
        nudge(runID)
        return run
    }

    /// Starts a new run from a checkpoint of another: its history up to `atSeq` (default: all
    /// of it, without how it ended), then on as if retried. Steps the fork runs again get new
    /// idempotency keys (it is a new run): side effects happen again.
    public func fork(_ runID: String, atSeq: Int64?, by: String, latestDefinition: Bool) async throws(GatewayError) -> RunRecord {
        guard let source = try await run(id: runID) else { throw Self.runNotFound(runID) }
        var events = try await history(runID: runID)
        if let atSeq {
            guard atSeq >= 1, atSeq <= source.lastSeq else {
                throw GatewayError.invalidRequest("'at_seq' must be between 1 and \(source.lastSeq).", code: "invalid_field", param: "at_seq")
            }
            events = events.filter { $0.seq <= atSeq }
        }
        events = events.filter {
            switch $0.kind {
            case .runCompleted, .runFailed, .stoppedByBudget, .cancelled, .paused, .resumed: false
            default: true
            }
        }
        var definitionHash = source.workflowHash
        if latestDefinition {
            guard let current = catalog.current(source.workflow) else {
                throw GatewayError(kind: .notFound, code: "workflow_not_found", message: "There is no workflow '\(source.workflow)' now.")
            }
            definitionHash = current.hash
        }
        let now = wallClockMs()
        // Renumbered in order, its wall time counted from now; the failures that ended the old
        // run are retried.
        var copied = events.enumerated().map { RunEvent(seq: Int64($0.offset + 1), timeMs: $0.element.timeMs, kind: $0.element.kind) }
        if !copied.isEmpty, case .runStarted = copied[0].kind { copied[0].timeMs = now }
        let state = RunState(copied)
        let definition: WorkflowDefinition
        do {
            definition = try await catalog.definition(hash: definitionHash)
        } catch {
            throw GatewayError(kind: .conflict, code: "workflow_unavailable", message: "The definition of run \(runID) is no longer in the store.")
        }
        let failures = state.failuresToRetry(definition)
        if !failures.isEmpty {
            copied.append(RunEvent(seq: Int64(copied.count + 1), timeMs: now, kind: .retried(by: by, budgets: nil, paths: failures)))
        }
        var record = RunRecord(
            id: Self.newID("run"), workflow: source.workflow, workflowHash: definitionHash, priority: source.priority, agentID: source.agentID,
            startedBy: by, userID: source.userID, parentRunID: source.parentRunID, forkedFrom: source.id, forkedAtSeq: atSeq ?? source.lastSeq,
            input: source.input, budgets: state.budgets, createdMs: now)
        record.stepsStarted = state.stepsStarted
        do {
            record = try await store.createRun(record, events: copied, readyAtMs: now).run
        } catch {
            throw Self.storeError(error, logger: logger)
        }
        governor.audit?.record(AuditRecord(
            timestampMs: 0, node: "", action: "run.fork", agentID: source.agentID, userID: source.userID, runID: record.id, parentRunID: source.id,
            supervisor: by, target: "workflow:\(source.workflow)", decision: "allow", reason: "from \(source.id)@\(atSeq ?? source.lastSeq)", requestID: record.id))
        scheduleWake.signal()
        return record
    }

    // MARK: - Helpers

    static func runNotFound(_ id: String) -> GatewayError {
        GatewayError(kind: .notFound, code: "run_not_found", message: "There is no run '\(id)'.")
    }

    static func storeError(_ error: any Error, logger: Logger) -> GatewayError {
        if let gateway = error as? GatewayError { return gateway }
        logger.error("workflow store failed", metadata: ["error": "\(error)"])
        return GatewayError(kind: .internal, code: "store_unavailable", message: "Interlock could not read or write its store; try again.", status: 503)
    }

    static func newID(_ prefix: String) -> String {
        var generator = SystemRandomNumberGenerator()
        let digits = Array("0123456789abcdefghijklmnopqrstuvwxyz".utf8)
        return prefix + "_" + String(decoding: (0..<20).map { _ in digits[Int(generator.next(upperBound: UInt64(digits.count)))] }, as: UTF8.self)
    }
}
