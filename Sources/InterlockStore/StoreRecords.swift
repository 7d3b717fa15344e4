import InterlockCore

/// A value bound to a statement parameter, the same for SQLite and PostgreSQL: each store
/// turns it into its driver's type. Times, counts and money are 64-bit integers (ms, nanodollars),
/// booleans are 0/1, JSON is text.
enum StoreValue: Sendable {
    case text(String)
    case int(Int64)
    case double(Double)
    case null

    static func text(_ value: String?) -> StoreValue { value.map(StoreValue.text) ?? .null }
    static func int(_ value: Int64?) -> StoreValue { value.map(StoreValue.int) ?? .null }
    static func int(_ value: Int) -> StoreValue { .int(Int64(value)) }
    static func json(_ value: JSONValue?) -> StoreValue { value.map { .text(JSONWriter.string($0)) } ?? .null }
}

/// Takes a record's column values in column order. The ledger and audit records are written
/// through one, so the SQLite writer can bind each value where it is (no array of boxed
/// values per row) and the other stores collect them (`StoreValueCollector`): one mapping.
protocol StoreRowWriter {
    mutating func text(_ value: String?)
    mutating func int(_ value: Int64?)
    mutating func double(_ value: Double)
}

/// Collects a record's values as `StoreValue`s, for the statements built from arrays.
struct StoreValueCollector: StoreRowWriter {
    var values: [StoreValue] = []

    mutating func text(_ value: String?) { values.append(.text(value)) }
    mutating func int(_ value: Int64?) { values.append(.int(value)) }
    mutating func double(_ value: Double) { values.append(.double(value)) }
}

/// A result row as both stores read it, by column name.
protocol StoreRow {
    func text(_ column: String) -> String?
    func int(_ column: String) -> Int64?
    func double(_ column: String) -> Double?
}

extension StoreRow {
    func json(_ column: String) -> JSONValue? { text(column).flatMap { try? JSONParser.parse($0) } }
}

/// The tables' columns and how records map to and from rows: one copy for both stores, so a
/// field added to a record is stored the same way in each.
enum StoreRecords {
    // MARK: Usage ledger

    static let usageColumns = [
        "request_id", "ts_ms", "agent_id", "target_kind", "target", "deployment_id", "provider", "upstream_model", "operation",
        "stream", "input_tokens", "output_tokens", "cached_input_tokens", "cost_nanos", "latency_ms", "attempts", "outcome",
        "status", "error_code", "run_id",
    ]

    static func values(_ record: UsageRecord) -> [StoreValue] {
        var collector = StoreValueCollector()
        write(record, to: &collector)
        return collector.values
    }

    /// The values of `usageColumns`, in order.
    static func write(_ record: UsageRecord, to row: inout some StoreRowWriter) {
        row.text(record.requestID); row.int(record.timestampMs); row.text(record.agentID); row.text(record.targetKind)
        row.text(record.target); row.text(record.deploymentID); row.text(record.provider); row.text(record.upstreamModel)
        row.text(record.operation); row.int(record.stream ? 1 : 0); row.int(Int64(record.usage.inputTokens))
        row.int(Int64(record.usage.outputTokens)); row.int(Int64(record.usage.cachedInputTokens)); row.int(record.cost.nanos)
        row.double(record.latencyMs); row.int(Int64(record.attempts)); row.text(record.outcome.rawValue); row.int(Int64(record.status))
        row.text(record.errorCode); row.text(record.runID)
    }

    static func usage(_ row: some StoreRow) -> UsageRecord {
        func int(_ name: String) -> Int { Int(row.int(name) ?? 0) }
        return UsageRecord(
            requestID: row.text("request_id") ?? "", timestampMs: row.int("ts_ms") ?? 0, agentID: row.text("agent_id") ?? "",
            targetKind: row.text("target_kind") ?? "", target: row.text("target") ?? "", deploymentID: row.text("deployment_id"),
            provider: row.text("provider"), upstreamModel: row.text("upstream_model"), operation: row.text("operation") ?? "", stream: int("stream") != 0,
            usage: TokenUsage(inputTokens: int("input_tokens"), outputTokens: int("output_tokens"), cachedInputTokens: int("cached_input_tokens")),
            cost: USD(nanos: row.int("cost_nanos") ?? 0), latencyMs: row.double("latency_ms") ?? 0, attempts: int("attempts"),
            outcome: UsageRecord.Outcome(rawValue: row.text("outcome") ?? "") ?? .error, status: int("status"), errorCode: row.text("error_code"),
            runID: row.text("run_id"))
    }

