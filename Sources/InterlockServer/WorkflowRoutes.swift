import HTTPTypes
import Hummingbird
import InterlockCore
import InterlockRuntime
import InterlockStore
import NIOCore

/// Who calls the workflow API: an agent (its key or access token) or a person (an operator
/// token). Agents reach only what they were granted and the runs they started; operators
/// steer everything their role allows.
enum Principal: Sendable {
    case agent(Caller)
    case `operator`(OperatorSettings)

    /// How the run, the event or the audit names them.
    var name: String {
        switch self {
        case .agent(let caller): "agent:\(caller.agent.id)"
        case .operator(let settings): "operator:\(settings.id)"
        }
    }
}

/// Reads `Authorization: Bearer` (or `x-api-key`): an operator token, else an agent credential.
struct PrincipalAuthenticationMiddleware: RouterMiddleware {
    typealias Context = InterlockRequestContext
    let operators: CredentialDirectory<OperatorSettings>
    let governor: CallGovernor

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        var context = context
        let key = AgentAuthenticationMiddleware.apiKey(authorization: request.headers[.authorization], xAPIKey: request.headers[HTTPField.Name("x-api-key")!])
        if let key, let found = operators.authenticate(key) {
            context.operatorSettings = found
            context.logger[metadataKey: "interlock.operator.id"] = .string(found.id)
        } else {
            var caller = try await governor.authenticate(credential: key, requestID: context.requestID, target: request.uri.path)
            caller.run = try RunReference.fromHeaders(
                runID: request.headers[HTTPField.Name("x-interlock-run-id")!], parentRunID: request.headers[HTTPField.Name("x-interlock-parent-run-id")!])
            context.caller = caller
            context.logger[metadataKey: "interlock.agent.id"] = .string(caller.agent.id)
        }
        return try await next(request, context)
    }
}

struct PrincipalRequestContext: ChildRequestContext {
    var coreContext: CoreRequestContextStorage
    let principal: Principal
    let requestID: String

    init(context: InterlockRequestContext) throws {
        if let settings = context.operatorSettings {
            principal = .operator(settings)
        } else if let caller = context.caller {
            principal = .agent(caller)
        } else {
            throw GatewayError.missingCredential
        }
        coreContext = context.coreContext
        requestID = context.requestID
    }

    /// Operators with at least `role`; agents never.
    func requireOperator(_ role: OperatorRole) throws(GatewayError) -> OperatorSettings {
        switch principal {
        case .agent(let caller):
            throw GatewayError(kind: .permission, code: "operator_required", message: "Agent '\(caller.agent.id)' cannot do this; it takes an operator.")
        case .operator(let settings):
            guard settings.role >= role else {
                throw GatewayError(
                    kind: .permission, code: "operator_role_required",
                    message: "This needs the '\(role.rawValue)' role; operator '\(settings.id)' has '\(settings.role.rawValue)'.")
            }
            return settings
        }
    }

    /// Whether the principal may see `run`: operators all, an agent the runs it started.
    func canSee(_ run: RunRecord) -> Bool {
        switch principal {
        case .operator: true
        case .agent: run.startedBy == principal.name
        }
    }
}

/// `/v1/runs`, `/v1/workflows` and `/v1/events`.
struct WorkflowRoutes {
    let engine: WorkflowEngine
    /// Run inputs and event payloads are data (an invoice, a document): up to `server.max_body_bytes`.
    let maxBodyBytes: Int

    func addRoutes(to group: RouterGroup<PrincipalRequestContext>) {
        addRunRoutes(to: group)
        addWorkflowRoutes(to: group)
        group.post("events") { request, context in
            let body = try await AdminRoutes.jsonBody(request, allowed: ["type", "payload", "dedup_key"], limit: maxBodyBytes)
            guard let type = body["type"]?.stringValue else {
                throw GatewayError.invalidRequest("'type' is required (a string such as 'invoice.received').", code: "invalid_field", param: "type")
            }
            switch context.principal {
            case .agent(let caller):
                guard caller.permits(kind: "event", name: type) else {
                    throw GatewayError(kind: .permission, code: "event_not_allowed", message: "Agent '\(caller.agent.id)' may not publish '\(type)' events.")
                }
            case .operator:
                // Publishing starts runs and wakes waiting steps: not for read-only operators.
                _ = try context.requireOperator(.operator)
            }
            if let key = body["dedup_key"], key.stringValue == nil {
                throw GatewayError.invalidRequest("'dedup_key' must be a string.", code: "invalid_field", param: "dedup_key")
            }
            let (event, created) = try await engine.publish(
                type: type, payload: body["payload"] ?? .object([:]), dedupKey: body["dedup_key"]?.stringValue, source: context.principal.name)
            var view = event.json
            if case .object(var fields) = view {
                fields["duplicate"] = .bool(!created)
                view = .object(fields)
            }
            return ModelRoutes.json(view, status: created ? .accepted : .ok, requestID: context.requestID)
        }
    }

