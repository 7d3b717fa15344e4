/// Why a step attempt failed, in a form the run keeps, the API shows and `retry_on` matches.
public struct StepError: Error, Sendable, Equatable, CustomStringConvertible {
    /// A stable code: `timeout`, `upstream_error`, `rate_limited`, `invalid_output`,
    /// `approval_rejected`, or the gateway error code of a refused call.
    public var code: String
    public var message: String
    /// Whether another attempt may succeed (a timeout, an upstream failure, a rate limit);
    /// false for what another attempt cannot fix (a rejection, a policy denial, bad input).
    public var retryable: Bool

    public init(code: String, message: String, retryable: Bool = false) {
        self.code = code
        self.message = message
        self.retryable = retryable
    }

    public var description: String { "\(code): \(message)" }

    public var json: JSONValue {
        ["code": .string(code), "message": .string(message), "retryable": .bool(retryable)]
    }

    public init?(json: JSONValue?) {
        guard let code = json?["code"]?.stringValue else { return nil }
        self.init(code: code, message: json?["message"]?.stringValue ?? "", retryable: json?["retryable"]?.boolValue ?? false)
    }
}

/// What a waiting step waits for; every wait has a deadline the run's timer keeps.
public enum StepWait: Sendable, Equatable {
    /// A human's answer to an approval or input request (the answer is the step's output).
    case human(approvalID: String, deadlineMs: Int64?)
    /// An operator's decision on a call a `require_approval` policy rule held: approved, the
    /// attempt runs again (same idempotency key) and the call goes through.
    case policy(approvalID: String, deadlineMs: Int64?)
    /// An event of `type` published after position `afterSeq` of the event log.
    case event(type: String, afterSeq: Int64, deadlineMs: Int64?)
    case sleep(untilMs: Int64)

    public var deadlineMs: Int64? {
        switch self {
        case .human(_, let deadline), .policy(_, let deadline), .event(_, _, let deadline): deadline
        case .sleep(let until): until
        }
    }

    public var json: JSONValue {
        switch self {
        case .human(let id, let deadline), .policy(let id, let deadline):
            var object: JSONObject = ["kind": .string(self.kindName), "approval_id": .string(id)]
            if let deadline { object["deadline_ms"] = .integer(deadline) }
            return .object(object)
        case .event(let type, let after, let deadline):
            var object: JSONObject = ["kind": "event", "type": .string(type), "after_seq": .integer(after)]
            if let deadline { object["deadline_ms"] = .integer(deadline) }
            return .object(object)
        case .sleep(let until):
            return ["kind": "sleep", "until_ms": .integer(until)]
        }
    }

    /// `human`, `policy`, `event` or `sleep`.
    public var kindName: String {
        switch self {
        case .human: "human"
        case .policy: "policy"
        case .event: "event"
        case .sleep: "sleep"
        }
    }

    init?(json: JSONValue?) {
        switch json?["kind"]?.stringValue {
        case "human":
            guard let id = json?["approval_id"]?.stringValue else { return nil }
            self = .human(approvalID: id, deadlineMs: json?["deadline_ms"]?.int64Value)
        case "policy":
            guard let id = json?["approval_id"]?.stringValue else { return nil }
            self = .policy(approvalID: id, deadlineMs: json?["deadline_ms"]?.int64Value)
        case "event":
            guard let type = json?["type"]?.stringValue else { return nil }
            self = .event(type: type, afterSeq: json?["after_seq"]?.int64Value ?? 0, deadlineMs: json?["deadline_ms"]?.int64Value)
        case "sleep":
            guard let until = json?["until_ms"]?.int64Value else { return nil }
            self = .sleep(untilMs: until)
        default:
            return nil
        }
    }
}

/// One fact in a run's history. The history is the run: its state is the fold of these, in
/// order, over the workflow definition the run started with.
public struct RunEvent: Sendable, Equatable {
    /// Position in the run's history, from 1.
    public var seq: Int64
    public var timeMs: Int64
    public var kind: Kind

    public init(seq: Int64, timeMs: Int64, kind: Kind) {
        self.seq = seq
        self.timeMs = timeMs
        self.kind = kind
    }

    public enum Kind: Sendable, Equatable {
        case runStarted(input: JSONValue, budgets: RunBudgetLimits)
        /// An attempt begins. For a `map` step, `data` holds the items it fans out over.
        case stepStarted(path: String, attempt: Int, data: JSONValue?)
        case stepCompleted(path: String, output: JSONValue)
        /// An attempt failed; with `retryAtMs` another attempt follows then, without it the
        /// step failed for good.
        case stepFailed(path: String, attempt: Int, error: StepError, retryAtMs: Int64?)
        case stepWaiting(path: String, wait: StepWait)
        /// A checkpoint inside an agent step: a model answer or a tool result, so a resumed
        /// agent continues its conversation instead of repeating calls.
        case agentTurn(path: String, attempt: Int, turn: JSONValue)
        case paused(by: String)
        case resumed(by: String)
        /// An operator sent a failed or stopped run on: the failed steps named (nil: every
        /// failed step) get another attempt; new budgets, if given, replace the run's.
        case retried(by: String, budgets: RunBudgetLimits?, paths: [String]?)
        case cancelled(by: String, reason: String?)
        case runCompleted(output: JSONValue)
        case runFailed(error: StepError)
        /// A budget would have been exceeded: the run stops, its state kept.
        case stoppedByBudget(limit: String, message: String)
    }

