import FoundationEssentials
import InterlockCore
import Logging
import Subprocess
import Synchronization

#if canImport(System)
import System
#else
import SystemPackage
#endif

/// An MCP server Interlock runs as a child process, speaking newline-delimited JSON-RPC on
/// stdin and stdout (MCP stdio transport). One channel is one run of the process: when it
/// exits, every waiting request fails and `onExit` reports why; the upstream starts another.
///
/// The process does not inherit Interlock's environment: only `PATH`, `HOME`, `LANG`, the
/// names the config lists in `inherit_env`, and the config's `env`.
final class MCPStdioChannel: MCPChannel {
    private struct Waiter {
        let continuation: CheckedContinuation<JSONObject, any Error>
        let onNotification: @Sendable (JSONObject) -> Void
        /// Progress notifications name the request by its progress token, not its id.
        let progressToken: JSONValue?
    }

    private struct State {
        var waiters: [String: Waiter] = [:]
        var outgoing: AsyncStream<[UInt8]>.Continuation?
        /// Why the process is gone, once it is.
        var ended: String?
    }

    private let state = Mutex(State())
    private let maxMessageBytes: Int
    private let logger: Logger
    /// Values kept out of the log lines made from the server's stderr.
    private let secrets: [Secret?]
    /// Notifications not tied to a request (`notifications/tools/list_changed`).
    private let onServerNotification: @Sendable (JSONObject) -> Void
    /// Signalled once the process is gone.
    private let ended = WakeSignal()
    private let shutdownGraceMs: Int
    /// Signalled by `close()`: the process gets its grace period, then the signals.
    private let stopping = WakeSignal()

    private init(
        maxMessageBytes: Int, shutdownGraceMs: Int, logger: Logger, secrets: [Secret?], onServerNotification: @escaping @Sendable (JSONObject) -> Void
    ) {
        self.maxMessageBytes = maxMessageBytes
        self.shutdownGraceMs = shutdownGraceMs
        self.secrets = secrets
        self.logger = logger
        self.onServerNotification = onServerNotification
    }

    /// Starts the process. `onExit` is called once, with the reason, when it is gone.
    static func start(
        _ process: ToolSourceSettings.StdioProcess, maxMessageBytes: Int, logger: Logger,
        onServerNotification: @escaping @Sendable (JSONObject) -> Void, onExit: @escaping @Sendable (MCPStdioChannel, String) -> Void
    ) -> MCPStdioChannel {
        let channel = MCPStdioChannel(
            maxMessageBytes: maxMessageBytes, shutdownGraceMs: process.shutdownGraceMs, logger: logger, secrets: process.environment.values.map { $0 },
            onServerNotification: onServerNotification)
        let (outgoing, continuation) = AsyncStream<[UInt8]>.makeStream(bufferingPolicy: .unbounded)
        channel.state.withLock { $0.outgoing = continuation }
        Task {
            let reason = await channel.run(process, outgoing: outgoing)
            channel.end(reason)
            onExit(channel, reason)
        }
        return channel
    }

    func negotiated(version: String) {}

