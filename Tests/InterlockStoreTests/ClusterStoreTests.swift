import InterlockCore
@testable import InterlockStore
import Logging
import Synchronization
import Testing

/// What nodes sharing a store rely on: membership, singleton leases, notifications between
/// nodes and counters that every node sees the same.
@Suite struct ClusterStoreTests {
    @Test(arguments: StoreKind.all) func nodesHeartbeatStopAndHoldLeasesOneAtATime(kind: StoreKind) async throws {
        try await TestStores.with(kind) { store in
            let cluster = try #require(store as? any ClusterStore)
            var node = NodeRecord(id: "n1", region: "eu", incarnation: "a", address: "127.0.0.1:1", version: "1", startedMs: 10, heartbeatMs: 10)
            try await cluster.heartbeat(node)
            node.heartbeatMs = 20
            try await cluster.heartbeat(node)
            try await cluster.heartbeat(NodeRecord(id: "n2", region: "us", incarnation: "b", address: "127.0.0.1:2", version: "1", startedMs: 15, heartbeatMs: 15))
            var nodes = try await cluster.nodes()
            #expect(nodes.map(\.id) == ["n2", "n1"] && nodes.last?.heartbeatMs == 20)
            #expect(nodes.last?.status(nowMs: 25, timeoutMs: 10) == .up && nodes.first?.status(nowMs: 30, timeoutMs: 10) == .lost)
            try await cluster.markNodeStopped(id: "n1", incarnation: "old", atMs: 30)
            #expect(try await cluster.nodes().last?.stoppedMs == nil, "another incarnation's stop changes nothing")
            try await cluster.markNodeStopped(id: "n1", incarnation: "a", atMs: 30)
            nodes = try await cluster.nodes()
            #expect(nodes.last?.status(nowMs: 31, timeoutMs: 10) == .stopped)

            #expect(try await cluster.holdLease("dispatch", owner: "n1/a", nowMs: 100, untilMs: 200))
            #expect(try await cluster.holdLease("dispatch", owner: "n2/b", nowMs: 150, untilMs: 250) == false, "held by n1")
            #expect(try await cluster.holdLease("dispatch", owner: "n1/a", nowMs: 190, untilMs: 290), "the holder extends it")
            #expect(try await cluster.holdLease("dispatch", owner: "n2/b", nowMs: 291, untilMs: 400), "expired: taken over")
            #expect(try await cluster.holdLease("dispatch", owner: "n1/a", nowMs: 300, untilMs: 400) == false)
        }
    }

    /// A wake on one node reaches the listener of another through NOTIFY, after the commit.
    @Test func wakesAndEventsReachOtherNodes() async throws {
        guard StoreKind.all.contains(.postgres) else { return }
        try await TestStores.with(.postgres) { first in
            let postgres = try #require(first as? PostgresStore)
            let second = try await PostgresStore.open(settings: postgres.settings, node: "second", logger: Logger(label: "test"))
            let stream = try #require(postgres.notifications())
            let received = Mutex<[StoreNotification]>([])
            let reader = Task {
                for await notification in stream {
                    received.withLock { $0.append(notification) }
                }
            }
            // The listener announces itself first (.resync) once it listens.
            for _ in 0..<200 where !received.withLock({ $0.contains(.resync) }) { try await Task.sleep(for: .milliseconds(10)) }
            try await second.saveWorkflowVersion(WorkflowVersionRecord(hash: "h1", name: "w", source: "workflow: w", origin: "test", createdMs: 1))
            _ = try await second.createRun(
                RunRecord(id: "r1", workflow: "w", workflowHash: "h1", agentID: "bot", startedBy: "operator:o", input: .null, createdMs: 1),
                events: [RunEvent(seq: 1, timeMs: 1, kind: .runStarted(input: .null, budgets: .init()))], readyAtMs: 1)
            try await second.wakeRun(runID: "r1", atMs: 2)
            _ = try await second.publishEvent(EventRecord(id: "e1", type: "t", payload: .null, source: "test", timeMs: 3))
            for _ in 0..<300 where received.withLock({ $0.count }) < 4 { try await Task.sleep(for: .milliseconds(10)) }
            reader.cancel()
            try await second.close()
            #expect(received.withLock { $0 } == [.resync, .runs(runID: nil), .runs(runID: "r1"), .events])
        }
    }