    // MARK: Runs

    private func addRunRoutes(to group: RouterGroup<PrincipalRequestContext>) {
        // {"workflow", "input", "idempotency_key"?, "budgets"?, "wait_ms"?}; `Idempotency-Key` works too.
        group.post("runs") { request, context in
            let body = try await AdminRoutes.jsonBody(request, allowed: ["workflow", "input", "idempotency_key", "budgets", "wait_ms"], limit: maxBodyBytes)
            guard let name = body["workflow"]?.stringValue else {
                throw GatewayError.invalidRequest("'workflow' is required (the workflow's name).", code: "invalid_field", param: "workflow")
            }
            guard let definition = engine.catalog.current(name) else {
                throw GatewayError(kind: .notFound, code: "workflow_not_found", message: "There is no workflow '\(name)'.")
            }
            var userID: String?
            var parentRunID: String?
            switch context.principal {
            case .agent(let caller):
                guard caller.permits(kind: "workflow", name: name) else {
                    throw GatewayError(
                        kind: .permission, code: "workflow_not_allowed", message: "Agent '\(caller.agent.id)' is not granted workflow '\(name)'.")
                }
                userID = caller.user
                parentRunID = caller.run?.id
            case .operator:
                _ = try context.requireOperator(.operator)
            }
            let key = body["idempotency_key"]?.stringValue ?? request.headers[HTTPField.Name("idempotency-key")!]
            if let key, key.isEmpty || key.utf8.count > 256 {
                throw GatewayError.invalidRequest("The idempotency key must be 1 to 256 characters.", code: "invalid_field", param: "idempotency_key")
            }
            let budgets = try Self.budgets(body["budgets"], over: definition.budgets, principal: context.principal)
            let waitMs = try Self.waitMs(body["wait_ms"])
            // A key is the caller's: two callers choosing the same key start two runs.
            let (run, created) = try await engine.start(
                definition, input: body["input"] ?? .object([:]), startedBy: context.principal.name, userID: userID, parentRunID: parentRunID,
                idempotencyKey: key.map { "\(context.principal.name):\($0)" }, budgets: budgets)
            let settled = try await waitForEnd(run, waitMs: waitMs)
            return ModelRoutes.json(try await view(settled), status: created ? .created : .ok, requestID: context.requestID)
        }
        // ?status=&workflow=&limit= (1-1000, default 50)&before=<run id>
        group.get("runs") { request, context in
            let query = request.uri.queryParameters
            var filter = RunFilter()
            if let text = query["status"] {
                guard let status = RunStatus(rawValue: String(text)) else {
                    throw GatewayError.invalidRequest(
                        "'status' must be one of: \(RunStatus.allCases.map(\.rawValue).joined(separator: ", ")).", code: "invalid_field", param: "status")
                }
                filter.status = status
            }
            filter.workflow = query["workflow"].map(String.init)
            filter.beforeID = query["before"].map(String.init)
            filter.limit = try ApprovalRoutes.limit(query["limit"], default: 50)
            if case .agent = context.principal { filter.startedBy = context.principal.name }
            let runs = try await engine.runs(filter)
            return ModelRoutes.json(
                ["object": "list", "data": .array(runs.map { Self.summary($0) }), "has_more": .bool(runs.count == filter.limit)], requestID: context.requestID)
        }
        group.get("runs/:id") { _, context in
            let run = try await visibleRun(context)
            return ModelRoutes.json(try await view(run), requestID: context.requestID)
        }
        group.get("runs/:id/events") { _, context in
            let run = try await visibleRun(context)
            let events = try await engine.history(runID: run.id)
            return ModelRoutes.json(
                [
                    "object": "list",
                    "data": .array(events.map { ["seq": .integer($0.seq), "time_ms": .integer($0.timeMs), "kind": .string($0.name), "data": $0.data] }),
                ], requestID: context.requestID)
        }
        for control in WorkflowEngine.Control.allCases {
            // Body (optional): {"reason"} for cancel; {"budgets"} for retry (an operator may raise them).
            group.post("runs/:id/\(control.rawValue)") { request, context in
                let body = try await AdminRoutes.jsonBody(request, allowed: ["reason", "budgets"])
                let run = try await visibleRun(context)
                // An agent may stop what it started; steering takes a person.
                if case .agent = context.principal, control == .cancel {
                } else {
                    _ = try context.requireOperator(.operator)
                }
                var budgets: RunBudgetLimits?
                if let value = body["budgets"] {
                    guard control == .retry else {
                        throw GatewayError.invalidRequest("'budgets' is only for retry.", code: "invalid_field", param: "budgets")
                    }
                    budgets = try Self.budgets(value, over: run.budgets, principal: context.principal)
                }
                _ = try await engine.control(run.id, control, by: context.principal.name, reason: body["reason"]?.stringValue, budgets: budgets)
                let after = try await engine.run(id: run.id) ?? run
                return ModelRoutes.json(try await view(after), status: .accepted, requestID: context.requestID)
            }
        }
        // {"at_seq"?, "latest_definition"?}
        group.post("runs/:id/fork") { request, context in
            let body = try await AdminRoutes.jsonBody(request, allowed: ["at_seq", "latest_definition"])
            let settings = try context.requireOperator(.operator)
            let run = try await visibleRun(context)
            if let value = body["at_seq"], value.int64Value == nil {
                throw GatewayError.invalidRequest("'at_seq' must be an integer.", code: "invalid_field", param: "at_seq")
            }
            let fork = try await engine.fork(
                run.id, atSeq: body["at_seq"]?.int64Value, by: "operator:\(settings.id)", latestDefinition: body["latest_definition"]?.boolValue ?? false)
            return ModelRoutes.json(try await view(fork), status: .created, requestID: context.requestID)
        }
    }

