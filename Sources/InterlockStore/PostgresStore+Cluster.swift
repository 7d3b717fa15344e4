import InterlockCore
import PostgresNIO

extension PostgresStore: ClusterStore {
    public func heartbeat(_ node: NodeRecord) async throws {
        try await rows(
            """
            INSERT INTO nodes (\(NodeRows.columns)) VALUES ($1, $2, $3, $4, $5, $6, $7, NULL)
            ON CONFLICT (id) DO UPDATE SET region = excluded.region, incarnation = excluded.incarnation, address = excluded.address,
                version = excluded.version, started_ms = excluded.started_ms, heartbeat_ms = excluded.heartbeat_ms, stopped_ms = NULL
            """, NodeRows.values(node))
    }

    public func nodes() async throws -> [NodeRecord] {
        try await rows("SELECT \(NodeRows.columns) FROM nodes ORDER BY started_ms DESC, id").map(NodeRows.node)
    }

    public func markNodeStopped(id: String, incarnation: String, atMs: Int64) async throws {
        try await rows("UPDATE nodes SET stopped_ms = $1 WHERE id = $2 AND incarnation = $3", [.int(atMs), .text(id), .text(incarnation)])
    }

    public func holdLease(_ name: String, owner: String, nowMs: Int64, untilMs: Int64) async throws -> Bool {
        !(try await rows(
            """
            INSERT INTO leases (name, owner, expires_ms) VALUES ($1, $2, $3)
            ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, expires_ms = excluded.expires_ms
            WHERE leases.owner = excluded.owner OR leases.expires_ms < $4
            RETURNING owner
            """, [.text(name), .text(owner), .int(untilMs), .int(nowMs)]
        ).isEmpty)
    }

    /// A stream of what other nodes announce (`NOTIFY`). The first subscriber starts a
    /// listener on a connection of its own, which reconnects after a loss and then sends
    /// `.resync` (notifications sent meanwhile are gone; subscribers look for themselves).
    public func notifications() -> AsyncStream<StoreNotification>? {
        let (stream, continuation) = AsyncStream.makeStream(of: StoreNotification.self, bufferingPolicy: .bufferingNewest(1_024))
        let start = listeners.withLock { state -> Bool in
            state.next += 1
            let id = state.next
            state.continuations[id] = continuation
            continuation.onTermination = { [weak self] _ in _ = self?.listeners.withLock { $0.continuations.removeValue(forKey: id) } }
            guard !state.listening else { return false }
            state.listening = true
            return true
        }
        if start {
            let task = Task { await self.listen() }
            listenTask.withLock { $0 = task }
        }
        return stream
    }

    private static func notification(_ payload: String) -> StoreNotification {
        switch payload {
        case "events": .events
        case "registry": .registry
        case "keys": .signingKeys
        case let run where run.hasPrefix("run:"): .runs(runID: String(run.dropFirst(4)))
        case let session where session.hasPrefix("session:"): .sessionEnded(id: String(session.dropFirst(8)))
        default: .runs(runID: nil)
        }
    }

    private func broadcast(_ notification: StoreNotification) {
        for continuation in listeners.withLock({ Array($0.continuations.values) }) { continuation.yield(notification) }
    }

    private func listen() async {
        var backoffMs = 100
        while !Task.isCancelled {
            do {
                try await client.withConnection { connection in
                    try await connection.listen(on: channel) { notifications in
                        backoffMs = 100
                        broadcast(.resync)
                        for try await notification in notifications {
                            broadcast(Self.notification(notification.payload))
                        }
                    }
                }
            } catch {
                if Task.isCancelled { return }
                logger.warning("listening for other nodes' notifications failed; reconnecting", metadata: ["error": "\(PostgresStoreError.describe(error))"])
            }
            try? await Task.sleep(for: .milliseconds(backoffMs))
            backoffMs = min(backoffMs * 2, 5_000)
        }
    }
}

extension PostgresStore: SharedLimitStore {
    private static func arrays(_ periods: [SharedBudgetPeriod]) -> (keys: String, starts: String, limits: String) {
        (
            periods.map(\.key).joined(separator: ","), periods.map { String($0.startMs) }.joined(separator: ","),
            periods.map { String($0.limitNanos) }.joined(separator: ",")
        )
    }