    /// Three nodes reserve against one small budget at once: never more granted than fits;
    /// settling frees the reservation and counts the real cost; a dead node's reservations expire.
    @Test func budgetReservationsHoldAcrossNodes() async throws {
        guard StoreKind.all.contains(.postgres) else { return }
        try await TestStores.with(.postgres) { first in
            let settings = try #require(first as? PostgresStore).settings
            var nodes: [PostgresStore] = [try #require(first as? PostgresStore)]
            for index in 2...3 { nodes.append(try await PostgresStore.open(settings: settings, node: "n\(index)", logger: Logger(label: "test"))) }
            let periods = [
                SharedBudgetPeriod(key: "2026-11-21", startMs: 0, limitNanos: 1_000), SharedBudgetPeriod(key: "2026-11", startMs: 0, limitNanos: 5_000),
            ]
            let cluster = nodes
            let granted = await withTaskGroup(of: String?.self) { group in
                for index in 0..<60 {
                    group.addTask {
                        let id = "res-\(index)"
                        let decision = try? await cluster[index % 3].reserveBudget(
                            agentID: "a", periods: periods, amountNanos: 100, reservationID: id, owner: "n\(index % 3)", expiresMs: 1_000)
                        return decision == .granted ? id : nil
                    }
                }
                var ids: [String] = []
                for await id in group { if let id { ids.append(id) } }
                return ids
            }
            #expect(granted.count == 10, "1,000 nanodollars hold ten 100-nanodollar reservations, whichever node asks")
            #expect(try await nodes[1].budgetCounter(agentID: "a", periodKey: "2026-11-21") == (0, 1_000))
            let refused = try await nodes[2].reserveBudget(agentID: "a", periods: periods, amountNanos: 1, reservationID: "x", owner: "n3", expiresMs: 1_000)
            #expect(refused == .exhausted(periodIndex: 0, committedNanos: 1_000))
            // Five calls end costing 60 each; the other five belonged to a node that died.
            for id in granted.prefix(5) { try await nodes[0].settleBudget(reservationID: id, agentID: "a", periods: periods, actualNanos: 60) }
            #expect(try await nodes[0].budgetCounter(agentID: "a", periodKey: "2026-11-21") == (300, 500))
            #expect(try await nodes[1].releaseExpiredReservations(nowMs: 999) == 0)
            #expect(try await nodes[1].releaseExpiredReservations(nowMs: 1_001) == 5)
            #expect(try await nodes[0].budgetCounter(agentID: "a", periodKey: "2026-11") == (300, 0))
            // A settle after its reservation expired still counts the cost.
            try await nodes[2].settleBudget(reservationID: granted[7], agentID: "a", periods: periods, actualNanos: 40)
            #expect(try await nodes[0].budgetCounter(agentID: "a", periodKey: "2026-11-21") == (340, 0))
            for node in nodes.dropFirst() { try await node.close() }
        }
    }

    /// A period's counter starts from what the usage ledger already holds.
    @Test func budgetCountersStartFromTheLedger() async throws {
        guard StoreKind.all.contains(.postgres) else { return }
        try await TestStores.with(.postgres) { store in
            let shared = try #require(store as? PostgresStore)
            try await store.appendUsage([
                UsageRecord(
                    requestID: "u1", timestampMs: 5_000, agentID: "a", targetKind: "model", target: "fast", deploymentID: nil, provider: nil, upstreamModel: nil,
                    operation: "chat", stream: false, usage: .zero, cost: USD(nanos: 900), latencyMs: 1, attempts: 1, outcome: .success, status: 200, errorCode: nil),
            ])
            let day = [SharedBudgetPeriod(key: "d", startMs: 1_000, limitNanos: 1_000)]
            #expect(try await shared.reserveBudget(agentID: "a", periods: day, amountNanos: 200, reservationID: "r1", owner: "n", expiresMs: 9) != .granted)
            #expect(try await shared.reserveBudget(agentID: "a", periods: day, amountNanos: 100, reservationID: "r2", owner: "n", expiresMs: 9) == .granted)
        }
    }

    /// GCRA across nodes: 60 requests a minute means 60 at once, then one a second.
    @Test func rateLimitsAreSharedAcrossNodes() async throws {
        guard StoreKind.all.contains(.postgres) else { return }
        try await TestStores.with(.postgres) { first in
            let settings = try #require(first as? PostgresStore).settings
            let second = try await PostgresStore.open(settings: settings, node: "n2", logger: Logger(label: "test"))
            let firstNode = try #require(first as? PostgresStore)
            let nodes = [firstNode, second]
            let now: Int64 = 1_000_000_000
            var granted = 0
            for index in 0..<70 where try await nodes[index % 2].takeRate(key: "agent:a:rpm", nowMicros: now, costMicros: 1_000_000, burstMicros: 60_000_000) == 0 {
                granted += 1
            }
            #expect(granted == 60)
            let wait = try await second.takeRate(key: "agent:a:rpm", nowMicros: now, costMicros: 1_000_000, burstMicros: 60_000_000)
            #expect(wait == 1_000_000, "the next slot is a second away")
            #expect(try await firstNode.takeRate(key: "agent:a:rpm", nowMicros: now + 1_000_000, costMicros: 1_000_000, burstMicros: 60_000_000) == 0)
            // Tokens estimated too high are given back.
            try await second.adjustRate(key: "agent:a:rpm", deltaMicros: -5_000_000, nowMicros: now + 1_000_000)
            #expect(try await firstNode.takeRate(key: "agent:a:rpm", nowMicros: now + 1_000_000, costMicros: 1_000_000, burstMicros: 60_000_000) == 0)
            try await second.close()
        }
    }
}
