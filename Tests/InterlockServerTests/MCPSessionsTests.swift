import InterlockCore
@testable import InterlockServer
import InterlockStore
import Synchronization
import Testing

private struct StoreDown: Error {}

/// Sessions in memory as the shared store keeps them; `down` makes every call fail.
private final class FlakySessionStore: SessionStore {
    let down = Atomic<Bool>(false)
    private let rows = Mutex<[String: (agentID: String, version: String, touchedMs: Int64)]>([:])

    private func check() throws {
        if down.load(ordering: .relaxed) { throw StoreDown() }
    }

    func saveSession(id: String, agentID: String, version: String, nowMs: Int64) async throws {
        try check()
        rows.withLock { $0[id] = (agentID, version, nowMs) }
    }

    func session(id: String) async throws -> (agentID: String, version: String, touchedMs: Int64)? {
        try check()
        return rows.withLock { $0[id] }
    }

    func touchSession(id: String, nowMs: Int64) async throws { try check() }

    func deleteSession(id: String) async throws {
        try check()
        _ = rows.withLock { $0.removeValue(forKey: id) }
    }

    func deleteSessions(touchedBeforeMs: Int64) async throws -> Int { 0 }
}

@Suite struct MCPSessionsTests {
    /// Two nodes on one store: a session opened on one is taken over by the other, ended
    /// everywhere; with the store down, an unknown session is "try again" (503), never
    /// "unknown" (404, which makes the client start over), and an end is not pretended.
    @Test func sessionsMoveBetweenNodesAndAStoreOutageIsNotAnUnknownSession() async throws {
        let store = FlakySessionStore()
        let first = MCPSessions(maxSessions: 10, maxPerAgent: 10, idleTimeout: .seconds(60), shared: store)
        let second = MCPSessions(maxSessions: 10, maxPerAgent: 10, idleTimeout: .seconds(60), shared: store)
        let id = try await first.open(agentID: "a", version: "2025-06-18")
        #expect(try await second.touchOrAdopt(id, agentID: "a"))
        #expect(try await !second.touchOrAdopt(id, agentID: "b"), "another agent's session")

        let other = try await first.open(agentID: "a", version: "2025-06-18")
        store.down.store(true, ordering: .relaxed)
        #expect(try await first.touchOrAdopt(other, agentID: "a"), "known here: no store needed")
        await #expect(throws: GatewayError.self) { _ = try await second.touchOrAdopt(other, agentID: "a") }
        await #expect(throws: GatewayError.self) { _ = try await first.end(other, agentID: "a") }
        #expect(try await first.touchOrAdopt(other, agentID: "a"), "a failed end leaves the session")
        await #expect(throws: GatewayError.self) { _ = try await first.open(agentID: "a", version: "2025-06-18") }

        store.down.store(false, ordering: .relaxed)
        #expect(try await second.end(other, agentID: "a"))
        #expect(try await !second.touchOrAdopt(other, agentID: "a"))
        #expect(try await !MCPSessions(maxSessions: 10, maxPerAgent: 10, idleTimeout: .seconds(60), shared: store).touchOrAdopt(other, agentID: "a"))
    }
}