    static func spend(_ row: (some StoreRow)?) -> SpendTotals {
        SpendTotals(
            cost: USD(nanos: row?.int("cost") ?? 0), calls: Int(row?.int("calls") ?? 0),
            usage: TokenUsage(
                inputTokens: Int(row?.int("input") ?? 0), outputTokens: Int(row?.int("output") ?? 0), cachedInputTokens: Int(row?.int("cached") ?? 0)))
    }

    static func runSpend(_ row: (some StoreRow)?) -> RunSpend {
        RunSpend(calls: Int(row?.int("calls") ?? 0), tokens: Int(row?.int("tokens") ?? 0), cost: USD(nanos: row?.int("cost") ?? 0))
    }

    // MARK: Audit log

    static let auditColumns = [
        "seq", "ts_ms", "node", "action", "agent_id", "user_id", "actors", "run_id", "parent_run_id", "supervisor", "target", "decision",
        "reason", "args_sha256", "outcome", "status", "cost_nanos", "request_id", "prev_hash", "hash", "result_sha256", "capture",
    ]

    static func values(_ record: AuditRecord) -> [StoreValue] {
        var collector = StoreValueCollector()
        write(record, to: &collector)
        return collector.values
    }

    /// The values of `auditColumns`, in order.
    static func write(_ record: AuditRecord, to row: inout some StoreRowWriter) {
        write(record, at: AuditChain.Place(sequence: record.sequence, previousHash: record.previousHash, hash: record.hash), to: &row)
    }

    /// A record with its place in the chain given apart from it (linked without a copy).
    static func write(_ record: AuditRecord, at place: AuditChain.Place, to row: inout some StoreRowWriter) {
        row.int(place.sequence); row.int(record.timestampMs); row.text(record.node); row.text(record.action)
        row.text(record.agentID); row.text(record.userID); row.text(JSONWriter.string(.array(record.actorChain.map(JSONValue.string))))
        row.text(record.runID); row.text(record.parentRunID); row.text(record.supervisor); row.text(record.target)
        row.text(record.decision); row.text(record.reason); row.text(record.argumentsHash); row.text(record.outcome)
        row.int(record.status.map(Int64.init)); row.int(record.costNanos); row.text(record.requestID); row.text(place.previousHash)
        row.text(place.hash); row.text(record.resultHash); row.text(record.capture)
    }

    static func audit(_ row: some StoreRow) -> AuditRecord {
        let actors: [String] = row.json("actors")?.arrayValue?.compactMap(\.stringValue) ?? []
        return AuditRecord(
            sequence: row.int("seq") ?? 0, timestampMs: row.int("ts_ms") ?? 0, node: row.text("node") ?? "", action: row.text("action") ?? "",
            agentID: row.text("agent_id"), userID: row.text("user_id"), actorChain: actors, runID: row.text("run_id"),
            parentRunID: row.text("parent_run_id"), supervisor: row.text("supervisor"), target: row.text("target"), decision: row.text("decision") ?? "",
            reason: row.text("reason"), argumentsHash: row.text("args_sha256"), outcome: row.text("outcome"), status: row.int("status").map(Int.init),
            costNanos: row.int("cost_nanos"), requestID: row.text("request_id"), resultHash: row.text("result_sha256"), capture: row.text("capture"),
            previousHash: row.text("prev_hash") ?? "", hash: row.text("hash") ?? "")
    }

    /// The audit filter as conditions on the audit table, after `pos > position`; the
    /// placeholder for the n-th bound value is `placeholder(n)` (1-based).
    static func auditConditions(_ filter: AuditFilter, afterPosition position: Int64, placeholder: (Int) -> String) -> (String, [StoreValue]) {
        var values: [StoreValue] = [.int(position)]
        var conditions = ["pos > \(placeholder(1))"]
        for (column, value) in [
            ("agent_id", filter.agentID), ("user_id", filter.userID), ("run_id", filter.runID), ("target", filter.target),
            ("action", filter.action), ("decision", filter.decision),
        ] {
            guard let value else { continue }
            values.append(.text(value))
            conditions.append("\(column) = \(placeholder(values.count))")
        }
        if let from = filter.fromMs {
            values.append(.int(from))
            conditions.append("ts_ms >= \(placeholder(values.count))")
        }
        if let to = filter.toMs {
            values.append(.int(to))
            conditions.append("ts_ms < \(placeholder(values.count))")
        }
        return (conditions.joined(separator: " AND "), values)
    }

