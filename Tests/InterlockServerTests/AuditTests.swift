import HTTPTypes
import Hummingbird
import HummingbirdTesting
import InterlockCore
import InterlockRuntime
import InterlockServer
import InterlockStore
import Testing

@Suite struct AuditTests {
    /// Every governed call is one audit record — allowed, refused at authentication, at the
    /// grant check and at the budget — and the records form an intact chain.
    @Test func governedCallsAreAuditedInAnIntactChain() async throws {
        let harness = try await Harness.make(baseConfig)
        let app = Application(router: harness.router)
        try await app.test(.router) { client in
            try await client.execute(uri: "/v1/chat/completions", method: .post, headers: auth("test-key-aaaaaaaaaaaa"), body: chat("fast", "hello")) { response in
                #expect(response.status == .ok)
            }
            try await client.execute(uri: "/v1/chat/completions", method: .post, headers: auth("test-key-wrong-wrong"), body: chat()) { response in
                #expect(response.status == .unauthorized)
            }
            try await client.execute(uri: "/v1/chat/completions", method: .post, headers: auth("test-key-aaaaaaaaaaaa"), body: chat("other")) { response in
                #expect(response.status == .forbidden)
            }
            // 0.05 $ a day; this call may cost up to 1000 input + 4096 output tokens at 1/2 $ per Mtok: admitted.
            // The "pricey" answer costs 0.003 $; repeat until the budget refuses.
            var refused = false
            for _ in 0..<40 where !refused {
                try await client.execute(uri: "/v1/chat/completions", method: .post, headers: auth("test-key-pppppppppppp"), body: chat("fast", "pricey")) { response in
                    refused = response.status == .tooManyRequests
                }
            }
            #expect(refused)
        }
        guard let audit = harness.services.gateway.governor.audit else {
            Issue.record("the harness has no audit log")
            return
        }
        await audit.writer.flush()
        let page = try await harness.services.store.auditRecords(afterPosition: 0, limit: 1_000)
        let records = page.records
        var chain = AuditChain()
        #expect(chain.verify(records) == nil)
        #expect(records.map(\.sequence) == Array(1...Int64(records.count)))
        #expect(audit.head.sequence == Int64(records.count))
        #expect(audit.head.hash == records.last?.hash)

        let allowed = try #require(records.first)
        #expect(allowed.action == "model.call" && allowed.decision == "allow" && allowed.agentID == "a" && allowed.target == "fast")
        #expect(allowed.outcome == "success" && allowed.status == 200 && allowed.node == "test-node")
        // Only a hash of the arguments: the prompt itself is nowhere in the record.
        #expect(allowed.argumentsHash == AuditRecord.sha256Hex(Array(chat("fast", "hello").readableBytesView)))
        #expect(!JSONWriter.string(allowed.json(includingHash: true)).contains("hello"))

        let unauthenticated = records[1]
        #expect(unauthenticated.action == "auth.failed" && unauthenticated.decision == "deny" && unauthenticated.reason == "invalid_api_key")
        #expect(unauthenticated.agentID == nil && unauthenticated.status == 401)
        let forbidden = records[2]
        #expect(forbidden.decision == "deny" && forbidden.reason == "model_not_allowed" && forbidden.target == "other" && forbidden.agentID == "a")
        let overBudget = try #require(records.last)
        #expect(overBudget.agentID == "poor" && overBudget.decision == "deny" && overBudget.reason == "budget_exceeded" && overBudget.status == 429)
        #expect(records.filter { $0.agentID == "poor" && $0.decision == "allow" }.allSatisfy { $0.costNanos == 3_000_000 })
        try await harness.close()
    }

    /// A restarted node continues the chain where the store left it.
    @Test func theChainContinuesAcrossRestarts() async throws {
        let harness = try await Harness.make(baseConfig)
        let store = harness.services.store
        let first = try await AuditLog.open(store: store, node: "n1", flushInterval: .seconds(60), maxBatch: 10, logger: .init(label: "t"), wallClockMs: { 1 })
        for index in 0..<25 { first.record(AuditRecord(timestampMs: 0, node: "", action: "test", target: "t\(index)", decision: "allow")) }
        await first.writer.flush()
        let second = try await AuditLog.open(store: store, node: "n2", flushInterval: .seconds(60), maxBatch: 10, logger: .init(label: "t"), wallClockMs: { 2 })
        #expect(second.head.sequence == 25)
        await second.recordDurably(AuditRecord(timestampMs: 0, node: "", action: "operator.test", decision: "allow"))
        let records = try await store.auditRecords(afterPosition: 0, limit: 100).records
        #expect(records.count == 26)
        #expect(records.last?.node == "n2" && records.last?.sequence == 26)
        var chain = AuditChain()
        #expect(chain.verify(records) == nil)
        // Paging by storage position reads the same chain.
        var paged: [AuditRecord] = []
        var position: Int64 = 0
        while true {
            let page = try await store.auditRecords(afterPosition: position, limit: 7)
            if page.records.isEmpty { break }
            paged += page.records
            position = page.lastPosition
        }
        #expect(paged == records)
        try await harness.close()
    }
}

