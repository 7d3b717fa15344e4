import HTTPTypes
import Hummingbird
import InterlockCore
import InterlockRuntime

/// Approvals: operators list and decide them under `/admin/v1/approvals` and `/v1/approvals`;
/// an agent polls its own at `/v1/approvals/{id}`.
struct ApprovalRoutes {
    let policy: PolicyStage

    /// `GET /v1/approvals`, `GET /v1/approvals/{id}` (an agent sees its own, an operator all)
    /// and `POST /v1/approvals/{id}` (an operator decides; an input request takes the answer).
    func addRoutes(to group: RouterGroup<PrincipalRequestContext>) {
        // ?status=pending (default) | approved | rejected | consumed | expired | all; ?agent=; ?run=; ?limit=
        group.get("approvals") { request, context in
            let query = request.uri.queryParameters
            let status = try Self.status(query["status"].map(String.init))
            let limit = try Self.limit(query["limit"], default: 100)
            // An agent sees its own; an operator may narrow to one agent.
            var agentID = query["agent"].map(String.init)
            if case .agent(let caller) = context.principal { agentID = caller.agent.id }
            // A run's requests are picked out of the newest 1000 (a run asks a handful).
            let run = query["run"].map(String.init)
            var list = try await policy.approvals(status: status, agentID: agentID, limit: run == nil ? limit : 1000)
            // An agent sees the holds on its own calls; a workflow step's request is for people
            // (its message is made of the run's data, which the agent may not be allowed to see).
            if case .agent = context.principal { list = list.filter { $0.kind == .policy } }
            if let run { list = Array(list.filter { $0.runID == run }.prefix(limit)) }
            let now = policy.nowMs()
            let views = list.map { approval -> JSONValue in
                if case .agent = context.principal { return Self.agentView(approval, nowMs: now) }
                return Self.operatorView(approval, nowMs: now)
            }
            return ModelRoutes.json(["object": "list", "data": .array(views)], requestID: context.requestID)
        }
        group.get("approvals/:id") { _, context in
            let id = try context.parameters.require("id")
            guard let approval = try await policy.approval(id: id) else { throw Self.notFound(id) }
            switch context.principal {
            case .agent(let caller):
                guard approval.agentID == caller.agent.id, approval.kind == .policy else { throw Self.notFound(id) }
                return ModelRoutes.json(Self.agentView(approval, nowMs: policy.nowMs()), requestID: context.requestID)
            case .operator:
                return ModelRoutes.json(Self.operatorView(approval, nowMs: policy.nowMs()), requestID: context.requestID)
            }
        }
        // {"decision": "approve" | "reject", "comment"?, "answer"? (input requests)}
        group.post("approvals/:id") { request, context in
            let id = try context.parameters.require("id")
            let body = try await AdminRoutes.jsonBody(request, allowed: ["decision", "comment", "answer"])
            let settings = try context.requireOperator(.operator)
            guard let decision = body["decision"]?.stringValue, decision == "approve" || decision == "reject" else {
                throw GatewayError.invalidRequest("'decision' must be 'approve' or 'reject'.", code: "invalid_field", param: "decision")
            }
            if let comment = body["comment"], comment.stringValue == nil {
                throw GatewayError.invalidRequest("'comment' must be a string.", code: "invalid_field", param: "comment")
            }
            guard let decided = try await policy.decide(
                approvalID: id, approve: decision == "approve", by: "operator:\(settings.id)", note: body["comment"]?.stringValue, answer: body["answer"])
            else { throw Self.notFound(id) }
            let now = policy.nowMs()
            guard decided.changed else {
                throw GatewayError(kind: .conflict, code: "approval_not_pending", message: "Approval '\(id)' is \(decided.record.status(at: now).rawValue), not pending.")
            }
            return ModelRoutes.json(Self.operatorView(decided.record, nowMs: now), requestID: context.requestID)
        }
    }

    /// What an agent sees of its approval: not the arguments (it sent them) nor who decided.
    static func agentView(_ approval: ApprovalRecord, nowMs: Int64) -> JSONValue {
        var fields: JSONObject = [
            "id": .string(approval.id), "status": .string(approval.status(at: nowMs).rawValue), "target": .string(approval.target),
            "policy": .string(approval.policy), "reason": .string(approval.reason), "expires_ms": .integer(approval.expiresMs),
        ]
        if let note = approval.note { fields["note"] = .string(note) }
        return .object(fields)
    }

    static func notFound(_ id: String) -> GatewayError {
        GatewayError(kind: .notFound, code: "approval_not_found", message: "There is no approval '\(id)'.")
    }

    /// The operator view: every field, arguments included (the approver must see what is asked).
    static func operatorView(_ approval: ApprovalRecord, nowMs: Int64) -> JSONValue {
        guard case .object(var fields) = approval.json(at: nowMs) else { return approval.json(at: nowMs) }
        fields["arguments"] = (try? JSONParser.parse(Array(approval.arguments.utf8))) ?? .string(approval.arguments)
        return .object(fields)
    }

    /// A listing's `?limit=`: 1 to 1000, `fallback` when absent.
    static func limit(_ text: Substring?, default fallback: Int) throws(GatewayError) -> Int {
        guard let text else { return fallback }
        guard let value = Int(text), (1...1000).contains(value) else {
            throw GatewayError.invalidRequest("'limit' must be a number from 1 to 1000.", code: "invalid_field", param: "limit")
        }
        return value
    }

    /// The status filter of `GET /admin/v1/approvals?status=`.
    static func status(_ text: String?) throws(GatewayError) -> ApprovalRecord.Status? {
        guard let text, text != "all" else { return text == nil ? .pending : nil }
        guard let status = ApprovalRecord.Status(rawValue: text) else {
            throw GatewayError.invalidRequest(
                "'status' must be one of: all, \(ApprovalRecord.Status.allCases.map(\.rawValue).joined(separator: ", ")).", code: "invalid_field", param: "status")
        }
        return status
    }
}
