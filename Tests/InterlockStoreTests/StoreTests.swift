import InterlockCore
@testable import InterlockStore
import Testing

/// The store interface on both stores (what is SQLite-only says so).
@Suite struct StoreTests {
    func record(_ id: String, agent: String, ts: Int64, nanos: Int64) -> UsageRecord {
        UsageRecord(
            requestID: id, timestampMs: ts, agentID: agent, targetKind: "model", target: "fast", deploymentID: "d1", provider: "mock",
            upstreamModel: "m1", operation: "chat", stream: false, usage: TokenUsage(inputTokens: 10, outputTokens: 5, cachedInputTokens: 2),
            cost: USD(nanos: nanos), latencyMs: 12.5, attempts: 1, outcome: .success, status: 200, errorCode: nil)
    }

    @Test func migratesInWALModeAndSumsSpend() async throws {
        let path = "/tmp/interlock-store-test-\(UInt64.random(in: 0...UInt64.max)).sqlite"
        let store = try await SQLiteStore.open(path: path)
        try await store.migrate()
        try await store.migrate()  // idempotent
        #expect(try await store.schemaVersion() == 13)
        #expect(try await store.journalMode() == "wal")
        let batch = (0..<1_500).map { record("r\($0)", agent: $0 < 1_000 ? "a" : "b", ts: Int64(1_000 + $0), nanos: 100) }
        try await store.appendUsage(batch)
        let spend = try await store.spend(agentID: "a", sinceMs: 1_500)
        #expect(spend.calls == 500)
        #expect(spend.cost == USD(nanos: 50_000))
        #expect(spend.usage.cachedInputTokens == 1_000)
        let recent = try await store.recentUsage(limit: 2)
        #expect(recent.map(\.requestID) == ["r1499", "r1498"])
        #expect(recent.first == batch.last)
        try await store.close()
        // Reopening keeps the data: it is on disk.
        let reopened = try await SQLiteStore.open(path: path)
        try await reopened.migrate()
        #expect(try await reopened.spend(agentID: "b", sinceMs: 0).calls == 500)
        try await reopened.close()
    }

    @Test(arguments: StoreKind.all) func approvalsAreDecidedOnceUsedOnceAndExpire(kind: StoreKind) async throws {
        try await TestStores.with(kind) { store in
        let approval = ApprovalRecord(
            id: "apr_1", agentID: "a", targetKind: "tool", target: "erp.delete_order", argumentsHash: "h1", arguments: #"{"id":7}"#, policy: "deletes",
            policyVersion: "v1", reason: "a human decides", requestID: "r1", createdMs: 1_000, expiresMs: 10_000)
        try await store.createApproval(approval)
        #expect(try await store.approval(binding: approval.binding, status: .pending, nowMs: 2_000)?.id == "apr_1")
        // Another version of the rule, or other arguments, is another call.
        var other = approval.binding
        other.policyVersion = "v2"
        #expect(try await store.approval(binding: other, status: .pending, nowMs: 2_000) == nil)
        #expect(try await store.consumeApproval(id: "apr_1", nowMs: 2_000) == false)  // not approved yet
        let approved = try await store.decideApproval(id: "apr_1", approve: true, by: "operator:o", note: "ok", answer: nil, nowMs: 3_000, expiresMs: 9_000)
        #expect(approved?.0.status == .approved && approved?.0.decidedBy == "operator:o" && approved?.0.note == "ok" && approved?.1 == true)
        #expect(approved?.0.expiresMs == 9_000)
        // A second decision changes nothing.
        let second = try await store.decideApproval(id: "apr_1", approve: false, by: "operator:p", note: nil, answer: nil, nowMs: 3_500, expiresMs: 9_500)
        #expect(second?.0.status == .approved && second?.1 == false)
        #expect(try await store.consumeApproval(id: "apr_1", nowMs: 4_000) == true)
        #expect(try await store.consumeApproval(id: "apr_1", nowMs: 4_000) == false)
        // Expiry: a pending approval past its time cannot be approved.
        var late = approval
        late.id = "apr_2"
        late.argumentsHash = "h2"
        try await store.createApproval(late)
        #expect(try await store.decideApproval(id: "apr_2", approve: true, by: "operator:o", note: nil, answer: nil, nowMs: 10_000, expiresMs: 20_000)?.0.status(at: 10_000) == .expired)
        #expect(try await store.approvals(status: .expired, agentID: nil, nowMs: 10_000, limit: 10).map(\.id) == ["apr_2"])
        #expect(try await store.approvals(status: .consumed, agentID: "a", nowMs: 10_000, limit: 10).map(\.id) == ["apr_1"])
        // Run spend: only the run's own, non-rejected calls.
        var usage = record("u1", agent: "a", ts: 1, nanos: 700)
        usage.runID = "run-9"
        var rejected = record("u2", agent: "a", ts: 2, nanos: 0)
        rejected.runID = "run-9"
        rejected.outcome = .rejected
        try await store.appendUsage([usage, rejected, record("u3", agent: "a", ts: 3, nanos: 5)])
        #expect(try await store.runSpend(runID: "run-9") == RunSpend(calls: 1, tokens: 15, cost: USD(nanos: 700)))
        }
    }