    // MARK: Registry, keys, pins

    static func signingKey(_ row: some StoreRow) -> SigningKeyRecord? {
        guard let kid = row.text("kid"), let pem = row.text("private_pem"), let created = row.int("created_ms") else { return nil }
        return SigningKeyRecord(kid: kid, privateKeyPEM: pem, createdMs: created, retiredMs: row.int("retired_ms"))
    }

    static func agent(_ row: some StoreRow) -> Agent? {
        row.json("body").flatMap(Agent.init(stored:))
    }

    static let apiKeyColumns = ["id", "agent_id", "digest", "prefix", "source", "created_ms", "expires_ms", "revoked_ms"]

    static func values(_ key: APIKeyRecord) -> [StoreValue] {
        [
            .text(key.id), .text(key.agentID), .text(key.digest), .text(key.prefix), .text(key.source.rawValue), .int(key.createdMs),
            .int(key.expiresMs), .int(key.revokedMs),
        ]
    }

    static func apiKey(_ row: some StoreRow) -> APIKeyRecord? {
        guard let id = row.text("id"), let agentID = row.text("agent_id"), let digest = row.text("digest"), let created = row.int("created_ms") else {
            return nil
        }
        return APIKeyRecord(
            id: id, agentID: agentID, digest: digest, prefix: row.text("prefix") ?? "", source: Agent.Source(rawValue: row.text("source") ?? "") ?? .api,
            createdMs: created, expiresMs: row.int("expires_ms"), revokedMs: row.int("revoked_ms"))
    }

    static let toolPinColumns = ["name", "approved_hash", "approved_ms", "approved_by", "pending_hash", "pending_ms"]

    static func values(_ pin: ToolPin) -> [StoreValue] {
        [.text(pin.name), .text(pin.approvedHash), .int(pin.approvedMs), .text(pin.approvedBy), .text(pin.pendingHash), .int(pin.pendingMs)]
    }

    static func toolPin(_ row: some StoreRow) -> ToolPin? {
        guard let name = row.text("name"), let hash = row.text("approved_hash"), let approved = row.int("approved_ms") else { return nil }
        return ToolPin(
            name: name, approvedHash: hash, approvedMs: approved, approvedBy: row.text("approved_by") ?? "", pendingHash: row.text("pending_hash"),
            pendingMs: row.int("pending_ms"))
    }

    // MARK: Approvals

    static let approvalColumns = [
        "id", "agent_id", "target_kind", "target", "args_sha256", "arguments", "policy", "policy_version", "reason", "request_id", "user_id",
        "run_id", "created_ms", "expires_ms", "status", "decided_by", "decided_ms", "note", "kind", "step_path", "answer", "answer_schema",
    ]

    static func values(_ record: ApprovalRecord) -> [StoreValue] {
        [
            .text(record.id), .text(record.agentID), .text(record.targetKind), .text(record.target), .text(record.argumentsHash),
            .text(record.arguments), .text(record.policy), .text(record.policyVersion), .text(record.reason), .text(record.requestID),
            .text(record.userID), .text(record.runID), .int(record.createdMs), .int(record.expiresMs), .text(record.status.rawValue),
            .text(record.decidedBy), .int(record.decidedMs), .text(record.note), .text(record.kind.rawValue), .text(record.stepPath),
            .json(record.answer), .json(record.answerSchema),
        ]
    }

    static func approval(_ row: some StoreRow) -> ApprovalRecord? {
        guard let id = row.text("id"), let status = row.text("status").flatMap(ApprovalRecord.Status.init(rawValue:)) else { return nil }
        var record = ApprovalRecord(
            id: id, agentID: row.text("agent_id") ?? "", targetKind: row.text("target_kind") ?? "", target: row.text("target") ?? "",
            argumentsHash: row.text("args_sha256") ?? "", arguments: row.text("arguments") ?? "", policy: row.text("policy") ?? "",
            policyVersion: row.text("policy_version") ?? "", reason: row.text("reason") ?? "", requestID: row.text("request_id") ?? "",
            userID: row.text("user_id"), runID: row.text("run_id"), createdMs: row.int("created_ms") ?? 0, expiresMs: row.int("expires_ms") ?? 0,
            status: status, decidedBy: row.text("decided_by"), decidedMs: row.int("decided_ms"), note: row.text("note"))
        record.kind = row.text("kind").flatMap(ApprovalRecord.Kind.init(rawValue:)) ?? .policy
        record.stepPath = row.text("step_path")
        record.answer = row.json("answer")
        record.answerSchema = row.json("answer_schema")
        return record
    }

