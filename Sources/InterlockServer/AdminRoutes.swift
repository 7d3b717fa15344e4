import HTTPTypes
import Hummingbird
import InterlockCore
import InterlockRuntime
import InterlockStore
import NIOCore

/// The operator API under `/admin/v1`. Only operator tokens open it (agents' keys do not),
/// each route names the least role it needs, and every operator action is audited before it
/// is answered.
struct AdminRoutes {
    let operators: CredentialDirectory<OperatorSettings>
    let store: any InterlockStore
    let governor: CallGovernor
    /// Grants naming a model alias that does not exist are refused (a typo would be a silent deny).
    let modelAliases: Set<String>
    /// The tool registry, when tools are configured.
    let tools: ToolGateway?
    /// This node's id and when a silent node counts as lost (`/admin/v1/nodes`).
    let nodeID: String
    let cluster: ClusterSettings

    func addRoutes(to router: Router<InterlockRequestContext>) {
        let admin = router.group("admin/v1")
            .add(middleware: OperatorAuthenticationMiddleware(operators: operators, audit: governor.audit))
            .group(context: OperatorRequestContext.self)
        admin.get("audit") { request, context in
            try await perform(context, .viewer, "operator.audit.read", target: nil) { try await audit(request, context: context) }
        }
        addAgentRoutes(to: admin)
        if let members = store as? any ClusterStore {
            // The nodes sharing this store: up (heartbeats arrive), lost (silent past
            // cluster.node_timeout_ms) or stopped (shut down cleanly).
            admin.get("nodes") { _, context in
                try await perform(context, .viewer, "operator.nodes.list", target: nil) {
                    let nodes: [NodeRecord]
                    do {
                        nodes = try await members.nodes()
                    } catch {
                        throw GatewayError(kind: .internal, code: "store_unavailable", message: "Interlock could not read its store; try again.", status: 503)
                    }
                    let now = governor.nowMs()
                    return ModelRoutes.json(
                        [
                            "object": "list", "node": .string(nodeID),
                            "data": .array(nodes.map { $0.json(nowMs: now, timeoutMs: Int64(cluster.nodeTimeoutMs)) }),
                        ], requestID: context.requestID)
                }
            }
        }
        if let policy = governor.policy { addApprovalRoutes(to: admin, policy: policy) }
        if let tools {
            admin.get("tools") { _, context in
                try await perform(context, .viewer, "operator.tools.list", target: nil) {
                    ModelRoutes.json(["object": "list", "data": .array(tools.registry()), "upstreams": .array(tools.upstreams())], requestID: context.requestID)
                }
            }
            // Approving a changed definition: an operator read what agents will now be told.
            // Optional body {"definition_sha256": "..."}: approve only the definition that was reviewed.
            admin.post("tools/:name/approve") { request, context in
                var request = request
                let name = try context.parameters.require("name")
                let body = try await request.collectBody(limit: 64 * 1024)
                var expected: String?
                if body.readableBytes > 0 {
                    guard case .object(let fields)? = try? JSONParser.parse(Array(body.readableBytesView)),
                        fields.keys.allSatisfy({ $0 == "definition_sha256" }), fields["definition_sha256"].map({ $0.stringValue != nil }) ?? true
                    else {
                        throw GatewayError.invalidRequest(
                            "The body, if any, must be {\"definition_sha256\": \"<hash>\"}.", code: "invalid_field", param: "definition_sha256")
                    }
                    expected = fields["definition_sha256"]?.stringValue
                }
                return try await perform(context, .admin, "operator.tool.approve", target: name) {
                    ModelRoutes.json(
                        try await tools.approve(name, by: "operator:\(context.operatorSettings.id)", expectedHash: expected), requestID: context.requestID)
                }
            }
        }
        if let tokens = governor.tokens {
            admin.get("signing-keys") { _, context in
                try await perform(context, .viewer, "operator.signing_keys.list", target: nil) {
                    ModelRoutes.json(["object": "list", "data": .array(tokens.signingKeys(nowMs: governor.nowMs()))], requestID: context.requestID)
                }
            }
            admin.post("signing-keys/rotate") { _, context in
                try await perform(context, .admin, "operator.signing_key.rotate", target: nil) {
                    let kid = try await tokens.rotateSigningKey(nowMs: governor.nowMs())
                    return ModelRoutes.json(
                        ["signing_kid": .string(kid), "data": .array(tokens.signingKeys(nowMs: governor.nowMs()))], status: .created, requestID: context.requestID)
                }
            }
        }
    }