    private func visibleRun(_ context: PrincipalRequestContext) async throws -> RunRecord {
        let id = try context.parameters.require("id")
        guard let run = try await engine.run(id: id), context.canSee(run) else { throw WorkflowEngine.runNotFoundError(id) }
        return run
    }

    /// Waits up to `waitMs` for the run to finish or wait for something (`--wait`).
    private func waitForEnd(_ run: RunRecord, waitMs: Int) async throws -> RunRecord {
        guard waitMs > 0 else { return run }
        let deadline = ContinuousClock.now + .milliseconds(waitMs)
        var current = run
        while ContinuousClock.now < deadline {
            if current.status.isTerminal || current.status == .waiting || current.status == .paused { return current }
            try await Task.sleep(for: .milliseconds(50))
            current = try await engine.run(id: run.id) ?? current
        }
        return current
    }

    static func waitMs(_ value: JSONValue?) throws(GatewayError) -> Int {
        guard let value else { return 0 }
        guard let ms = value.int64Value, (0...600_000).contains(ms) else {
            throw GatewayError.invalidRequest("'wait_ms' must be an integer from 0 to 600000.", code: "invalid_field", param: "wait_ms")
        }
        return Int(ms)
    }

    /// Budgets given with a start or a retry: an agent may only tighten the workflow's; an
    /// operator may set any.
    static func budgets(_ value: JSONValue?, over base: RunBudgetLimits, principal: Principal) throws(GatewayError) -> RunBudgetLimits? {
        guard let value else { return nil }
        let keys: Set<String> = ["max_steps", "max_model_calls", "max_tool_calls", "max_tokens", "max_usd", "max_wall_time_ms"]
        guard case .object(let fields) = value, fields.keys.allSatisfy(keys.contains),
            fields.allSatisfy({ ($0.value.doubleValue ?? -1) >= 0 })
        else {
            throw GatewayError.invalidRequest(
                "'budgets' must be an object of non-negative numbers: \(keys.sorted().joined(separator: ", ")).", code: "invalid_field", param: "budgets")
        }
        var limits = base
        let given = RunBudgetLimits(json: value)
        if fields["max_steps"] != nil { limits.maxSteps = given.maxSteps }
        if fields["max_model_calls"] != nil { limits.maxModelCalls = given.maxModelCalls }
        if fields["max_tool_calls"] != nil { limits.maxToolCalls = given.maxToolCalls }
        if fields["max_tokens"] != nil { limits.maxTokens = given.maxTokens }
        if fields["max_usd"] != nil { limits.maxCost = given.maxCost }
        if fields["max_wall_time_ms"] != nil { limits.maxWallTimeMs = given.maxWallTimeMs }
        if case .agent = principal {
            func tighter<T: Comparable>(_ new: T?, _ old: T?) -> Bool { old == nil || (new != nil && new! <= old!) }
            guard tighter(limits.maxSteps, base.maxSteps), tighter(limits.maxModelCalls, base.maxModelCalls), tighter(limits.maxToolCalls, base.maxToolCalls),
                tighter(limits.maxTokens, base.maxTokens), tighter(limits.maxCost, base.maxCost), tighter(limits.maxWallTimeMs, base.maxWallTimeMs)
            else {
                throw GatewayError(kind: .permission, code: "budget_raise_not_allowed", message: "An agent may lower a workflow's budgets, not raise them.")
            }
        }
        return limits
    }

