/// Where a run stands.
public enum RunStatus: String, Sendable, CaseIterable {
    /// Accepted, not yet picked up by a worker.
    case queued
    case running
    /// Nothing to do until a human answers, an event arrives or a timer fires.
    case waiting
    case paused
    case completed
    case failed
    case cancelled
    /// A budget would have been exceeded; the state is kept (retry with a higher budget).
    case stoppedByBudget = "stopped_by_budget"

    public var isTerminal: Bool {
        switch self {
        case .completed, .failed, .cancelled, .stoppedByBudget: true
        default: false
        }
    }
}

/// A run's state: the fold of its history. Value type, no I/O; `RunPlanner` reads it with the
/// definition to say what happens next.
public struct RunState: Sendable {
    public struct Step: Sendable, Equatable {
        public enum Phase: Sendable, Equatable {
            /// An attempt has begun and not ended (after a crash: it is started again, same
            /// attempt, same idempotency key).
            case running
            case waiting(StepWait)
            /// The attempt failed; the next one starts at this time.
            case retrying(atMs: Int64)
            case completed
            /// Failed for good (retries spent, or not retryable).
            case failed
        }

        public var attempt: Int
        public var phase: Phase
        public var startedMs: Int64
        /// The sequence number of the event that began the attempt: the order of steps begun
        /// within one millisecond (a branch and the step it chose, say).
        public var startedSeq: Int64 = 0
        public var finishedMs: Int64?
        public var output: JSONValue?
        public var error: StepError?
        /// A `map` step's items.
        public var data: JSONValue?
        /// The agent checkpoints of the current attempt, in order.
        public var turns: [JSONValue] = []
    }

    public private(set) var status: RunStatus = .queued
    public private(set) var input: JSONValue = .null
    public private(set) var budgets = RunBudgetLimits()
    public private(set) var startedMs: Int64 = 0
    public private(set) var finishedMs: Int64?
    /// By path (`intake`, `lines[2]/check`, `review.legal/notify`, `draft#2` for a second visit).
    public private(set) var steps: [String: Step] = [:]
    /// The steps in the order they began: by time, and within a millisecond by the history's
    /// order (a branch and the step it chose often begin in the same millisecond).
    public var stepsInOrder: [(path: String, step: Step)] {
        steps.sorted { ($0.value.startedMs, $0.value.startedSeq) < ($1.value.startedMs, $1.value.startedSeq) }.map { (path: $0.key, step: $0.value) }
    }
    /// Distinct step paths begun (what `max_steps` counts).
    public private(set) var stepsStarted = 0
    public private(set) var lastSeq: Int64 = 0
    public private(set) var output: JSONValue?
    public private(set) var error: StepError?
    /// The budget that stopped the run.
    public private(set) var stopLimit: String?
    public private(set) var paused = false

    public init() {}

    public init(_ events: some Sequence<RunEvent>) {
        for event in events { apply(event) }
    }

    public mutating func apply(_ event: RunEvent) {
        lastSeq = event.seq
        switch event.kind {
        case .runStarted(let input, let budgets):
            self.input = input
            self.budgets = budgets
            startedMs = event.timeMs
            status = .running
        case .stepStarted(let path, let attempt, let data):
            let previous = steps[path]
            if previous == nil { stepsStarted += 1 }
            var step = Step(attempt: attempt, phase: .running, startedMs: event.timeMs, startedSeq: event.seq, data: data ?? previous?.data)
            // The same attempt begun again (after a policy approval) keeps its agent checkpoints.
            if let previous, previous.attempt == attempt { step.turns = previous.turns }
            steps[path] = step
        case .stepCompleted(let path, let output):
            var step = steps[path] ?? Step(attempt: 1, phase: .running, startedMs: event.timeMs, startedSeq: event.seq)
            step.phase = .completed
            step.output = output
            step.error = nil
            step.finishedMs = event.timeMs
            steps[path] = step
        case .stepFailed(let path, let attempt, let error, let retryAt):
            var step = steps[path] ?? Step(attempt: attempt, phase: .running, startedMs: event.timeMs, startedSeq: event.seq)
            step.attempt = attempt
            step.error = error
            step.turns = []
            if let retryAt {
                step.phase = .retrying(atMs: retryAt)
            } else {
                step.phase = .failed
                step.finishedMs = event.timeMs
            }
            steps[path] = step
        case .stepWaiting(let path, let wait):
            steps[path]?.phase = .waiting(wait)
        case .agentTurn(let path, _, let turn):
            steps[path]?.turns.append(turn)
        case .paused:
            paused = true
            if !status.isTerminal { status = .paused }
        case .resumed:
            paused = false
            if !status.isTerminal { status = .running }
        case .retried(_, let budgets, let paths):
            if let budgets { self.budgets = budgets }
            for (path, step) in steps where step.phase == .failed && (paths?.contains(path) ?? true) {
                steps[path]?.phase = .retrying(atMs: event.timeMs)
                steps[path]?.finishedMs = nil
            }
            status = paused ? .paused : .running
            error = nil
            stopLimit = nil
            finishedMs = nil
        case .cancelled:
            status = .cancelled
            finishedMs = event.timeMs
        case .runCompleted(let output):
            self.output = output
            status = .completed
            finishedMs = event.timeMs
        case .runFailed(let error):
            self.error = error
            status = .failed
            finishedMs = event.timeMs
        case .stoppedByBudget(let limit, let message):
            stopLimit = limit
            error = StepError(code: "run_budget_exceeded", message: message, retryable: false)
            status = .stoppedByBudget
            finishedMs = event.timeMs
        }
    }

    /// `running` or `waiting`, as the plan shows (for the runs API).
    public mutating func settle(waiting: Bool) {
        guard status == .running || status == .waiting else { return }
        status = waiting ? .waiting : .running
    }

    /// The failed steps a retry sends on: those that failed their sequence (a failure an
    /// `on_error` path handled stays as it is — running it again would repeat its effects).
    public func failuresToRetry(_ definition: WorkflowDefinition) -> [String] {
        steps.filter { path, step in
            step.phase == .failed && definition.step(Self.stepID(path))?.onError == nil
        }.map(\.key).sorted()
    }

    /// `each[2]/check#3` → `check`.
    public static func stepID(_ path: String) -> String {
        var last = path.split(separator: "/").last.map(String.init) ?? path
        if let hash = last.firstIndex(of: "#") { last = String(last[..<hash]) }
        return last
    }

    /// The idempotency key of a step attempt: the same for the attempt however often it is
    /// started again after a crash, different for the next attempt.
    public static func idempotencyKey(runID: String, path: String, attempt: Int) -> String {
        "run:\(runID):\(path):\(attempt)"
    }
}