    /// A batch too large for one statement is written by several statements in one transaction;
    /// the store links audit records onto its chain.
    @Test(arguments: StoreKind.all) func largeBatchesAreWrittenWhole(kind: StoreKind) async throws {
        try await TestStores.with(kind) { store in
            try await store.appendUsage((0..<5_000).map { record("big\($0)", agent: "big", ts: 10, nanos: 1) })
            #expect(try await store.spend(agentID: "big", sinceMs: 0).calls == 5_000)
            let records = (0..<5_000).map { index in AuditRecord(timestampMs: 1, node: "n", action: "a", target: "t\(index)", decision: "allow") }
            let head = try await store.appendAudit(Array(records[..<10]))
            #expect(head.sequence == 10)
            try await store.appendAudit(Array(records[10...]))
            let stored = try await store.auditRecords(afterPosition: 0, limit: 10_000).records
            #expect(stored.map(\.target) == records.map(\.target))
            #expect(stored.map(\.sequence) == Array(1...5_000))
            var chain = AuditChain()
            #expect(chain.verify(stored) == nil, "one chain across both batches")
            #expect(try await store.auditHead()?.hash == stored.last?.hash)
        }
    }

    /// Every call inserts into each index of the ledger and the audit log, so they carry only
    /// the indexes Interlock's queries read (budget spend, audit filters, a run's usage):
    /// SQLite's migration 13 and PostgreSQL's 6 dropped the rest.
    @Test(arguments: StoreKind.all) func theCallTablesCarryOnlyTheIndexesQueriesRead(kind: StoreKind) async throws {
        try await TestStores.with(kind) { store in
            let names: [String]
            if let sqlite = store as? SQLiteStore {
                names = try await sqlite.connection.query(
                    "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name IN ('usage_ledger', 'audit_log') AND sql IS NOT NULL ORDER BY name", []
                ).compactMap { $0.column("name")?.string }
            } else {
                let postgres = try #require(store as? PostgresStore)
                names = try await postgres.rows(
                    """
                    SELECT indexname FROM pg_indexes WHERE schemaname = current_schema() AND tablename IN ('usage_ledger', 'audit_log')
                    AND indexname NOT LIKE '%_pkey' ORDER BY indexname
                    """
                ).compactMap { $0.text("indexname") }
            }
            // PostgreSQL also indexes the audit log by run (`GET /admin/v1/audit?run=`).
            let expected = ["audit_log_agent_ts", "audit_log_ts", "usage_ledger_agent_ts", "usage_ledger_run"] + (kind == .postgres ? ["audit_log_run"] : [])
            #expect(names.sorted() == expected.sorted())
        }
    }

    /// Usage records read back exactly as written, and spend sums (both stores).
    @Test(arguments: StoreKind.all) func usageRoundTripsAndSums(kind: StoreKind) async throws {
        try await TestStores.with(kind) { store in
            #expect(try await store.schemaVersion() > 0)
            let batch = (0..<1_500).map { record("r\($0)", agent: $0 < 1_000 ? "a" : "b", ts: Int64(1_000 + $0), nanos: 100) }
            try await store.appendUsage(batch)
            let spend = try await store.spend(agentID: "a", sinceMs: 1_500)
            #expect(spend.calls == 500 && spend.cost == USD(nanos: 50_000) && spend.usage.cachedInputTokens == 1_000)
            let recent = try await store.recentUsage(limit: 2)
            #expect(recent.map(\.requestID) == ["r1499", "r1498"])
            #expect(recent.first == batch.last)
            let agent = Agent(id: "bot")
            try await store.saveRegistry(agents: [agent], keys: [])
            #expect(try await store.agents().map(\.id) == ["bot"])
            try await store.saveSigningKeys([SigningKeyRecord(kid: "k1", privateKeyPEM: "pem", createdMs: 3)], deleting: [])
            #expect(try await store.signingKeys().map(\.kid) == ["k1"])
            try await store.saveToolPins([ToolPin(name: "erp.x", approvedHash: "h", approvedMs: 1, approvedBy: "o")])
            #expect(try await store.toolPins().map(\.approvedHash) == ["h"])
        }
    }
}