    // MARK: Approvals

    private func addApprovalRoutes(to admin: RouterGroup<OperatorRequestContext>, policy: PolicyStage) {
        // ?status=pending (default) | approved | rejected | consumed | expired | all; ?agent=; ?limit= (1-1000, default 100).
        admin.get("approvals") { request, context in
            try await perform(context, .viewer, "operator.approvals.list", target: nil) {
                let query = request.uri.queryParameters
                let status = try ApprovalRoutes.status(query["status"].map(String.init))
                let limit = try ApprovalRoutes.limit(query["limit"], default: 100)
                let list = try await policy.approvals(status: status, agentID: query["agent"].map(String.init), limit: limit)
                let now = policy.nowMs()
                return ModelRoutes.json(["object": "list", "data": .array(list.map { ApprovalRoutes.operatorView($0, nowMs: now) })], requestID: context.requestID)
            }
        }
        admin.get("approvals/:id") { _, context in
            let id = try context.parameters.require("id")
            return try await perform(context, .viewer, "operator.approval.read", target: id) {
                guard let approval = try await policy.approval(id: id) else { throw ApprovalRoutes.notFound(id) }
                return ModelRoutes.json(ApprovalRoutes.operatorView(approval, nowMs: policy.nowMs()), requestID: context.requestID)
            }
        }
        for (verb, approve) in [("approve", true), ("reject", false)] {
            // Body (optional): {"note": "why"}. 409 when the approval was already decided or expired.
            admin.post("approvals/:id/\(verb)") { request, context in
                let id = try context.parameters.require("id")
                let parsed: Result<JSONValue, any Error>
                do { parsed = .success(try await Self.jsonBody(request, allowed: ["note"])) } catch { parsed = .failure(error) }
                return try await perform(context, .operator, "operator.approval.\(verb)", target: id) {
                    let body = try parsed.get()
                    if let note = body["note"], note.stringValue == nil {
                        throw GatewayError.invalidRequest("'note' must be a string.", code: "invalid_field", param: "note")
                    }
                    guard let decided = try await policy.decide(
                        approvalID: id, approve: approve, by: "operator:\(context.operatorSettings.id)", note: body["note"]?.stringValue)
                    else { throw ApprovalRoutes.notFound(id) }
                    let now = policy.nowMs()
                    guard decided.changed else {
                        throw GatewayError(
                            kind: .conflict, code: "approval_not_pending", message: "Approval '\(id)' is \(decided.record.status(at: now).rawValue), not pending.")
                    }
                    return ModelRoutes.json(ApprovalRoutes.operatorView(decided.record, nowMs: now), requestID: context.requestID)
                }
            }
        }
    }

    // MARK: Agents and their keys

