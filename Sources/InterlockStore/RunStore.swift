public import InterlockCore

/// A workflow definition as a run started it: runs keep the text they started with, by hash.
public struct WorkflowVersionRecord: Sendable, Equatable {
    public var hash: String
    public var name: String
    public var source: String
    /// The file it was read from, or `api`.
    public var origin: String
    public var createdMs: Int64

    public init(hash: String, name: String, source: String, origin: String, createdMs: Int64) {
        self.hash = hash
        self.name = name
        self.source = source
        self.origin = origin
        self.createdMs = createdMs
    }
}

/// A run's summary row: who started it, where it stands, what it used. The history
/// (`RunEvent`s) is the truth; this row is kept with it in the same transaction.
public struct RunRecord: Sendable, Equatable {
    public var id: String
    public var workflow: String
    public var workflowHash: String
    public var status: RunStatus
    public var priority: Int
    /// The agent the steps run as (the workflow's).
    public var agentID: String
    /// Who started it: `agent:<id>`, `operator:<name>`, `event:<id>`, `fork:<run>`.
    public var startedBy: String
    public var userID: String?
    public var parentRunID: String?
    public var forkedFrom: String?
    public var forkedAtSeq: Int64?
    public var idempotencyKey: String?
    public var triggerEventID: String?
    public var input: JSONValue
    public var output: JSONValue?
    public var error: StepError?
    public var stopLimit: String?
    public var budgets: RunBudgetLimits
    public var usage: RunUsage
    public var stepsStarted: Int
    /// The person whose answer the run went on with last.
    public var supervisor: String?
    public var createdMs: Int64
    public var updatedMs: Int64
    public var finishedMs: Int64?
    public var lastSeq: Int64

    public init(
        id: String, workflow: String, workflowHash: String, status: RunStatus = .queued, priority: Int = 0, agentID: String, startedBy: String,
        userID: String? = nil, parentRunID: String? = nil, forkedFrom: String? = nil, forkedAtSeq: Int64? = nil, idempotencyKey: String? = nil,
        triggerEventID: String? = nil, input: JSONValue, budgets: RunBudgetLimits = .init(), createdMs: Int64
    ) {
        self.id = id
        self.workflow = workflow
        self.workflowHash = workflowHash
        self.status = status
        self.priority = priority
        self.agentID = agentID
        self.startedBy = startedBy
        self.userID = userID
        self.parentRunID = parentRunID
        self.forkedFrom = forkedFrom
        self.forkedAtSeq = forkedAtSeq
        self.idempotencyKey = idempotencyKey
        self.triggerEventID = triggerEventID
        self.input = input
        self.budgets = budgets
        self.usage = .zero
        self.stepsStarted = 0
        self.createdMs = createdMs
        self.updatedMs = createdMs
        self.lastSeq = 0
    }
}

/// What a checkpoint changes in the run's summary row.
public struct RunUpdate: Sendable {
    public var status: RunStatus
    public var output: JSONValue?
    public var error: StepError?
    public var stopLimit: String?
    public var budgets: RunBudgetLimits
    public var usage: RunUsage
    public var stepsStarted: Int
    public var supervisor: String?
    public var updatedMs: Int64
    public var finishedMs: Int64?

    public init(
        status: RunStatus, output: JSONValue? = nil, error: StepError? = nil, stopLimit: String? = nil, budgets: RunBudgetLimits, usage: RunUsage,
        stepsStarted: Int, supervisor: String? = nil, updatedMs: Int64, finishedMs: Int64? = nil
    ) {
        self.status = status
        self.output = output
        self.error = error
        self.stopLimit = stopLimit
        self.budgets = budgets
        self.usage = usage
        self.stepsStarted = stepsStarted
        self.supervisor = supervisor
        self.updatedMs = updatedMs
        self.finishedMs = finishedMs
    }
}

/// Which runs a listing wants; nil fields match everything.
public struct RunFilter: Sendable {
    public var status: RunStatus?
    public var workflow: String?
    public var startedBy: String?
    /// Runs created before this run (by creation order), for paging.
    public var beforeID: String?
    public var limit: Int

    public init(status: RunStatus? = nil, workflow: String? = nil, startedBy: String? = nil, beforeID: String? = nil, limit: Int = 50) {
        self.status = status
        self.workflow = workflow
        self.startedBy = startedBy
        self.beforeID = beforeID
        self.limit = limit
    }
}

/// An operator's request to a run (`pause`, `resume`, `cancel`, `retry`), carried out by the
/// worker that holds the run.
public struct RunSignal: Sendable, Equatable {
    public var id: Int64
    public var runID: String
    public var kind: String
    public var by: String
    public var data: JSONValue
    public var createdMs: Int64

    public init(id: Int64 = 0, runID: String, kind: String, by: String, data: JSONValue = .null, createdMs: Int64) {
        self.id = id
        self.runID = runID
        self.kind = kind
        self.by = by
        self.data = data
        self.createdMs = createdMs
    }
}

