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

    func addRoutes(to router: Router<InterlockRequestContext>) {
        let admin = router.group("admin/v1")
            .add(middleware: OperatorAuthenticationMiddleware(operators: operators, audit: governor.audit))
            .group(context: OperatorRequestContext.self)
        admin.get("audit") { request, context in
            try context.require(.viewer)
            return try await audit(request, context: context)
        }
        admin.get("agents") { _, context in
            try context.require(.viewer)
            await record(context, action: "operator.agents.list", target: nil)
            let agents: [JSONValue] = governor.directory.agents.sorted { $0.id < $1.id }.map { agent in
                var limits: JSONObject = [:]
                if let rpm = agent.requestsPerMinute { limits["rpm"] = .integer(Int64(rpm)) }
                if let tpm = agent.tokensPerMinute { limits["tpm"] = .integer(Int64(tpm)) }
                var budgets: JSONObject = [:]
                if let daily = agent.dailyBudget { budgets["daily_usd"] = .number(daily.dollars) }
                if let monthly = agent.monthlyBudget { budgets["monthly_usd"] = .number(monthly.dollars) }
                // Never the key.
                return .object([
                    "id": .string(agent.id), "description": .string(agent.description), "models": .array(agent.models.map(JSONValue.string)),
                    "limits": .object(limits), "budgets": .object(budgets), "priority": .integer(Int64(agent.priority)),
                ])
            }
            return ModelRoutes.json(["object": "list", "data": .array(agents)], requestID: context.requestID)
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
        await record(context, action: "operator.audit.read", target: nil)
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
    private func record(_ context: OperatorRequestContext, action: String, target: String?) async {
        await governor.audit?.recordDurably(AuditRecord(
            timestampMs: 0, node: "", action: action, actorChain: ["operator:\(context.operatorSettings.id)"], target: target, decision: "allow",
            requestID: context.requestID))
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
