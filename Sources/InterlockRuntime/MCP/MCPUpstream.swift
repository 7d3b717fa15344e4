import AsyncHTTPClient
import InterlockCore
import InterlockProviders
import Logging
import Synchronization

/// One upstream MCP server: its live channel (opened with the `initialize` handshake when
/// there is none, dropped when it fails so the next use opens another), its tool list, and
/// tool calls with timeouts, cancellation and progress.
final class MCPUpstream: Sendable {
    let settings: ToolSourceSettings
    private let client: HTTPClient
    private let logger: Logger
    /// Live channels by session key: one for most upstreams; one per subject (user or agent)
    /// when Interlock authenticates on behalf of callers, since a server binds a session to
    /// whoever opened it. Least recently used ones beyond `maxSessions` are closed.
    private let channels = Mutex<[String: (channel: any MCPChannel, lastUsed: ContinuousClock.Instant)]>([:])
    private let maxSessions = 256
    private let connecting = AsyncSerialGate()
    private let nextID = Atomic<Int>(0)
    private let stopped = Atomic<Bool>(false)
    /// Told when the upstream's tools may have changed or its process ended.
    private let onChange: @Sendable (String?) -> Void

    /// `onChange(nil)`: the server says its tool list changed; `onChange(reason)`: the channel
    /// ended (a stdio process exited), why.
    init(settings: ToolSourceSettings, client: HTTPClient, logger: Logger, onChange: @escaping @Sendable (String?) -> Void) {
        self.settings = settings
        self.client = client
        self.logger = logger
        self.onChange = onChange
    }

    /// Every tool the server lists (all pages).
    func listTools(headers: [(String, String)], sessionKey: String = "") async throws -> [JSONObject] {
        var tools: [JSONObject] = []
        var cursor: JSONValue?
        for _ in 0..<1_000 {
            var params: JSONObject = [:]
            if let cursor { params["cursor"] = cursor }
            let result = try await send(
                "tools/list", params: params, headers: headers, sessionKey: sessionKey, timeoutMs: settings.connectTimeoutMs, onProgress: nil)
            for case .object(let tool) in result["tools"]?.arrayValue ?? [] { tools.append(tool) }
            guard let next = result["nextCursor"], !next.isNull else { return tools }
            cursor = next
        }
        throw MCPUpstreamError.protocolViolation("tools/list did not stop paginating")
    }

    /// `tools/call`. `meta` goes in `params._meta` (the idempotency key); with `onProgress`,
    /// a progress token is added and the server's progress notifications are handed on.
    func callTool(
        _ name: String, arguments: JSONObject, meta: JSONObject, headers: [(String, String)], sessionKey: String = "",
        onProgress: (@Sendable (JSONObject) -> Void)?
    ) async throws -> JSONObject {
        try await send(
            "tools/call", params: ["name": .string(name), "arguments": .object(arguments), "_meta": .object(meta)], headers: headers,
            sessionKey: sessionKey, timeoutMs: settings.timeoutMs, onProgress: onProgress)
    }

    /// The shared HTTP session, if one is open: what the event-loop path needs to send a
    /// request on it itself.
    func currentHTTPSession() -> (target: UpstreamTarget, id: String?, version: String?)? {
        guard let channel = channels.withLock({ $0[""]?.channel }) as? MCPHTTPChannel, let target = channel.loopTarget else { return nil }
        let state = channel.sessionState
        return (target, state.id, state.version)
    }

    /// A request id no other request on this upstream uses.
    func nextRequestID() -> JSONValue {
        .integer(Int64(nextID.add(1, ordering: .relaxed).newValue))
    }

    /// `notifications/cancelled` for a request sent on the shared session (best effort).
    func notifyCancelled(_ id: JSONValue, reason: String) async {
        guard let channel = channels.withLock({ $0[""]?.channel }) else { return }
        try? await withMCPTimeout(.seconds(2)) {
            try await channel.notify(["jsonrpc": "2.0", "method": "notifications/cancelled", "params": ["requestId": id, "reason": .string(reason)]], headers: [])
        }
    }

    /// Ends the session or stops the process; the upstream is not used again.
    func stop() async {
        stopped.store(true, ordering: .relaxed)
        let current = channels.withLock { channels in defer { channels = [:] }; return channels.values.map(\.channel) }
        for channel in current { await channel.close() }
    }