    private func addAgentRoutes(to admin: RouterGroup<OperatorRequestContext>) {
        let registry = governor.registry
        admin.get("agents") { _, context in
            try await perform(context, .viewer, "operator.agents.list", target: nil) {
                ModelRoutes.json(["object": "list", "data": .array(registry.agents.map(\.json))], requestID: context.requestID)
            }
        }
        admin.post("agents") { request, context in
            // Read once (a body can be read only once); a bad body is refused inside `perform`, on record.
            let parsed: Result<JSONValue, any Error>
            do { parsed = .success(try await Self.jsonBody(request)) } catch { parsed = .failure(error) }
            return try await perform(context, .admin, "operator.agent.create", target: (try? parsed.get())?["id"]?.stringValue) {
                let body = try parsed.get()
                guard body["id"] != nil else { throw GatewayError.invalidRequest("'id' is required.", code: "invalid_field", param: "id") }
                var agent = Agent(id: "")
                try agent.apply(body, creating: true)
                try checkAliases(body)
                let created = try await registry.create(agent, nowMs: governor.nowMs())
                return ModelRoutes.json(created.json, status: .created, requestID: context.requestID)
            }
        }
        admin.get("agents/:agent") { _, context in
            let id = try context.parameters.require("agent")
            return try await perform(context, .viewer, "operator.agent.read", target: id) {
                guard let agent = registry.entry(id: id)?.agent else { throw Self.noAgent(id) }
                return ModelRoutes.json(agent.json, requestID: context.requestID)
            }
        }
        admin.patch("agents/:agent") { request, context in
            let id = try context.parameters.require("agent")
            return try await perform(context, .admin, "operator.agent.update", target: id) {
                let body = try await Self.jsonBody(request)
                try checkAliases(body)
                let updated = try await registry.update(id: id, patch: body, nowMs: governor.nowMs())
                return ModelRoutes.json(updated.json, requestID: context.requestID)
            }
        }
        // Disabling is an emergency stop: operators may do it; enabling again takes an admin.
        admin.post("agents/:agent/disable") { _, context in
            let id = try context.parameters.require("agent")
            return try await perform(context, .operator, "operator.agent.disable", target: id) {
                let agent = try await registry.setDisabled(id: id, true, reason: "operator:\(context.operatorSettings.id)", nowMs: governor.nowMs())
                return ModelRoutes.json(agent.json, requestID: context.requestID)
            }
        }
        admin.post("agents/:agent/enable") { _, context in
            let id = try context.parameters.require("agent")
            return try await perform(context, .admin, "operator.agent.enable", target: id) {
                let agent = try await registry.setDisabled(id: id, false, reason: nil, nowMs: governor.nowMs())
                return ModelRoutes.json(agent.json, requestID: context.requestID)
            }
        }
        admin.get("agents/:agent/keys") { _, context in
            let id = try context.parameters.require("agent")
            return try await perform(context, .viewer, "operator.keys.list", target: id) {
                guard registry.entry(id: id) != nil else { throw Self.noAgent(id) }
                let now = governor.nowMs()
                return ModelRoutes.json(["object": "list", "data": .array(registry.keys(agentID: id).map { $0.json(nowMs: now) })], requestID: context.requestID)
            }
        }
        admin.post("agents/:agent/keys") { request, context in
            let id = try context.parameters.require("agent")
            return try await perform(context, .admin, "operator.key.issue", target: id) {
                let body = try await Self.jsonBody(request, allowed: ["ttl_s"])
                let issued = try await registry.issueKey(agentID: id, ttlSeconds: try Self.seconds(body, "ttl_s"), nowMs: governor.nowMs())
                return ModelRoutes.json(Self.issuedKey(issued.key, issued.record, nowMs: governor.nowMs()), status: .created, requestID: context.requestID)
            }
        }
        admin.post("agents/:agent/keys/:key/rotate") { request, context in
            let id = try context.parameters.require("agent")
            let keyID = try context.parameters.require("key")
            return try await perform(context, .admin, "operator.key.rotate", target: "\(id)/\(keyID)") {
                let body = try await Self.jsonBody(request, allowed: ["ttl_s", "overlap_s"])
                let rotated = try await registry.rotateKey(
                    agentID: id, keyID: keyID, overlapSeconds: try Self.seconds(body, "overlap_s"), ttlSeconds: try Self.seconds(body, "ttl_s"),
                    nowMs: governor.nowMs())
                let now = governor.nowMs()
                var answer = Self.issuedKey(rotated.key, rotated.record, nowMs: now)
                if case .object(var fields) = answer {
                    fields["previous"] = rotated.previous.json(nowMs: now)
                    answer = .object(fields)
                }
                return ModelRoutes.json(answer, status: .created, requestID: context.requestID)
            }
        }
        admin.post("agents/:agent/keys/:key/revoke") { _, context in
            let id = try context.parameters.require("agent")
            let keyID = try context.parameters.require("key")
            return try await perform(context, .operator, "operator.key.revoke", target: "\(id)/\(keyID)") {
                let key = try await registry.revokeKey(agentID: id, keyID: keyID, nowMs: governor.nowMs())
                return ModelRoutes.json(key.json(nowMs: governor.nowMs()), requestID: context.requestID)
            }
        }
    }