    /// A run in a listing.
    static func summary(_ run: RunRecord) -> JSONValue {
        var fields: JSONObject = [
            "id": .string(run.id), "object": "run", "workflow": .string(run.workflow), "status": .string(run.status.rawValue),
            "started_by": .string(run.startedBy), "created_ms": .integer(run.createdMs), "updated_ms": .integer(run.updatedMs),
            "usage": run.usage.json,
        ]
        if let finished = run.finishedMs { fields["finished_ms"] = .integer(finished) }
        if let error = run.error { fields["error"] = error.json }
        if let limit = run.stopLimit { fields["stopped_by"] = .string(limit) }
        return .object(fields)
    }

    /// The whole run: its summary, input and output, budgets against usage, and each step.
    private func view(_ run: RunRecord) async throws -> JSONValue {
        guard case .object(var fields) = Self.summary(run) else { return .null }
        fields["workflow_sha256"] = .string(run.workflowHash)
        fields["agent"] = .string(run.agentID)
        fields["priority"] = .integer(Int64(run.priority))
        fields["input"] = run.input
        fields["output"] = run.output ?? .null
        fields["budgets"] = run.budgets.json
        fields["budget_consumed"] = Self.consumed(run)
        fields["steps_started"] = .integer(Int64(run.stepsStarted))
        fields["last_seq"] = .integer(run.lastSeq)
        if let user = run.userID { fields["user"] = .string(user) }
        if let parent = run.parentRunID { fields["parent_run"] = .string(parent) }
        if let fork = run.forkedFrom { fields["forked_from"] = .string(fork) }
        if let seq = run.forkedAtSeq { fields["forked_at_seq"] = .integer(seq) }
        if let event = run.triggerEventID { fields["trigger_event"] = .string(event) }
        if let supervisor = run.supervisor { fields["supervisor"] = .string(supervisor) }
        let state = RunState(try await engine.history(runID: run.id))
        let definition = try? await engine.catalog.definition(hash: run.workflowHash)
        let steps = state.stepsInOrder.map { path, step -> JSONValue in
            var entry: JSONObject = [
                "path": .string(path), "attempt": .integer(Int64(step.attempt)), "status": .string(Self.phase(step.phase)), "started_ms": .integer(step.startedMs),
            ]
            let id = String((path.split(separator: "/").last ?? Substring(path)).prefix { $0 != "#" })
            entry["step"] = .string(id)
            if let kind = definition?.step(id)?.kind.name { entry["kind"] = .string(kind) }
            if let finished = step.finishedMs { entry["finished_ms"] = .integer(finished) }
            if let output = step.output { entry["output"] = output }
            if let error = step.error { entry["error"] = error.json }
            switch step.phase {
            case .waiting(let wait): entry["waiting_for"] = wait.json
            case .retrying(let at): entry["retry_at_ms"] = .integer(at)
            default: break
            }
            return .object(entry)
        }
        fields["steps"] = .array(steps)
        return .object(fields)
    }