    /// One request with the upstream's timeout. A session the server forgot (404) is opened
    /// again and the request sent once more: the server refused it unseen, so this repeats
    /// nothing. On timeout or cancellation the server is told (`notifications/cancelled`).
    private func send(
        _ method: String, params: JSONObject, headers: [(String, String)], sessionKey: String, timeoutMs: Int,
        onProgress: (@Sendable (JSONObject) -> Void)?
    ) async throws -> JSONObject {
        var retriedSession = false
        while true {
            let channel = try await liveChannel(headers: headers, key: sessionKey)
            let id = JSONValue.integer(Int64(nextID.add(1, ordering: .relaxed).newValue))
            var params = params
            if onProgress != nil {
                var meta = params["_meta"]?.objectValue ?? [:]
                meta["progressToken"] = .string("interlock-\(id)")
                params["_meta"] = .object(meta)
            }
            let message: JSONObject = ["jsonrpc": "2.0", "id": id, "method": .string(method), "params": .object(params)]
            let answer: JSONObject
            do {
                answer = try await withMCPTimeout(.milliseconds(timeoutMs)) {
                    try await channel.request(message, headers: headers, timeoutMs: timeoutMs) { [onChange = self.onChange] notification in
                        switch notification["method"]?.stringValue {
                        case "notifications/progress":
                            if let params = notification["params"]?.objectValue { onProgress?(params) }
                        case "notifications/tools/list_changed":
                            onChange(nil)
                        default:
                            break
                        }
                    }
                }
            } catch {
                let failure = (error as? MCPUpstreamError) ?? .cancelled
                switch failure {
                case .sessionExpired where !retriedSession:
                    retriedSession = true
                    drop(channel)
                    continue
                case .timeout, .cancelled:
                    // The server stops working on it (it may have started).
                    let reason = failure == .timeout ? "timed out after \(timeoutMs) ms" : "the caller cancelled"
                    Task { try? await withMCPTimeout(.seconds(2)) {
                        try await channel.notify(
                            ["jsonrpc": "2.0", "method": "notifications/cancelled", "params": ["requestId": id, "reason": .string(reason)]], headers: headers)
                    } }
                    // A server that cannot even list its tools in time is wedged: a stdio one is
                    // started again, an HTTP one gets a new session.
                    if failure == .timeout, method != "tools/call" { drop(channel) }
                case .unreachable, .sessionExpired:
                    drop(channel)
                case .protocolViolation, .rpc, .tooLarge, .unauthorized, .httpStatus:
                    // This request failed; the connection and other calls on it are fine.
                    break
                }
                throw failure
            }
            if let error = answer["error"] {
                throw MCPUpstreamError.rpc(code: Int(error["code"]?.int64Value ?? -32603), message: error["message"]?.stringValue ?? "")
            }
            guard case .object(let result)? = answer["result"] else {
                throw MCPUpstreamError.protocolViolation("the answer to '\(method)' has no result")
            }
            return result
        }
    }

    /// The channel for `key`, after the `initialize` handshake; one handshake at a time.
    private func liveChannel(headers: [(String, String)], key: String) async throws -> any MCPChannel {
        if let current = touch(key) { return current }
        return try await connecting.run {
            if let current = self.touch(key) { return current }
            guard !self.stopped.load(ordering: .relaxed) else { throw MCPUpstreamError.unreachable("Interlock is shutting down") }
            let opened = self.open()
            do {
                let id = JSONValue.integer(Int64(self.nextID.add(1, ordering: .relaxed).newValue))
                let timeoutMs = self.settings.connectTimeoutMs
                let answer = try await withMCPTimeout(.milliseconds(timeoutMs)) {
                    try await opened.request([
                        "jsonrpc": "2.0", "id": id, "method": "initialize",
                        "params": [
                            "protocolVersion": .string(MCPProtocol.versions[0]), "capabilities": .object([:]),
                            "clientInfo": ["name": "interlock", "version": .string(InterlockVersion.current)],
                        ],
                    ], headers: headers, timeoutMs: timeoutMs) { _ in }
                }
                if let error = answer["error"] {
                    throw MCPUpstreamError.protocolViolation("initialize was refused: \(error["message"]?.stringValue ?? "")")
                }
                guard let version = answer["result"]?["protocolVersion"]?.stringValue, MCPProtocol.versions.contains(version) else {
                    throw MCPUpstreamError.protocolViolation(
                        "the server speaks MCP \(answer["result"]?["protocolVersion"]?.stringValue ?? "(none)"); Interlock speaks \(MCPProtocol.versions.joined(separator: ", "))")
                }
                opened.negotiated(version: version)
                try await opened.notify(["jsonrpc": "2.0", "method": "notifications/initialized"], headers: headers)
                // stop() may have run during the handshake: it found nothing to close.
                guard !self.stopped.load(ordering: .relaxed) else { throw MCPUpstreamError.unreachable("Interlock is shutting down") }
                let evicted = self.channels.withLock { channels -> (any MCPChannel)? in
                    var evicted: (any MCPChannel)?
                    if channels.count >= self.maxSessions, let oldest = channels.min(by: { $0.value.lastUsed < $1.value.lastUsed })?.key {
                        evicted = channels.removeValue(forKey: oldest)?.channel
                    }
                    channels[key] = (opened, .now)
                    return evicted
                }
                if let evicted { Task { await evicted.close() } }
                return opened
            } catch {
                await opened.close()
                throw error
            }
        }
    }