    private func checkAliases(_ body: JSONValue) throws(GatewayError) {
        for name in body["grants"]?["models"]?.arrayValue?.compactMap(\.stringValue) ?? [] where name != "*" && !modelAliases.contains(name) {
            throw GatewayError.invalidRequest("'grants.models' names the unknown model alias '\(name)'.", code: "invalid_field", param: "grants.models")
        }
    }

    /// A new key as the operator sees it, the only time: the key and its record.
    private static func issuedKey(_ key: String, _ record: APIKeyRecord, nowMs: Int64) -> JSONValue {
        guard case .object(var fields) = record.json(nowMs: nowMs) else { return .null }
        fields["key"] = .string(key)
        return .object(fields)
    }

    private static func noAgent(_ id: String) -> GatewayError {
        GatewayError(kind: .notFound, code: "agent_not_found", message: "There is no agent '\(id)'.")
    }

    /// The request's JSON object (an empty body is `{}`); 400 for anything else.
    static func jsonBody(_ request: Request, allowed: Set<String>? = nil, limit: Int = 64 * 1024) async throws -> JSONValue {
        var request = request
        let buffer = try await request.collectBody(limit: limit)
        guard buffer.readableBytes > 0 else { return .object([:]) }
        guard case .object(let fields)? = try? JSONParser.parse(Array(buffer.readableBytesView)) else {
            throw GatewayError.invalidRequest("The body must be a JSON object.", code: "invalid_json")
        }
        if let allowed, let unknown = fields.keys.first(where: { !allowed.contains($0) }) {
            throw GatewayError.invalidRequest("Unknown field '\(unknown)'.", code: "invalid_field", param: unknown)
        }
        return .object(fields)
    }

    private static func seconds(_ body: JSONValue, _ key: String) throws(GatewayError) -> Int? {
        guard let value = body[key] else { return nil }
        guard let seconds = value.int64Value, seconds >= 0, seconds <= 10 * 365 * 86_400 else {
            throw GatewayError.invalidRequest("'\(key)' must be a number of seconds from 0 to 315360000.", code: "invalid_field", param: key)
        }
        return Int(seconds)
    }

    /// Every operator request: the role check, the work, and its audit record — what was
    /// done, or why it was refused (role, validation, conflict, failure) — stored before the
    /// answer goes out.
    private func perform(
        _ context: OperatorRequestContext, _ role: OperatorRole, _ action: String, target: String?, _ body: () async throws -> Response
    ) async throws -> Response {
        do {
            try context.require(role)
            let response = try await body()
            await record(context, action: action, target: target)
            return response
        } catch let error as GatewayError {
            await record(context, action: action, target: target, refusal: error)
            throw error
        } catch {
            await record(
                context, action: action, target: target,
                refusal: GatewayError(kind: .internal, code: "internal_error", message: "Interlock failed to process the request."))
            throw error
        }
    }