    static func phase(_ phase: RunState.Step.Phase) -> String {
        switch phase {
        case .running: "running"
        case .waiting: "waiting"
        case .retrying: "retrying"
        case .completed: "completed"
        case .failed: "failed"
        }
    }

    /// Each limit the run has, and what it used of it.
    static func consumed(_ run: RunRecord) -> JSONValue {
        var fields = JSONObject()
        let limits = run.budgets
        let usage = run.usage
        func entry(_ limit: JSONValue, _ used: JSONValue) -> JSONValue { ["limit": limit, "used": used] }
        if let value = limits.maxSteps { fields["max_steps"] = entry(.integer(Int64(value)), .integer(Int64(run.stepsStarted))) }
        if let value = limits.maxModelCalls { fields["max_model_calls"] = entry(.integer(Int64(value)), .integer(Int64(usage.modelCalls))) }
        if let value = limits.maxToolCalls { fields["max_tool_calls"] = entry(.integer(Int64(value)), .integer(Int64(usage.toolCalls))) }
        if let value = limits.maxTokens { fields["max_tokens"] = entry(.integer(Int64(value)), .integer(Int64(usage.tokens))) }
        if let value = limits.maxCost { fields["max_usd"] = entry(.number(value.dollars), .number(usage.cost.dollars)) }
        if let value = limits.maxWallTimeMs {
            fields["max_wall_time_ms"] = entry(.integer(value), .integer((run.finishedMs ?? run.updatedMs) - run.createdMs))
        }
        return .object(fields)
    }

    // MARK: Workflows

    private func addWorkflowRoutes(to group: RouterGroup<PrincipalRequestContext>) {
        group.get("workflows") { _, context in
            let visible = engine.catalog.all().filter { definition in
                if case .agent(let caller) = context.principal { return caller.permits(kind: "workflow", name: definition.name) }
                return true
            }
            return ModelRoutes.json(["object": "list", "data": .array(visible.map { Self.workflowView($0, source: false) })], requestID: context.requestID)
        }
        group.get("workflows/:name") { _, context in
            let name = try context.parameters.require("name")
            guard let definition = engine.catalog.current(name) else {
                throw GatewayError(kind: .notFound, code: "workflow_not_found", message: "There is no workflow '\(name)'.")
            }
            if case .agent(let caller) = context.principal, !caller.permits(kind: "workflow", name: name) {
                throw GatewayError(kind: .notFound, code: "workflow_not_found", message: "There is no workflow '\(name)'.")
            }
            return ModelRoutes.json(Self.workflowView(definition, source: true), requestID: context.requestID)
        }
        // The body is the workflow's YAML (or JSON); an admin defines it.
        group.post("workflows") { request, context in
            var request = request
            _ = try context.requireOperator(.admin)
            let body = try await request.collectBody(limit: 1024 * 1024)
            let definition = try await engine.catalog.define(String(decoding: body.readableBytesView, as: UTF8.self), nowMs: engine.wallClockMs())
            return ModelRoutes.json(Self.workflowView(definition, source: false), status: .created, requestID: context.requestID)
        }
    }

    static func workflowView(_ definition: WorkflowDefinition, source: Bool) -> JSONValue {
        var fields: JSONObject = [
            "name": .string(definition.name), "object": "workflow", "description": .string(definition.description), "agent": .string(definition.agentID),
            "sha256": .string(definition.hash), "budgets": definition.budgets.json, "steps": .array(definition.steps.map { .string($0.id) }),
            "triggers": .array(definition.triggers.map { .string($0.eventType) }),
        ]
        if let schema = definition.inputSchema { fields["input_schema"] = schema.document }
        if source { fields["source"] = .string(definition.source) }
        return .object(fields)
    }
}

extension WorkflowEngine {
    static func runNotFoundError(_ id: String) -> GatewayError {
        GatewayError(kind: .notFound, code: "run_not_found", message: "There is no run '\(id)'.")
    }
}