    func request(
        _ message: JSONObject, headers: [(String, String)], timeoutMs: Int, onNotification: @escaping @Sendable (JSONObject) -> Void
    ) async throws -> JSONObject {
        let key = JSONWriter.string(message["id"] ?? .null)
        let token = message["params"]?["_meta"]?["progressToken"]
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<JSONObject, any Error>) in
                let refusal: MCPUpstreamError? = state.withLock { state in
                    if let ended = state.ended { return .unreachable(ended) }
                    if Task.isCancelled { return .cancelled }
                    state.waiters[key] = Waiter(continuation: continuation, onNotification: onNotification, progressToken: token)
                    state.outgoing?.yield(JSONWriter.bytes(.object(message)) + [0x0A])
                    return nil
                }
                if let refusal { continuation.resume(throwing: refusal) }
            }
        } onCancel: {
            state.withLock { $0.waiters.removeValue(forKey: key) }?.continuation.resume(throwing: MCPUpstreamError.cancelled)
        }
    }

    func notify(_ message: JSONObject, headers: [(String, String)]) async throws {
        let ended = state.withLock { state in
            if state.ended == nil { state.outgoing?.yield(JSONWriter.bytes(.object(message)) + [0x0A]) }
            return state.ended
        }
        if let ended { throw MCPUpstreamError.unreachable(ended) }
    }

    /// Closes stdin (a well-behaved server exits), then SIGTERM and SIGKILL (to its process
    /// group) after the grace period; returns once the process is gone.
    func close() async {
        state.withLock { $0.outgoing?.finish() }
        stopping.signal()
        // Bounded: a process that closed its stdout but lingers is not waited for forever.
        await ended.wait(upTo: .milliseconds(2 * shutdownGraceMs + 1_000))
    }

    private func end(_ reason: String) {
        let waiters = state.withLock { state in
            state.ended = reason
            state.outgoing?.finish()
            defer { state.waiters = [:] }
            return state.waiters.values
        }
        for waiter in waiters { waiter.continuation.resume(throwing: MCPUpstreamError.unreachable(reason)) }
        ended.signal()
    }

    /// Runs the process until it exits; returns why it ended.
    private func run(_ process: ToolSourceSettings.StdioProcess, outgoing: AsyncStream<[UInt8]>) async -> String {
        let program = process.command[0]
        let executable: Executable = program.contains("/") ? .path(FilePath(program)) : .name(program)
        var environment: [String: String] = [:]
        let inherited = ProcessInfo.processInfo.environment
        for name in ["PATH", "HOME", "LANG", "LC_ALL", "TMPDIR"] + process.inheritEnvironment {
            if let value = inherited[name] { environment[name] = value }
        }
        for (name, value) in process.environment { environment[name] = value.reveal() }
        let grace = Duration.milliseconds(process.shutdownGraceMs)
        // Its own process group, so the signals also reach what a wrapper (npx, uvx) started.
        var options = PlatformOptions()
        options.processGroupID = 0
        do {
            let result = try await Subprocess.run(
                executable, arguments: Arguments(Array(process.command.dropFirst())),
                environment: .custom(environment.map { Array("\($0.key)=\($0.value)".utf8) }),
                workingDirectory: process.workingDirectory.map { FilePath($0) }, platformOptions: options,
                input: .inputWriter, output: .sequence, error: .sequence
            ) { execution in
                await withTaskGroup(of: Void.self) { group in
                    group.addTask {
                        // Messages to the server, in order; when the stream ends (close), stdin is closed.
                        for await line in outgoing {
                            guard (try? await execution.standardInputWriter.write(line)) != nil else { break }
                        }
                        try? await execution.standardInputWriter.finish()
                    }
                    group.addTask {
                        // After close(): the grace period, then SIGTERM, then SIGKILL — even when the
                        // writer is stuck on a full pipe because the server stopped reading.
                        await self.stopping.wait(upTo: .seconds(86_400 * 365))
                        guard !Task.isCancelled, (try? await Task.sleep(for: grace)) != nil else { return }
                        try? execution.send(signal: .terminate, toProcessGroup: true)
                        guard (try? await Task.sleep(for: grace)) != nil else { return }
                        try? execution.send(signal: .kill, toProcessGroup: true)
                    }
                    group.addTask {
                        // The server's log: kept out of Interlock's info logs (it may print secrets).
                        do {
                            for try await line in execution.standardError.strings() {
                                let text = SecretRedaction.redact(String(line.prefix(2_000)), secrets: self.secrets)
                                self.logger.debug("upstream stderr", metadata: ["interlock.upstream.stderr": "\(text)"])
                            }
                        } catch {}
                    }
                    var buffer: [UInt8] = []
                    do {
                        for try await chunk in execution.standardOutput {
                            // Only the new bytes are searched for line ends.
                            var scanned = buffer.count
                            chunk.withUnsafeBytes { buffer.append(contentsOf: $0) }
                            var start = 0
                            while let newline = buffer[scanned...].firstIndex(of: 0x0A) {
                                self.receive(Array(buffer[start..<newline]))
                                start = newline + 1
                                scanned = start
                            }
                            if start > 0 { buffer.removeFirst(start) }
                            if buffer.count > self.maxMessageBytes {
                                self.logger.warning("upstream sent a message over max_response_bytes; stopping it")
                                try? execution.send(signal: .kill)
                                break
                            }
                        }
                    } catch {}
                    // stdout closed: the process is ending.
                    group.cancelAll()
                }
            }
            switch result.terminationStatus {
            case .exited(let code): return "the process exited with status \(code)"
            case .signaled(let signal): return "the process was killed by signal \(signal)"
            }
        } catch {
            return "the process could not be started: \(error)"
        }
    }

    /// One line from the server: a response for a waiting request, a notification, or a request.
    private func receive(_ line: [UInt8]) {
        guard !line.isEmpty, case .object(let message)? = try? JSONParser.parse(line) else {
            if !line.isEmpty { logger.debug("upstream wrote a line that is not JSON-RPC on stdout") }
            return
        }
        if let method = message["method"]?.stringValue {
            if let id = message["id"], !id.isNull {
                let answer = JSONWriter.bytes(.object(mcpAnswer(toServerRequest: message))) + [0x0A]
                _ = state.withLock { $0.outgoing?.yield(answer) }
                return
            }
            if method == "notifications/progress", let token = message["params"]?["progressToken"] {
                let handler = state.withLock { $0.waiters.values.first { $0.progressToken == token }?.onNotification }
                handler?(message)
                return
            }
            onServerNotification(message)
            return
        }
        guard let id = message["id"] else { return }
        state.withLock { $0.waiters.removeValue(forKey: JSONWriter.string(id)) }?.continuation.resume(returning: message)
    }
}