@Suite struct AdminAPITests {
    let config = baseConfig + """

        operators:
          - { id: alice, token: op-admin-token-0000000001, role: admin }
          - { id: victor, token: op-viewer-token-000000001, role: viewer }
        """

    func bearer(_ token: String) -> HTTPFields { [.authorization: "Bearer \(token)"] }

    @Test func onlyOperatorTokensOpenTheAdminAPI() async throws {
        let harness = try await Harness.make(config)
        let app = Application(router: harness.router)
        try await app.test(.router) { client in
            try await client.execute(uri: "/admin/v1/agents", method: .get) { response in
                #expect(response.status == .unauthorized)
            }
            // An agent's key is not an operator token.
            try await client.execute(uri: "/admin/v1/agents", method: .get, headers: bearer("test-key-aaaaaaaaaaaa")) { response in
                #expect(response.status == .unauthorized)
                let body = try JSONParser.parse(Array(response.body.readableBytesView))
                #expect(body["error"]?["code"] == "invalid_operator_token")
            }
            // And an operator token is not an agent's key.
            try await client.execute(uri: "/v1/chat/completions", method: .post, headers: auth("op-admin-token-0000000001"), body: chat()) { response in
                #expect(response.status == .unauthorized)
            }
            try await client.execute(uri: "/admin/v1/agents", method: .get, headers: bearer("op-viewer-token-000000001")) { response in
                #expect(response.status == .ok)
                let text = String(buffer: response.body)
                let body = try JSONParser.parse(Array(text.utf8))
                #expect(body["data"]?.arrayValue?.compactMap { $0["id"]?.stringValue } == ["a", "poor"])
                #expect(body["data"]?.arrayValue?.last?["budgets"]?["daily_usd"] == 0.05)
                // Keys never leave.
                #expect(!text.contains("test-key-"))
            }
        }
        try await harness.close()
    }

    @Test func auditQueryFiltersPagesAndIsItselfAudited() async throws {
        let harness = try await Harness.make(config)
        let app = Application(router: harness.router)
        let audit = harness.services.gateway.governor.audit
        try await app.test(.router) { client in
            for _ in 0..<5 {
                try await client.execute(uri: "/v1/chat/completions", method: .post, headers: auth("test-key-aaaaaaaaaaaa"), body: chat()) { _ in }
            }
            try await client.execute(uri: "/v1/chat/completions", method: .post, headers: auth("test-key-aaaaaaaaaaaa"), body: chat("other")) { _ in }
            try await client.execute(uri: "/v1/chat/completions", method: .post, headers: auth("test-key-pppppppppppp"), body: chat()) { _ in }
            await audit?.writer.flush()

            try await client.execute(uri: "/admin/v1/audit?agent=a&decision=allow&limit=3", method: .get, headers: bearer("op-viewer-token-000000001")) { response in
                #expect(response.status == .ok)
                let body = try JSONParser.parse(Array(response.body.readableBytesView))
                let data = body["data"]?.arrayValue ?? []
                #expect(data.count == 3)
                #expect(data.allSatisfy { $0["agent"] == "a" && $0["decision"] == "allow" })
                let next = try #require(body["next_after"]?.int64Value)
                try await client.execute(uri: "/admin/v1/audit?agent=a&decision=allow&limit=3&after=\(next)", method: .get, headers: bearer("op-viewer-token-000000001")) { response in
                    let body = try JSONParser.parse(Array(response.body.readableBytesView))
                    #expect(body["data"]?.arrayValue?.count == 2)
                    #expect(body["next_after"] == .null)
                }
            }
            try await client.execute(uri: "/admin/v1/audit?decision=deny", method: .get, headers: bearer("op-admin-token-0000000001")) { response in
                let body = try JSONParser.parse(Array(response.body.readableBytesView))
                #expect(body["data"]?.arrayValue?.compactMap { $0["reason"]?.stringValue } == ["model_not_allowed"])
            }
            try await client.execute(uri: "/admin/v1/audit?limit=5000", method: .get, headers: bearer("op-admin-token-0000000001")) { response in
                #expect(response.status == .badRequest)
                let body = try JSONParser.parse(Array(response.body.readableBytesView))
                #expect(body["error"]?["param"] == "limit")
            }
        }
        let records = try await harness.services.store.auditRecords(afterPosition: 0, limit: 1_000).records
        let reads = records.filter { $0.action == "operator.audit.read" }
        // Three reads and the refused one (limit out of range), each on record.
        #expect(reads.map(\.decision) == ["allow", "allow", "allow", "deny"])
        #expect(reads.last?.reason == "invalid_parameter")
        #expect(reads.allSatisfy { $0.actorChain.first?.hasPrefix("operator:") == true })
        var chain = AuditChain()
        #expect(chain.verify(records) == nil)
        try await harness.close()
    }
}