    /// Approvals by status as of `nowMs` and agent, as conditions (`placeholder(n)` as above).
    static func approvalConditions(
        status: ApprovalRecord.Status?, agentID: String?, nowMs: Int64, placeholder: (Int) -> String
    ) -> (String, [StoreValue]) {
        var conditions: [String] = []
        var values: [StoreValue] = []
        switch status {
        case .pending?, .approved?:
            values += [.text(status!.rawValue), .int(nowMs)]
            conditions.append("status = \(placeholder(values.count - 1)) AND expires_ms > \(placeholder(values.count))")
        case .expired?:
            values.append(.int(nowMs))
            conditions.append("status IN ('pending', 'approved') AND expires_ms <= \(placeholder(values.count))")
        case let other?:
            values.append(.text(other.rawValue))
            conditions.append("status = \(placeholder(values.count))")
        case nil:
            break
        }
        if let agentID {
            values.append(.text(agentID))
            conditions.append("agent_id = \(placeholder(values.count))")
        }
        return (conditions.isEmpty ? "" : "WHERE " + conditions.joined(separator: " AND "), values)
    }

    // MARK: Workflows

    static func workflowVersion(_ row: some StoreRow) -> WorkflowVersionRecord? {
        guard let hash = row.text("hash"), let source = row.text("source") else { return nil }
        return WorkflowVersionRecord(
            hash: hash, name: row.text("name") ?? "", source: source, origin: row.text("origin") ?? "", createdMs: row.int("created_ms") ?? 0)
    }

    static let runColumns = [
        "id", "workflow", "workflow_hash", "status", "priority", "agent_id", "started_by", "user_id", "parent_run_id", "forked_from", "forked_at_seq",
        "idempotency_key", "trigger_event_id", "input", "output", "error", "stop_limit", "budgets", "usage", "steps_started", "supervisor", "created_ms",
        "updated_ms", "finished_ms", "last_seq",
    ]

    static func values(_ run: RunRecord) -> [StoreValue] {
        [
            .text(run.id), .text(run.workflow), .text(run.workflowHash), .text(run.status.rawValue), .int(run.priority), .text(run.agentID),
            .text(run.startedBy), .text(run.userID), .text(run.parentRunID), .text(run.forkedFrom), .int(run.forkedAtSeq), .text(run.idempotencyKey),
            .text(run.triggerEventID), .json(run.input), .json(run.output), .json(run.error?.json), .text(run.stopLimit), .json(run.budgets.json),
            .json(usageJSON(run.usage)), .int(run.stepsStarted), .text(run.supervisor), .int(run.createdMs), .int(run.updatedMs), .int(run.finishedMs),
            .int(run.lastSeq),
        ]
    }

    /// Usage with the cost in exact nanodollars (the API shows dollars).
    static func usageJSON(_ usage: RunUsage) -> JSONValue {
        [
            "model_calls": .integer(Int64(usage.modelCalls)), "tool_calls": .integer(Int64(usage.toolCalls)), "tokens": .integer(Int64(usage.tokens)),
            "cost_nanos": .integer(usage.cost.nanos),
        ]
    }

    static func runUsage(_ json: JSONValue?) -> RunUsage {
        RunUsage(
            modelCalls: Int(json?["model_calls"]?.int64Value ?? 0), toolCalls: Int(json?["tool_calls"]?.int64Value ?? 0),
            tokens: Int(json?["tokens"]?.int64Value ?? 0), cost: USD(nanos: json?["cost_nanos"]?.int64Value ?? 0))
    }