    public func reserveBudget(
        agentID: String, periods: [SharedBudgetPeriod], amountNanos: Int64, reservationID: String, owner: String, expiresMs: Int64
    ) async throws -> SharedBudgetDecision {
        let (keys, starts, limits) = Self.arrays(periods)
        let row = try await rows(
            """
            SELECT granted::int::bigint AS granted, period_index::bigint AS period_index, committed FROM interlock_budget_reserve(
                $1, string_to_array($2, ','), string_to_array($3, ',')::bigint[], string_to_array($4, ',')::bigint[], $5, $6, $7, $8)
            """, [.text(agentID), .text(keys), .text(starts), .text(limits), .int(amountNanos), .text(reservationID), .text(owner), .int(expiresMs)]
        ).first
        if row?.int("granted") == 1 { return .granted }
        return .exhausted(periodIndex: Int(row?.int("period_index") ?? 1) - 1, committedNanos: row?.int("committed") ?? 0)
    }

    public func settleBudget(reservationID: String, agentID: String, periods: [SharedBudgetPeriod], actualNanos: Int64) async throws {
        let (keys, starts, _) = Self.arrays(periods)
        try await rows(
            "SELECT 1 AS done FROM interlock_budget_settle($1, $2, string_to_array($3, ','), string_to_array($4, ',')::bigint[], $5)",
            [.text(reservationID), .text(agentID), .text(keys), .text(starts), .int(actualNanos)])
    }

    public func budgetCounter(agentID: String, periodKey: String) async throws -> (spentNanos: Int64, reservedNanos: Int64) {
        let row = try await rows(
            "SELECT spent_nanos, reserved_nanos FROM budget_counters WHERE agent_id = $1 AND period_key = $2", [.text(agentID), .text(periodKey)]
        ).first
        return (row?.int("spent_nanos") ?? 0, row?.int("reserved_nanos") ?? 0)
    }

    public func releaseExpiredReservations(nowMs: Int64) async throws -> Int {
        try await transaction { [self] connection in
            let expired = try await rows(
                "DELETE FROM budget_reservations WHERE expires_ms < $1 RETURNING agent_id, array_to_string(period_keys, ',') AS keys, amount_nanos",
                [.int(nowMs)], on: connection)
            for row in expired {
                guard let agent = row.text("agent_id"), let keys = row.text("keys"), let amount = row.int("amount_nanos") else { continue }
                try await rows(
                    "UPDATE budget_counters SET reserved_nanos = reserved_nanos - $1 WHERE agent_id = $2 AND period_key = ANY (string_to_array($3, ','))",
                    [.int(amount), .text(agent), .text(keys)], on: connection)
            }
            return expired.count
        }
    }

    public func takeRate(key: String, nowMicros: Int64, costMicros: Int64, burstMicros: Int64) async throws -> Int64 {
        try await rows(
            "SELECT interlock_rate_take($1, $2, $3, $4) AS wait_us", [.text(key), .int(nowMicros), .int(costMicros), .int(burstMicros)]
        ).first?.int("wait_us") ?? 0
    }

    public func adjustRate(key: String, deltaMicros: Int64, nowMicros: Int64) async throws {
        try await rows("UPDATE rate_counters SET tat_us = GREATEST(tat_us + $1, $2) WHERE key = $3", [.int(deltaMicros), .int(nowMicros), .text(key)])
    }
}

extension PostgresStore: SessionStore {
    public func saveSession(id: String, agentID: String, version: String, nowMs: Int64) async throws {
        try await rows(
            "INSERT INTO mcp_sessions (id, agent_id, version, touched_ms) VALUES ($1, $2, $3, $4)",
            [.text(id), .text(agentID), .text(version), .int(nowMs)])
    }

    public func session(id: String) async throws -> (agentID: String, version: String, touchedMs: Int64)? {
        guard let row = try await rows("SELECT agent_id, version, touched_ms FROM mcp_sessions WHERE id = $1", [.text(id)]).first,
            let agent = row.text("agent_id"), let version = row.text("version"), let touched = row.int("touched_ms")
        else { return nil }
        return (agent, version, touched)
    }

    public func touchSession(id: String, nowMs: Int64) async throws {
        try await rows("UPDATE mcp_sessions SET touched_ms = GREATEST(touched_ms, $1) WHERE id = $2", [.int(nowMs), .text(id)])
    }

    public func deleteSession(id: String) async throws {
        try await transaction { [self] connection in
            try await rows("DELETE FROM mcp_sessions WHERE id = $1", [.text(id)], on: connection)
            try await rows("SELECT pg_notify('\(channel)', $1)", [.text("session:" + id)], on: connection)
        }
    }

    public func deleteSessions(touchedBeforeMs: Int64) async throws -> Int {
        try await rows("DELETE FROM mcp_sessions WHERE touched_ms < $1 RETURNING id", [.int(touchedBeforeMs)]).count
    }
}