/// A published event (`invoice.received`): it starts the runs whose triggers match and wakes
/// the `wait_event` steps waiting for it.
public struct EventRecord: Sendable, Equatable {
    /// Position in the event log, from 1.
    public var seq: Int64
    public var id: String
    public var type: String
    public var payload: JSONValue
    /// Events of one type with the same key are one event: the second publish returns the first.
    public var dedupKey: String?
    /// Who published it: `agent:<id>`, `operator:<name>`, `run:<id>`.
    public var source: String
    public var timeMs: Int64

    public init(seq: Int64 = 0, id: String, type: String, payload: JSONValue, dedupKey: String? = nil, source: String, timeMs: Int64) {
        self.seq = seq
        self.id = id
        self.type = type
        self.payload = payload
        self.dedupKey = dedupKey
        self.source = source
        self.timeMs = timeMs
    }

    public var json: JSONValue {
        var object: JSONObject = [
            "id": .string(id), "seq": .integer(seq), "type": .string(type), "payload": payload, "source": .string(source), "time_ms": .integer(timeMs),
        ]
        if let dedupKey { object["dedup_key"] = .string(dedupKey) }
        return .object(object)
    }
}

/// The worker lost a run's lease (another worker holds it): it must stop and commit nothing.
public struct RunLeaseLost: Error, Sendable, CustomStringConvertible {
    public var runID: String
    public init(runID: String) { self.runID = runID }
    public var description: String { "the lease on run \(runID) is held by another worker" }
}

/// Durable workflow state: definitions by hash, runs and their histories, the run queue with
/// leases and timers, operator signals, and the event log. SQLite implements it for one
/// node; PostgreSQL for many (leases and fencing are what make that safe).
public protocol RunStore: Sendable {
    /// Keeps a definition (a second save of the same hash changes nothing).
    func saveWorkflowVersion(_ version: WorkflowVersionRecord) async throws
    func workflowVersion(hash: String) async throws -> WorkflowVersionRecord?
    /// The newest version of each workflow name saved from `origin`.
    func latestWorkflowVersions(origin: String) async throws -> [WorkflowVersionRecord]

    /// Creates a run with its first events, queued ready at `readyAtMs`; with an idempotency
    /// key already used, the existing run instead (and `created` false).
    func createRun(_ run: RunRecord, events: [RunEvent], readyAtMs: Int64) async throws -> (run: RunRecord, created: Bool)
    func run(id: String) async throws -> RunRecord?
    /// Newest first.
    func runs(_ filter: RunFilter) async throws -> [RunRecord]
    /// The history after position `afterSeq` (0: all of it), in order.
    func runEvents(runID: String, afterSeq: Int64) async throws -> [RunEvent]

    /// Leases up to `limit` runs that are due (ready at or before `nowMs`, not leased or
    /// their lease expired), highest priority first, until `leaseUntilMs`.
    func claimRuns(owner: String, nowMs: Int64, leaseUntilMs: Int64, limit: Int) async throws -> [String]
    /// Extends the leases `owner` still holds; the ids it holds.
    func renewLeases(owner: String, runIDs: [String], leaseUntilMs: Int64) async throws -> Set<String>
    /// Appends events to a run's history and updates its summary, in one transaction, only
    /// while `owner` holds the run's lease (else `RunLeaseLost`, nothing written). Signals
    /// carried out are deleted in the same transaction.
    func appendRunEvents(
        runID: String, owner: String, events: [RunEvent], update: RunUpdate, consumedSignals: [Int64], leaseUntilMs: Int64
    ) async throws
    /// Gives a run's lease back: due again at `readyAtMs` (nil: when something wakes it), or
    /// off the queue when it is finished. A wake that came while it was held makes it due now.
    func releaseRun(runID: String, owner: String, readyAtMs: Int64?, finished: Bool, nowMs: Int64) async throws
    /// Makes a queued run due at `atMs` at the latest (an answer came, an event, a signal).
    func wakeRun(runID: String, atMs: Int64) async throws
    /// Frees every lease whose owner starts with `ownerPrefix` (a restarted node's old leases).
    func releaseLeases(ownerPrefix: String) async throws
    /// When the next unleased run is due, if any.
    func nextRunDue() async throws -> Int64?

    /// Records an operator's request and wakes the run.
    func addRunSignal(_ signal: RunSignal) async throws
    func runSignals(runID: String) async throws -> [RunSignal]

    /// Appends an event; with a dedup key already used for its type, the first event instead
    /// (`created` false).
    func publishEvent(_ event: EventRecord) async throws -> (event: EventRecord, created: Bool)
    /// Events after position `afterSeq`, of `type` if given, in order.
    func events(afterSeq: Int64, type: String?, limit: Int) async throws -> [EventRecord]
    /// The position of the newest event (0 when there is none).
    func lastEventSeq() async throws -> Int64
    /// Runs with a step waiting for events of `type`.
    func runsWaiting(eventType: String) async throws -> [String]
    /// A named position kept across restarts (how far the trigger dispatcher has read).
    func cursor(_ name: String) async throws -> Int64
    func setCursor(_ name: String, to value: Int64) async throws
}