    private func audit(_ request: Request, context: OperatorRequestContext) async throws -> Response {
        let query = request.uri.queryParameters
        var filter = AuditFilter()
        filter.agentID = query["agent"].map(String.init)
        filter.userID = query["user"].map(String.init)
        filter.runID = query["run"].map(String.init)
        filter.target = query["target"].map(String.init)
        filter.action = query["action"].map(String.init)
        filter.decision = query["decision"].map(String.init)
        func integer(_ name: String, minimum: Int64, maximum: Int64) throws(GatewayError) -> Int64? {
            guard let text = query[Substring(name)] else { return nil }
            guard let value = Int64(text), value >= minimum, value <= maximum else {
                throw GatewayError.invalidRequest("'\(name)' must be an integer from \(minimum) to \(maximum).", code: "invalid_parameter", param: name)
            }
            return value
        }
        if let decision = filter.decision, decision != "allow", decision != "deny" {
            throw GatewayError.invalidRequest("'decision' must be 'allow' or 'deny'.", code: "invalid_parameter", param: "decision")
        }
        filter.fromMs = try integer("from_ms", minimum: 0, maximum: .max)
        filter.toMs = try integer("to_ms", minimum: 0, maximum: .max)
        let limit = try integer("limit", minimum: 1, maximum: 1_000) ?? 100
        let after = try integer("after", minimum: 0, maximum: .max) ?? 0
        let page = try await store.auditRecords(matching: filter, afterPosition: after, limit: Int(limit))
        var body: JSONObject = [
            "object": "list", "data": .array(page.records.map { $0.json(includingHash: true) }),
            // The cursor for the next page; null when this one was not full.
            "next_after": page.records.count == Int(limit) ? .integer(page.lastPosition) : .null,
        ]
        if let head = governor.audit?.head {
            body["head"] = ["seq": .integer(head.sequence), "hash": .string(head.hash)]
        }
        return ModelRoutes.json(.object(body), requestID: context.requestID)
    }

    /// Operator actions are stored before they are answered.
    private func record(_ context: OperatorRequestContext, action: String, target: String?, refusal: GatewayError? = nil) async {
        await governor.audit?.recordDurably(AuditRecord(
            timestampMs: 0, node: "", action: action, actorChain: ["operator:\(context.operatorSettings.id)"], target: target,
            decision: refusal == nil ? "allow" : "deny", reason: refusal?.code, outcome: refusal == nil ? "success" : "rejected",
            status: refusal?.status, requestID: context.requestID))
    }
}

/// An admin route's context: the operator is known.
struct OperatorRequestContext: ChildRequestContext {
    var coreContext: CoreRequestContextStorage
    let operatorSettings: OperatorSettings
    let requestID: String

    init(context: InterlockRequestContext) throws {
        guard let found = context.operatorSettings else { throw GatewayError.missingCredential }
        self.coreContext = context.coreContext
        self.operatorSettings = found
        self.requestID = context.requestID
    }

    /// 403 unless the operator's role is at least `role`.
    func require(_ role: OperatorRole) throws(GatewayError) {
        guard operatorSettings.role >= role else {
            throw GatewayError(
                kind: .permission, code: "operator_role_required",
                message: "This needs the '\(role.rawValue)' role; operator '\(operatorSettings.id)' has '\(operatorSettings.role.rawValue)'.")
        }
    }
}

/// Reads `Authorization: Bearer <operator token>`; agents' keys are not operator tokens.
struct OperatorAuthenticationMiddleware: RouterMiddleware {
    typealias Context = InterlockRequestContext
    let operators: CredentialDirectory<OperatorSettings>
    let audit: AuditLog?

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        var context = context
        let token = AgentAuthenticationMiddleware.apiKey(authorization: request.headers[.authorization], xAPIKey: nil)
        guard let token, !token.isEmpty else {
            await refuse(GatewayError.missingCredential, request: request, context: context)
            throw GatewayError.missingCredential
        }
        guard let found = operators.authenticate(token) else {
            let error = GatewayError(kind: .authentication, code: "invalid_operator_token", message: "The operator token is not valid.")
            await refuse(error, request: request, context: context)
            throw error
        }
        context.operatorSettings = found
        context.logger[metadataKey: "interlock.operator.id"] = .string(found.id)
        return try await next(request, context)
    }

    private func refuse(_ error: GatewayError, request: Request, context: Context) async {
        await audit?.recordDurably(AuditRecord(
            timestampMs: 0, node: "", action: "operator.auth.failed", target: request.uri.path, decision: "deny", reason: error.code,
            status: error.status, requestID: context.requestID))
    }
}
