import FoundationEssentials
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import InterlockCore
import InterlockRuntime
import InterlockStore
import NIOCore
import Testing

@Suite struct PolicyTests {
    static let operatorHeaders: HTTPFields = [.authorization: "Bearer op-admin-token-0000000001", .contentType: "application/json"]

    func json(_ response: TestResponse) throws -> JSONValue { try JSONParser.parse(Array(response.body.readableBytesView)) }

    func auditActions(_ harness: Harness) async throws -> [(action: String, decision: String, reason: String?)] {
        await harness.services.gateway.governor.audit?.writer.flush()
        let page = try await harness.services.store.auditRecords(matching: AuditFilter(), afterPosition: 0, limit: 1000)
        return page.records.map { ($0.action, $0.decision, $0.reason) }
    }

    @Test func rulesDenyModelCallsAndTheAgentReadsWhich() async throws {
        let harness = try await Harness.make(baseConfig.replacingOccurrences(of: "api_key: test-key-aaaaaaaaaaaa\n    models: [fast]", with: "api_key: test-key-aaaaaaaaaaaa\n    models: [fast, other]") + """

            policy:
              rules:
                - name: no-passwords
                  condition: 'args.messages.exists(m, m.content.contains("password"))'
                  effect: deny
                  reason: Never send passwords to a model.
                - name: other-only-for-ops
                  targets: ["model:other"]
                  condition: '"ops" in agent.scopes'
                  effect: allow
                - name: run-spend-cap
                  condition: 'run.spent_usd > 0.0 && target.name == "fast"'
                  effect: deny
                  reason: This run has spent its share.
                - name: watch-everything
                  condition: 'true'
                  effect: deny
                  reason: shadow only
                  mode: shadow
            """)
        let app = Application(router: harness.router)
        try await app.test(.router) { client in
            try await client.execute(uri: "/v1/chat/completions", method: .post, headers: auth("test-key-aaaaaaaaaaaa"), body: chat("fast", "my password is hunter2")) { response in
                #expect(response.status == .forbidden)
                let body = try json(response)
                #expect(body["error"]?["code"] == "policy_denied")
                #expect(body["error"]?["policy"] == "no-passwords")
                #expect(body["error"]?["message"]?.stringValue?.contains("Never send passwords") == true)
            }
            // Anthropic dialect carries the same particulars.
            try await client.execute(
                uri: "/v1/messages", method: .post, headers: auth("test-key-aaaaaaaaaaaa"),
                body: ByteBuffer(string: #"{"model":"fast","max_tokens":10,"messages":[{"role":"user","content":"password please"}]}"#)
            ) { response in
                #expect(response.status == .forbidden)
                let answer = try json(response)
                #expect(answer["error"]?["policy"] == "no-passwords")
            }
            try await client.execute(uri: "/v1/chat/completions", method: .post, headers: auth("test-key-aaaaaaaaaaaa"), body: chat("fast", "hello")) { response in
                #expect(response.status == .ok)
            }
            // An allow rule about `other` that does not match: refused, though granted.
            try await client.execute(uri: "/v1/chat/completions", method: .post, headers: auth("test-key-aaaaaaaaaaaa"), body: chat("other", "hello")) { response in
                #expect(response.status == .forbidden)
                let body = try json(response)
                #expect(body["error"]?["code"] == "policy_denied")
                #expect(body["error"]?["message"]?.stringValue?.contains("No allow rule") == true)
            }
            // A run that has spent something may not use `fast` again.
            var headers = auth("test-key-aaaaaaaaaaaa")
            headers[HTTPField.Name("x-interlock-run-id")!] = "run-42"
            try await client.execute(uri: "/v1/chat/completions", method: .post, headers: headers, body: chat("fast", "first")) { response in
                #expect(response.status == .ok)
            }
            try await client.execute(uri: "/v1/chat/completions", method: .post, headers: headers, body: chat("fast", "second")) { response in
                #expect(response.status == .forbidden)
                let answer = try json(response)
                #expect(answer["error"]?["policy"] == "run-spend-cap")
            }
        }
        let actions = try await auditActions(harness)
        #expect(actions.contains { $0.action == "model.call" && $0.decision == "deny" && $0.reason == "policy:no-passwords" })
        #expect(actions.contains { $0.action == "model.call" && $0.decision == "deny" && $0.reason == "policy:run-spend-cap" })
        // The shadow rule matched every call that reached policy, and changed none of them.
        #expect(actions.filter { $0.action == "policy.shadow" && $0.reason == "watch-everything" }.count >= 3)
        try await harness.close()
    }

    static let approvalConfig = baseConfig + """

        operators:
          - { id: alice, token: op-admin-token-0000000001, role: operator }
        policy:
          approval_wait_ms: 0
          rules:
            - name: fast-needs-a-human
              condition: 'target.name == "fast" && args.messages.exists(m, m.content.startsWith("delete"))'
              effect: require_approval
              reason: Deleting needs a human.
        """

    @Test func approvalsAreBoundToTheCallAndUsedOnce() async throws {
        let harness = try await Harness.make(Self.approvalConfig)
        let app = Application(router: harness.router)
        try await app.test(.router) { client in
            var approvalID = ""
            try await client.execute(uri: "/v1/chat/completions", method: .post, headers: auth("test-key-aaaaaaaaaaaa"), body: chat("fast", "delete row 1")) { response in
                #expect(response.status == .forbidden)
                #expect(response.headers[.retryAfter] == "5")
                let body = try json(response)
                #expect(body["error"]?["code"] == "approval_pending")
                approvalID = body["error"]?["approval_id"]?.stringValue ?? ""
            }
            #expect(approvalID.hasPrefix("apr_"))
            // The same call again is the same request for approval, not a second one.
            try await client.execute(uri: "/v1/chat/completions", method: .post, headers: auth("test-key-aaaaaaaaaaaa"), body: chat("fast", "delete row 1")) { response in
                let answer = try json(response)
                #expect(answer["error"]?["approval_id"]?.stringValue == approvalID)
            }
            // The agent can poll its own approval; another agent cannot see it.
            try await client.execute(uri: "/v1/approvals/\(approvalID)", method: .get, headers: auth("test-key-aaaaaaaaaaaa")) { response in
                let answer = try json(response)
                #expect(answer["status"] == "pending")
            }
            try await client.execute(uri: "/v1/approvals/\(approvalID)", method: .get, headers: auth("test-key-pppppppppppp")) { response in
                #expect(response.status == .notFound)
            }
            // Operators see it with its arguments, and approve it.
            try await client.execute(uri: "/admin/v1/approvals", method: .get, headers: Self.operatorHeaders) { response in
                let list = try json(response)["data"]?.arrayValue ?? []
                #expect(list.count == 1)
                #expect(list.first?["arguments"]?["messages"]?.arrayValue?.first?["content"] == "delete row 1")
                #expect(list.first?["policy"] == "fast-needs-a-human")
            }
            try await client.execute(
                uri: "/admin/v1/approvals/\(approvalID)/approve", method: .post, headers: Self.operatorHeaders, body: ByteBuffer(string: #"{"note":"fine"}"#)
            ) { response in
                #expect(response.status == .ok)
                let body = try json(response)
                #expect(body["status"] == "approved" && body["decided_by"] == "operator:alice")
            }
            try await client.execute(uri: "/admin/v1/approvals/\(approvalID)/reject", method: .post, headers: Self.operatorHeaders) { response in
                #expect(response.status == .conflict)
            }
            // Different arguments are a different call: the approval does not cover them.
            try await client.execute(uri: "/v1/chat/completions", method: .post, headers: auth("test-key-aaaaaaaaaaaa"), body: chat("fast", "delete row 2")) { response in
                let body = try json(response)
                #expect(body["error"]?["code"] == "approval_pending")
                #expect(body["error"]?["approval_id"]?.stringValue != approvalID)
            }
            // The approved call goes through once.
            try await client.execute(uri: "/v1/chat/completions", method: .post, headers: auth("test-key-aaaaaaaaaaaa"), body: chat("fast", "delete row 1")) { response in
                #expect(response.status == .ok)
            }
            try await client.execute(uri: "/v1/chat/completions", method: .post, headers: auth("test-key-aaaaaaaaaaaa"), body: chat("fast", "delete row 1")) { response in
                let body = try json(response)
                #expect(body["error"]?["code"] == "approval_pending")
                #expect(body["error"]?["approval_id"]?.stringValue != approvalID)
            }
            try await client.execute(uri: "/v1/approvals/\(approvalID)", method: .get, headers: auth("test-key-aaaaaaaaaaaa")) { response in
                let answer = try json(response)
                #expect(answer["status"] == "consumed")
            }
        }
        let actions = try await auditActions(harness)
        #expect(actions.contains { $0.action == "approval.requested" })
        #expect(actions.contains { $0.action == "approval.approve" })
        #expect(actions.contains { $0.action == "approval.used" })
        try await harness.close()
    }

    /// An approved call refused by a later stage (here the agent's budget) keeps its
    /// approval: a refusal changes no state.
    @Test func anApprovalIsNotUsedByACallThatIsRefusedLater() async throws {
        let harness = try await Harness.make(Self.approvalConfig.replacingOccurrences(of: "target.name == \"fast\" && ", with: ""))
        let policy = try #require(harness.services.gateway.governor.policy)
        let app = Application(router: harness.router)
        try await app.test(.router) { client in
            // `poor` has a $0.05 daily budget; a call that may cost more is refused at admission.
            let pricey = chat("fast", "delete pricey", extra: #","max_tokens":100000"#)
            var approvalID = ""
            try await client.execute(uri: "/v1/chat/completions", method: .post, headers: auth("test-key-pppppppppppp"), body: pricey) { response in
                approvalID = try json(response)["error"]?["approval_id"]?.stringValue ?? ""
            }
            _ = try await policy.decide(approvalID: approvalID, approve: true, by: "operator:test", note: nil)
            try await client.execute(uri: "/v1/chat/completions", method: .post, headers: auth("test-key-pppppppppppp"), body: pricey) { response in
                let code = try json(response)["error"]?["code"]
                #expect(code == "budget_exceeded")
            }
            try await client.execute(uri: "/v1/approvals/\(approvalID)", method: .get, headers: auth("test-key-pppppppppppp")) { response in
                let status = try json(response)["status"]
                #expect(status == "approved")
            }
        }
        try await harness.close()
    }

    @Test func aWaitingCallCompletesWhenAHumanDecides() async throws {
        let harness = try await Harness.make(Self.approvalConfig.replacingOccurrences(of: "approval_wait_ms: 0", with: "approval_wait_ms: 20000"))
        let policy = try #require(harness.services.gateway.governor.policy)
        let app = Application(router: harness.router)
        try await app.test(.router) { client in
            // A human approves while the request waits: it completes with the model's answer.
            async let approved: Void = {
                let id = try await Self.pendingID(policy)
                _ = try await policy.decide(approvalID: id, approve: true, by: "operator:test", note: nil)
            }()
            try await client.execute(uri: "/v1/chat/completions", method: .post, headers: auth("test-key-aaaaaaaaaaaa"), body: chat("fast", "delete a")) { response in
                #expect(response.status == .ok)
            }
            try await approved
            // Rejected while waiting: 403 with the note.
            async let rejected: Void = {
                let id = try await Self.pendingID(policy)
                _ = try await policy.decide(approvalID: id, approve: false, by: "operator:test", note: "not today")
            }()
            try await client.execute(uri: "/v1/chat/completions", method: .post, headers: auth("test-key-aaaaaaaaaaaa"), body: chat("fast", "delete b")) { response in
                #expect(response.status == .forbidden)
                let body = try json(response)
                #expect(body["error"]?["code"] == "approval_rejected")
                #expect(body["error"]?["message"]?.stringValue?.hasSuffix("not today") == true)
            }
            try await rejected
        }
        try await harness.close()
    }

    /// The id of the one pending approval, once there is one.
    static func pendingID(_ policy: PolicyStage) async throws -> String {
        for _ in 0..<500 {
            if let pending = try await policy.approvals(status: .pending, agentID: nil, limit: 1).first { return pending.id }
            try await Task.sleep(for: .milliseconds(10))
        }
        throw CancellationError()
    }

    @Test func approvalsExpire() async throws {
        let harness = try await Harness.make(Self.approvalConfig.replacingOccurrences(of: "approval_wait_ms: 0", with: "approval_wait_ms: 0\n  approval_ttl_s: 1"))
        let app = Application(router: harness.router)
        try await app.test(.router) { client in
            var approvalID = ""
            try await client.execute(uri: "/v1/chat/completions", method: .post, headers: auth("test-key-aaaaaaaaaaaa"), body: chat("fast", "delete x")) { response in
                approvalID = try json(response)["error"]?["approval_id"]?.stringValue ?? ""
            }
            try await Task.sleep(for: .milliseconds(1100))
            try await client.execute(uri: "/admin/v1/approvals/\(approvalID)/approve", method: .post, headers: Self.operatorHeaders) { response in
                #expect(response.status == .conflict)
                let answer = try json(response)
                #expect(answer["error"]?["message"]?.stringValue?.contains("expired") == true)
            }
            try await client.execute(uri: "/admin/v1/approvals?status=expired", method: .get, headers: Self.operatorHeaders) { response in
                let answer = try json(response)
                #expect(answer["data"]?.arrayValue?.count == 1)
            }
        }
        try await harness.close()
    }
}