    private func open() -> any MCPChannel {
        switch settings.mcpTransport {
        case .streamableHTTP(let url)?:
            return MCPHTTPChannel(url: url, client: client, maxResponseBytes: settings.maxResponseBytes)
        case .stdio(let process)?:
            let onChange = self.onChange
            return MCPStdioChannel.start(
                process, maxMessageBytes: settings.maxResponseBytes, logger: logger,
                onServerNotification: { message in
                    if message["method"]?.stringValue == "notifications/tools/list_changed" { onChange(nil) }
                },
                onExit: { [weak self] channel, reason in
                    guard let self else { return }
                    self.drop(channel)
                    // Stopping it was Interlock's doing, not a failure.
                    if !self.stopped.load(ordering: .relaxed) { onChange(reason) }
                })
        case nil:
            preconditionFailure("an MCP upstream without a transport passed validation")
        }
    }

    /// The live channel for `key`, marked used.
    private func touch(_ key: String) -> (any MCPChannel)? {
        channels.withLock { channels in
            guard let entry = channels[key] else { return nil }
            channels[key] = (entry.channel, .now)
            return entry.channel
        }
    }

    /// Forgets `failed` if it is still a live channel (the next use opens another).
    private func drop(_ failed: any MCPChannel) {
        let dropped = channels.withLock { channels -> (any MCPChannel)? in
            guard let key = channels.first(where: { $0.value.channel === failed })?.key else { return nil }
            return channels.removeValue(forKey: key)?.channel
        }
        if let dropped { Task { await dropped.close() } }
    }
}

/// Wakes waiting tasks early (an upstream's process exited, its tools changed, a call
/// failed). A signal with nobody waiting is kept for the next wait.
final class WakeSignal: Sendable {
    private struct State {
        var pending = false
        var nextID = 0
        var waiters: [Int: CheckedContinuation<Void, Never>] = [:]
    }

    private let state = Mutex(State())

    /// Tasks waiting now (tests).
    var waiting: Int { state.withLock { $0.waiters.count } }

    func signal() {
        let waiters = state.withLock { state in
            defer { state.waiters = [:] }
            if state.waiters.isEmpty { state.pending = true }
            return Array(state.waiters.values)
        }
        for waiter in waiters { waiter.resume() }
    }

    /// Returns when signalled (or a signal came since the last wait), after `timeout`, or when
    /// the task is cancelled.
    func wait(upTo timeout: Duration) async {
        await withTaskGroup(of: Void.self) { group in
            group.addTask { try? await Task.sleep(for: timeout) }
            group.addTask { await self.next() }
            await group.next()
            group.cancelAll()
        }
    }

    private func next() async {
        let id = state.withLock { state in
            defer { state.nextID += 1 }
            return state.nextID
        }
        await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                let resumeNow = state.withLock { state -> Bool in
                    if state.pending {
                        state.pending = false
                        return true
                    }
                    // Cancelled before it began waiting: a signal stays for the next wait.
                    if Task.isCancelled { return true }
                    state.waiters[id] = continuation
                    return false
                }
                if resumeNow { continuation.resume() }
            }
        } onCancel: {
            state.withLock { $0.waiters.removeValue(forKey: id) }?.resume()
        }
    }
}
