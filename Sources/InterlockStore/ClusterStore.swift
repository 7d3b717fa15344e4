public import InterlockCore

/// One node of a cluster as the store knows it: registered at start, heartbeat since.
public struct NodeRecord: Sendable, Equatable {
    public var id: String
    public var region: String
    /// This process's run of the node (a restarted node has a new one).
    public var incarnation: String
    /// Where it serves (`host:port`).
    public var address: String
    public var version: String
    public var startedMs: Int64
    public var heartbeatMs: Int64
    /// When it stopped cleanly; nil while it runs (or if it died).
    public var stoppedMs: Int64?

    public init(
        id: String, region: String, incarnation: String, address: String, version: String, startedMs: Int64, heartbeatMs: Int64, stoppedMs: Int64? = nil
    ) {
        self.id = id
        self.region = region
        self.incarnation = incarnation
        self.address = address
        self.version = version
        self.startedMs = startedMs
        self.heartbeatMs = heartbeatMs
        self.stoppedMs = stoppedMs
    }

    public enum Status: String, Sendable {
        /// Heartbeats arrive.
        case up
        /// Stopped cleanly.
        case stopped
        /// Silent for longer than the node timeout (killed, partitioned, paused).
        case lost
    }

    public func status(nowMs: Int64, timeoutMs: Int64) -> Status {
        if stoppedMs != nil { return .stopped }
        return nowMs - heartbeatMs > timeoutMs ? .lost : .up
    }

    public func json(nowMs: Int64, timeoutMs: Int64) -> JSONValue {
        var object: JSONObject = [
            "id": .string(id), "region": .string(region), "incarnation": .string(incarnation), "address": .string(address), "version": .string(version),
            "started_ms": .integer(startedMs), "heartbeat_ms": .integer(heartbeatMs), "status": .string(status(nowMs: nowMs, timeoutMs: timeoutMs).rawValue),
            "heartbeat_age_ms": .integer(max(0, nowMs - heartbeatMs)),
        ]
        if let stoppedMs { object["stopped_ms"] = .integer(stoppedMs) }
        return .object(object)
    }
}

/// What another node told this one through the store.
public enum StoreNotification: Sendable, Equatable {
    /// Runs became due; with an id, that run was woken (an answer, a signal, an event).
    case runs(runID: String?)
    /// An event was published.
    case events
    /// Agents or API keys changed.
    case registry
    /// Token-signing keys changed (a rotation).
    case signingKeys
    /// An MCP session was ended (`DELETE /mcp`) on some node.
    case sessionEnded(id: String)
    /// The listening connection was (re)established: anything may have been missed.
    case resync
}

/// What nodes sharing a store know of each other: membership with heartbeats, named leases
/// that one holder has at a time, and notifications. SQLite implements it for its one node.
public protocol ClusterStore: Sendable {
    /// Registers the node or records its heartbeat.
    func heartbeat(_ node: NodeRecord) async throws
    /// Every node that registered, newest first.
    func nodes() async throws -> [NodeRecord]
    /// Records a clean stop of this incarnation of the node.
    func markNodeStopped(id: String, incarnation: String, atMs: Int64) async throws
    /// Takes or extends the lease `name` for `owner` until `untilMs`: true while `owner`
    /// holds it (free, its own, or the holder's expired at `nowMs`).
    func holdLease(_ name: String, owner: String, nowMs: Int64, untilMs: Int64) async throws -> Bool
    /// Notifications from other nodes; nil when the store has none (one node).
    func notifications() -> AsyncStream<StoreNotification>?
}

/// Limits and budgets counted in the store so that every node sees the same numbers. Only
/// a shared store (PostgreSQL) has them; one node counts in memory.
public protocol SharedLimitStore: Sendable {
    /// Reserves `amountNanos` against every period's limit at once: granted (recorded under
    /// `reservationID` until settled or `expiresMs`), or the first period it would pass.
    func reserveBudget(
        agentID: String, periods: [SharedBudgetPeriod], amountNanos: Int64, reservationID: String, owner: String, expiresMs: Int64
    ) async throws -> SharedBudgetDecision
    /// Replaces a reservation with the real cost, counted in `periods` (those of the time it ended).
    func settleBudget(reservationID: String, agentID: String, periods: [SharedBudgetPeriod], actualNanos: Int64) async throws
    /// Spending and reservations of an agent in one period.
    func budgetCounter(agentID: String, periodKey: String) async throws -> (spentNanos: Int64, reservedNanos: Int64)
    /// Frees reservations past their expiry (their holder died); how many.
    func releaseExpiredReservations(nowMs: Int64) async throws -> Int
    /// A rate limit as a shared GCRA: takes `costMicros` of the limit's time (60 s / RPM per
    /// request); granted (0) or the microseconds to wait. `burstMicros` is how far ahead of
    /// now the limit may run (60 s: a whole minute's worth at once).
    func takeRate(key: String, nowMicros: Int64, costMicros: Int64, burstMicros: Int64) async throws -> Int64
    /// Gives back (negative) or takes more (positive) of a rate limit after the fact (tokens
    /// were estimated at admission).
    func adjustRate(key: String, deltaMicros: Int64, nowMicros: Int64) async throws
}

/// A budget period as the shared counters see it.
public struct SharedBudgetPeriod: Sendable, Equatable {
    /// `2026-11-21`, `2026-11`.
    public var key: String
    /// Where spending already in the usage ledger is counted from, for a period's first use.
    public var startMs: Int64
    public var limitNanos: Int64

    public init(key: String, startMs: Int64, limitNanos: Int64) {
        self.key = key
        self.startMs = startMs
        self.limitNanos = limitNanos
    }
}

public enum SharedBudgetDecision: Sendable, Equatable {
    case granted
    /// The period (by index in the request) that would pass its limit, and what is spent and reserved there.
    case exhausted(periodIndex: Int, committedNanos: Int64)
}

/// MCP sessions (`/mcp`) kept in a shared store, so a client whose next request lands on
/// another node keeps its session. Only a shared store (PostgreSQL) has them.
public protocol SessionStore: Sendable {
    func saveSession(id: String, agentID: String, version: String, nowMs: Int64) async throws
    /// The session's agent, protocol version and when a node last recorded it as used.
    func session(id: String) async throws -> (agentID: String, version: String, touchedMs: Int64)?
    func touchSession(id: String, nowMs: Int64) async throws
    func deleteSession(id: String) async throws
    /// Removes sessions not used since `touchedBeforeMs`; how many.
    func deleteSessions(touchedBeforeMs: Int64) async throws -> Int
}
