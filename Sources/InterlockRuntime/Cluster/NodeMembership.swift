public import InterlockCore
public import InterlockStore
import FoundationEssentials
public import Logging
import Metrics
public import ServiceLifecycle
import Synchronization

/// This node's place in the cluster: registered before it serves, a heartbeat every
/// `cluster.heartbeat_interval_ms`, marked stopped on a clean shutdown. It also carries out
/// what other nodes announce through the store (agents, keys and signing keys changed) and
/// frees shared budget reservations whose node died.
public final class NodeMembership: Service, Sendable {
    public let nodeID: String
    /// This process's run of the node; workflow leases are held as `<node>/<incarnation>`.
    public let incarnation: String
    private let region: String
    private let startedMs: Int64
    private let address: Mutex<String>
    private let store: any ClusterStore
    private let shared: (any SharedLimitStore)?
    /// MCP sessions shared by the cluster, swept when idle past `mcp.session_idle_timeout_s`.
    private let sessions: (any SessionStore)?
    private let sessionIdleMs: Int64
    private let settings: ClusterSettings
    /// Whether other processes may share the store (PostgreSQL): only then can another live
    /// node use this id. On SQLite a restart after a crash joins at once.
    private let storeIsShared: Bool
    private let registry: AgentRegistry
    private let tokens: TokenService?
    private let logger: Logger
    private let wallClockMs: @Sendable () -> Int64

    public init(
        configuration: InterlockConfiguration, store: any ClusterStore, registry: AgentRegistry, tokens: TokenService?, incarnation: String, address: String,
        logger: Logger, wallClockMs: (@Sendable () -> Int64)? = nil
    ) {
        let clock = wallClockMs ?? { Int64(Date().timeIntervalSince1970 * 1000) }
        self.nodeID = configuration.node.id
        self.region = configuration.node.region
        self.incarnation = incarnation
        self.startedMs = clock()
        self.address = Mutex(address)
        self.store = store
        self.shared = configuration.store.isShared ? store as? any SharedLimitStore : nil
        self.sessions = configuration.store.isShared ? store as? any SessionStore : nil
        self.sessionIdleMs = Int64(configuration.mcp.sessionIdleTimeoutSeconds) * 1000
        self.settings = configuration.cluster
        self.storeIsShared = configuration.store.isShared
        self.registry = registry
        self.tokens = tokens
        self.logger = logger
        self.wallClockMs = clock
    }

    /// The lease owner name of this process's workflow worker.
    public var leaseOwner: String { "\(nodeID)/\(incarnation)" }

    /// Where the node serves, once the port is bound.
    public func setAddress(_ value: String) { address.withLock { $0 = value } }

    private var record: NodeRecord {
        NodeRecord(
            id: nodeID, region: region, incarnation: incarnation, address: address.withLock { $0 }, version: InterlockVersion.current, startedMs: startedMs,
            heartbeatMs: wallClockMs())
    }

    /// A node id another live node is using.
    public struct NodeIDInUse: Error, CustomStringConvertible {
        public var description: String
    }

    /// Registers the node (call before serving). A node with this id that still sends
    /// heartbeats is either this node's previous run, killed a moment ago (its heartbeat ages
    /// out within `node_timeout_ms`: wait for that), or another node configured with the same
    /// id (it keeps beating: refuse to start, since both would take each other's runs).
    public func join() async throws {
        let deadline = wallClockMs() + Int64(settings.nodeTimeoutMs + settings.heartbeatIntervalMs)
        while storeIsShared {
            let now = wallClockMs()
            let live = try await store.nodes().first {
                $0.id == nodeID && $0.incarnation != incarnation && $0.status(nowMs: now, timeoutMs: Int64(settings.nodeTimeoutMs)) == .up
            }
            guard let live else { break }
            if now > deadline {
                throw NodeIDInUse(
                    description: "node id '\(nodeID)' is in use by a live node at \(live.address) (heartbeat \(now - live.heartbeatMs) ms ago); give each node its own node.id (e.g. ${INTERLOCK_NODE_ID})")
            }
            logger.warning(
                "a node with this id sent a heartbeat recently; waiting for it to age out (a restart after a crash) before joining",
                metadata: ["interlock.node.id": "\(nodeID)", "interlock.node.address": "\(live.address)"])
            try await Task.sleep(for: .milliseconds(settings.heartbeatIntervalMs))
        }
        try await store.heartbeat(record)
    }

    public func run() async throws {
        let listener = Task { await self.follow() }
        await cancelWhenGracefulShutdown {
            while !Task.isCancelled {
                try? await Task.sleep(for: .milliseconds(self.settings.heartbeatIntervalMs))
                guard !Task.isCancelled else { break }
                await self.beat()
            }
        }
        listener.cancel()
        await listener.value
        do {
            try await store.markNodeStopped(id: nodeID, incarnation: incarnation, atMs: wallClockMs())
        } catch {
            logger.warning("could not record the node's stop", metadata: ["error": "\(error)"])
        }
    }

    private func beat() async {
        do {
            try await store.heartbeat(record)
            if let shared {
                let freed = try await shared.releaseExpiredReservations(nowMs: wallClockMs())
                if freed > 0 {
                    logger.notice("freed budget reservations of calls that never settled (their node died)", metadata: ["count": "\(freed)"])
                    Counter(label: "interlock_budget_reservations_expired_total").increment(by: freed)
                }
            }
            _ = try await sessions?.deleteSessions(touchedBeforeMs: wallClockMs() - sessionIdleMs)
        } catch {
            if Task.isCancelled { return }
            Counter(label: "interlock_heartbeat_failures_total").increment()
            logger.warning("heartbeat failed", metadata: ["error": "\(error)"])
        }
    }

    /// Applies other nodes' changes as they announce them; after a lost connection, reads
    /// everything again (announcements made meanwhile are gone).
    private func follow() async {
        guard let stream = store.notifications() else { return }
        for await notification in stream {
            switch notification {
            case .registry: await reloadRegistry()
            case .signingKeys: await reloadSigningKeys()
            case .resync:
                await reloadRegistry()
                await reloadSigningKeys()
            case .runs, .events, .sessionEnded: break
            }
        }
    }

    private func reloadRegistry() async {
        do {
            try await registry.reload()
        } catch {
            logger.warning("reloading agents and keys failed", metadata: ["error": "\(error)"])
        }
    }

    private func reloadSigningKeys() async {
        do {
            try await tokens?.refreshSigningKeys(nowMs: wallClockMs())
        } catch {
            logger.warning("reloading signing keys failed", metadata: ["error": "\(error)"])
        }
    }
}
