import HTTPTypes
import Hummingbird
import InterlockCore
import InterlockRuntime

/// Approvals: operators list and decide them under `/admin/v1/approvals`; an agent polls its
/// own at `/v1/approvals/{id}`.
struct ApprovalRoutes {
    let policy: PolicyStage

    /// `GET /v1/approvals/{id}`: the agent's own approval (another agent's reads as not there).
    func addAgentRoutes(to group: RouterGroup<AgentRequestContext>) {
        group.get("approvals/:id") { _, context in
            let id = try context.parameters.require("id")
            guard let approval = try await policy.approval(id: id), approval.agentID == context.caller.agent.id else { throw Self.notFound(id) }
            return ModelRoutes.json(Self.agentView(approval, nowMs: policy.nowMs()), requestID: context.requestID)
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