    static func run(_ row: some StoreRow) -> RunRecord? {
        guard let id = row.text("id"), let status = row.text("status").flatMap(RunStatus.init(rawValue:)) else { return nil }
        var run = RunRecord(
            id: id, workflow: row.text("workflow") ?? "", workflowHash: row.text("workflow_hash") ?? "", status: status,
            priority: Int(row.int("priority") ?? 0), agentID: row.text("agent_id") ?? "", startedBy: row.text("started_by") ?? "",
            userID: row.text("user_id"), parentRunID: row.text("parent_run_id"), forkedFrom: row.text("forked_from"),
            forkedAtSeq: row.int("forked_at_seq"), idempotencyKey: row.text("idempotency_key"), triggerEventID: row.text("trigger_event_id"),
            input: row.json("input") ?? .null, budgets: RunBudgetLimits(json: row.json("budgets")), createdMs: row.int("created_ms") ?? 0)
        run.output = row.json("output")
        run.error = StepError(json: row.json("error"))
        run.stopLimit = row.text("stop_limit")
        run.usage = runUsage(row.json("usage"))
        run.stepsStarted = Int(row.int("steps_started") ?? 0)
        run.supervisor = row.text("supervisor")
        run.updatedMs = row.int("updated_ms") ?? run.createdMs
        run.finishedMs = row.int("finished_ms")
        run.lastSeq = row.int("last_seq") ?? 0
        return run
    }

    /// What a checkpoint writes into the run's summary row, in `runUpdateColumns` order;
    /// `last_seq` is null when the checkpoint adds no event (the row keeps its own).
    static let runUpdateColumns = [
        "id", "status", "output", "error", "stop_limit", "budgets", "usage", "steps_started", "supervisor", "updated_ms", "finished_ms", "last_seq",
    ]

    static func updateValues(runID: String, _ update: RunUpdate, lastSeq: Int64?) -> [StoreValue] {
        [
            .text(runID), .text(update.status.rawValue), .json(update.output), .json(update.error?.json), .text(update.stopLimit),
            .json(update.budgets.json), .json(usageJSON(update.usage)), .int(update.stepsStarted), .text(update.supervisor), .int(update.updatedMs),
            .int(update.finishedMs), .int(lastSeq),
        ]
    }

    static func values(runID: String, _ event: RunEvent) -> [StoreValue] {
        [.text(runID), .int(event.seq), .int(event.timeMs), .text(event.name), .text(event.path), .json(event.data)]
    }

    static func runEvent(_ row: some StoreRow) throws -> RunEvent {
        try RunEvent(seq: row.int("seq") ?? 0, timeMs: row.int("ts_ms") ?? 0, name: row.text("kind") ?? "", data: row.json("data") ?? .null)
    }

    /// How a batch of events changes the index of steps waiting for event types: for each
    /// step, only its last state in the batch (a step that began waiting and was answered in
    /// the same batch is settled, and a wait recorded twice is one row).
    struct WaitChanges {
        var waiting: [(runID: String, path: String, type: String)] = []
        var settled: [(runID: String, path: String)] = []
        var finished: [String] = []

        private enum State {
            case waiting(type: String)
            case settled
        }

        init(_ histories: [(runID: String, events: [RunEvent])]) {
            for (runID, events) in histories {
                var latest: [String: State] = [:]
                var order: [String] = []
                func record(_ path: String, _ state: State) {
                    if latest.updateValue(state, forKey: path) == nil { order.append(path) }
                }
                for event in events {
                    switch event.kind {
                    case .stepWaiting(let path, .event(let type, _, _)): record(path, .waiting(type: type))
                    case .stepCompleted(let path, _), .stepFailed(let path, _, _, _): record(path, .settled)
                    case .cancelled, .runCompleted, .runFailed, .stoppedByBudget: finished.append(runID)
                    default: break
                    }
                }
                for path in order {
                    switch latest[path] {
                    case .waiting(let type)?: waiting.append((runID, path, type))
                    case .settled?: settled.append((runID, path))
                    case nil: break
                    }
                }
            }
        }
    }

    static func signal(_ row: some StoreRow) -> RunSignal {
        RunSignal(
            id: row.int("id") ?? 0, runID: row.text("run_id") ?? "", kind: row.text("kind") ?? "", by: row.text("by") ?? "",
            data: row.json("data") ?? .null, createdMs: row.int("created_ms") ?? 0)
    }

    static let eventColumns = "seq, id, type, payload, dedup_key, source, ts_ms"

    static func event(_ row: some StoreRow) -> EventRecord {
        EventRecord(
            seq: row.int("seq") ?? 0, id: row.text("id") ?? "", type: row.text("type") ?? "", payload: row.json("payload") ?? .null,
            dedupKey: row.text("dedup_key"), source: row.text("source") ?? "", timeMs: row.int("ts_ms") ?? 0)
    }
}