    /// The kind's name, as stored.
    public var name: String {
        switch kind {
        case .runStarted: "run_started"
        case .stepStarted: "step_started"
        case .stepCompleted: "step_completed"
        case .stepFailed: "step_failed"
        case .stepWaiting: "step_waiting"
        case .agentTurn: "agent_turn"
        case .paused: "paused"
        case .resumed: "resumed"
        case .retried: "retried"
        case .cancelled: "cancelled"
        case .runCompleted: "run_completed"
        case .runFailed: "run_failed"
        case .stoppedByBudget: "stopped_by_budget"
        }
    }

    /// The step the event is about, if any.
    public var path: String? {
        switch kind {
        case .stepStarted(let path, _, _), .stepCompleted(let path, _), .stepFailed(let path, _, _, _), .stepWaiting(let path, _),
            .agentTurn(let path, _, _):
            path
        default: nil
        }
    }

    /// The event's fields (everything but seq, time and name), as stored.
    public var data: JSONValue {
        switch kind {
        case .runStarted(let input, let budgets):
            return ["input": input, "budgets": budgets.json]
        case .stepStarted(let path, let attempt, let data):
            var object: JSONObject = ["path": .string(path), "attempt": .integer(Int64(attempt))]
            if let data { object["data"] = data }
            return .object(object)
        case .stepCompleted(let path, let output):
            return ["path": .string(path), "output": output]
        case .stepFailed(let path, let attempt, let error, let retryAt):
            var object: JSONObject = ["path": .string(path), "attempt": .integer(Int64(attempt)), "error": error.json]
            if let retryAt { object["retry_at_ms"] = .integer(retryAt) }
            return .object(object)
        case .stepWaiting(let path, let wait):
            return ["path": .string(path), "wait": wait.json]
        case .agentTurn(let path, let attempt, let turn):
            return ["path": .string(path), "attempt": .integer(Int64(attempt)), "turn": turn]
        case .paused(let by), .resumed(let by):
            return ["by": .string(by)]
        case .retried(let by, let budgets, let paths):
            var object: JSONObject = ["by": .string(by)]
            if let budgets { object["budgets"] = budgets.json }
            if let paths { object["paths"] = .array(paths.map(JSONValue.string)) }
            return .object(object)
        case .cancelled(let by, let reason):
            var object: JSONObject = ["by": .string(by)]
            if let reason { object["reason"] = .string(reason) }
            return .object(object)
        case .runCompleted(let output):
            return ["output": output]
        case .runFailed(let error):
            return ["error": error.json]
        case .stoppedByBudget(let limit, let message):
            return ["limit": .string(limit), "message": .string(message)]
        }
    }

    public struct DecodeError: Error, Sendable, CustomStringConvertible {
        public var description: String
    }

    /// An event as stored: its name and fields.
    public init(seq: Int64, timeMs: Int64, name: String, data: JSONValue) throws(DecodeError) {
        func path() throws(DecodeError) -> String {
            guard let path = data["path"]?.stringValue else { throw DecodeError(description: "\(name) event \(seq) has no path") }
            return path
        }
        let attempt = Int(data["attempt"]?.int64Value ?? 1)
        let kind: Kind
        switch name {
        case "run_started": kind = .runStarted(input: data["input"] ?? .null, budgets: RunBudgetLimits(json: data["budgets"]))
        case "step_started": kind = .stepStarted(path: try path(), attempt: attempt, data: data["data"])
        case "step_completed": kind = .stepCompleted(path: try path(), output: data["output"] ?? .null)
        case "step_failed":
            kind = .stepFailed(
                path: try path(), attempt: attempt, error: StepError(json: data["error"]) ?? StepError(code: "unknown", message: ""),
                retryAtMs: data["retry_at_ms"]?.int64Value)
        case "step_waiting":
            guard let wait = StepWait(json: data["wait"]) else { throw DecodeError(description: "step_waiting event \(seq) has no valid wait") }
            kind = .stepWaiting(path: try path(), wait: wait)
        case "agent_turn": kind = .agentTurn(path: try path(), attempt: attempt, turn: data["turn"] ?? .null)
        case "paused": kind = .paused(by: data["by"]?.stringValue ?? "")
        case "resumed": kind = .resumed(by: data["by"]?.stringValue ?? "")
        case "retried":
            kind = .retried(
                by: data["by"]?.stringValue ?? "", budgets: data["budgets"].map { RunBudgetLimits(json: $0) },
                paths: data["paths"]?.arrayValue.map { $0.compactMap(\.stringValue) })
        case "cancelled": kind = .cancelled(by: data["by"]?.stringValue ?? "", reason: data["reason"]?.stringValue)
        case "run_completed": kind = .runCompleted(output: data["output"] ?? .null)
        case "run_failed": kind = .runFailed(error: StepError(json: data["error"]) ?? StepError(code: "unknown", message: ""))
        case "stopped_by_budget": kind = .stoppedByBudget(limit: data["limit"]?.stringValue ?? "", message: data["message"]?.stringValue ?? "")
        default: throw DecodeError(description: "unknown run event '\(name)'")
        }
        self.init(seq: seq, timeMs: timeMs, kind: kind)
    }
}

extension RunBudgetLimits {
    /// Limits from their config keys (unknown keys are ignored).
    public init(json: JSONValue?) {
        self.init(
            maxSteps: json?["max_steps"]?.int64Value.map { Int($0) }, maxModelCalls: json?["max_model_calls"]?.int64Value.map { Int($0) },
            maxToolCalls: json?["max_tool_calls"]?.int64Value.map { Int($0) }, maxTokens: json?["max_tokens"]?.int64Value.map { Int($0) },
            maxCost: json?["max_usd"]?.doubleValue.map { USD(dollars: $0) }, maxWallTimeMs: json?["max_wall_time_ms"]?.int64Value)
    }
}
