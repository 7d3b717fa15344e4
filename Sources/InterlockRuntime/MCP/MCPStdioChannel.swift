import FoundationEssentials
import InterlockCore
import Logging
import NIOCore
import NIOExtras
import NIOPosix
import Subprocess
import Synchronization

#if canImport(System)
import System
typealias PipeEnd = System.FileDescriptor
#else
import SystemPackage
typealias PipeEnd = SystemPackage.FileDescriptor
#endif

/// An MCP server Interlock runs as a child process, speaking newline-delimited JSON-RPC on
/// stdin and stdout (MCP stdio transport). One channel is one run of the process: when it
/// exits, every waiting request fails and `onExit` reports why; the upstream starts another.
///
/// swift-subprocess starts, signals and reaps the process; its pipes are SwiftNIO pipe
/// channels on the shared event loops (`NIOPipeBootstrap`), framed into lines by
/// `LineBasedFrameDecoder`, like every other socket Interlock reads.
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
        /// The process's stdin and stdout, once the pipes are set up.
        var pipe: (any Channel)?
        /// Lines sent before the pipes were ready, in order.
        var backlog: [ByteBuffer] = []
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
        self.logger = logger
        self.secrets = secrets
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
        Task {
            let reason = await channel.run(process)
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
        let line = Self.line(message)
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<JSONObject, any Error>) in
                let refusal: MCPUpstreamError? = state.withLock { state in
                    if let ended = state.ended { return .unreachable(ended) }
                    if Task.isCancelled { return .cancelled }
                    state.waiters[key] = Waiter(continuation: continuation, onNotification: onNotification, progressToken: token)
                    Self.send(line, in: &state)
                    return nil
                }
                if let refusal { continuation.resume(throwing: refusal) }
            }
        } onCancel: {
            state.withLock { $0.waiters.removeValue(forKey: key) }?.continuation.resume(throwing: MCPUpstreamError.cancelled)
        }
    }

    func notify(_ message: JSONObject, headers: [(String, String)]) async throws {
        let line = Self.line(message)
        let ended = state.withLock { state in
            if state.ended == nil { Self.send(line, in: &state) }
            return state.ended
        }
        if let ended { throw MCPUpstreamError.unreachable(ended) }
    }

    /// Closes stdin (a well-behaved server exits), then SIGTERM and SIGKILL (to its process
    /// group) after the grace period; returns once the process is gone, or after twice the
    /// grace period (a process that closed its stdout but lingers is not waited for forever).
    func close() async {
        stopping.signal()
        await ended.wait(upTo: .milliseconds(2 * shutdownGraceMs + 1_000))
    }

    private static func line(_ message: JSONObject) -> ByteBuffer {
        var buffer = ByteBuffer(bytes: JSONWriter.bytes(.object(message)))
        buffer.writeInteger(UInt8(0x0A))
        return buffer
    }

    /// Writes a line, or keeps it until the pipes are ready. Under the state lock, so lines
    /// leave in the order they were sent.
    private static func send(_ line: ByteBuffer, in state: inout State) {
        if let pipe = state.pipe {
            pipe.writeAndFlush(line, promise: nil)
        } else {
            state.backlog.append(line)
        }
    }

    private func end(_ reason: String) {
        let (waiters, pipe) = state.withLock { state in
            state.ended = reason
            defer {
                state.waiters = [:]
                state.backlog = []
            }
            return (Array(state.waiters.values), state.pipe)
        }
        pipe?.close(promise: nil)
        for waiter in waiters { waiter.continuation.resume(throwing: MCPUpstreamError.unreachable(reason)) }
        ended.signal()
    }

    /// Runs the process until it exits; returns why it ended.
    private func run(_ process: ToolSourceSettings.StdioProcess) async -> String {
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
        let stdin: (readEnd: PipeEnd, writeEnd: PipeEnd)
        let stdout: (readEnd: PipeEnd, writeEnd: PipeEnd)
        let stderr: (readEnd: PipeEnd, writeEnd: PipeEnd)
        let pipe: any Channel
        do {
            stdin = try PipeEnd.pipe()
            stdout = try PipeEnd.pipe()
            stderr = try PipeEnd.pipe()
            // Our ends of the pipes: NIO owns (and closes) them from here.
            let maxMessageBytes = maxMessageBytes
            pipe = try await NIOPipeBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                .channelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(LineBasedFrameDecoder(), maximumBufferSize: maxMessageBytes))
                        try channel.pipeline.syncOperations.addHandler(LineHandler { [weak self] line in self?.receive(line) })
                    }
                }
                .takingOwnershipOfDescriptors(input: stdout.readEnd.rawValue, output: stdin.writeEnd.rawValue).get()
            let logger = logger
            let secrets = secrets
            _ = try await NIOPipeBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                .channelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(LineBasedFrameDecoder(), maximumBufferSize: 64 * 1024))
                        // The server's log: kept out of Interlock's info logs (it may print secrets).
                        try channel.pipeline.syncOperations.addHandler(LineHandler { line in
                            let text = SecretRedaction.redact(String(decoding: line.prefix(2_000), as: UTF8.self), secrets: secrets)
                            logger.debug("upstream stderr", metadata: ["interlock.upstream.stderr": "\(text)"])
                        })
                    }
                }
                .takingOwnershipOfDescriptor(input: stderr.readEnd.rawValue).get()
        } catch {
            return "the process could not be started: its pipes failed (\(error))"
        }
        state.withLock { state in
            state.pipe = pipe
            for line in state.backlog { pipe.writeAndFlush(line, promise: nil) }
            state.backlog = []
        }
        do {
            let result = try await Subprocess.run(
                executable, arguments: Arguments(Array(process.command.dropFirst())),
                // NUL-terminated: swift-subprocess hands each entry to strdup as it is.
                environment: .custom(environment.map { Array("\($0.key)=\($0.value)".utf8) + [0] }),
                workingDirectory: process.workingDirectory.map { FilePath($0) }, platformOptions: options,
                input: .fileDescriptor(stdin.readEnd, closeAfterSpawningProcess: true),
                output: .fileDescriptor(stdout.writeEnd, closeAfterSpawningProcess: true),
                error: .fileDescriptor(stderr.writeEnd, closeAfterSpawningProcess: true)
            ) { execution in
                await withTaskGroup(of: Void.self) { group in
                    group.addTask {
                        // After close(): stdin closed, the grace period, then SIGTERM, then SIGKILL.
                        await self.stopping.wait(upTo: .seconds(86_400 * 365))
                        guard !Task.isCancelled else { return }
                        try? await pipe.close(mode: .output)
                        guard (try? await Task.sleep(for: grace)) != nil else { return }
                        try? execution.send(signal: .terminate, toProcessGroup: true)
                        guard (try? await Task.sleep(for: grace)) != nil else { return }
                        try? execution.send(signal: .kill, toProcessGroup: true)
                    }
                    group.addTask {
                        // The server closed its stdout (it is exiting), or sent a line over the limit.
                        try? await pipe.closeFuture.get()
                    }
                    // The pipe closed (the process is exiting): the kill steps stop. The kill steps
                    // ended (SIGKILL sent): the pipe closes as the process dies.
                    await group.next()
                    group.cancelAll()
                }
            }
            pipe.close(promise: nil)
            switch result.terminationStatus {
            case .exited(let code): return "the process exited with status \(code)"
            case .signaled(let signal): return "the process was killed by signal \(signal)"
            }
        } catch {
            pipe.close(promise: nil)
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
                let answer = Self.line(mcpAnswer(toServerRequest: message))
                state.withLock { Self.send(answer, in: &$0) }
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

/// Hands each line of a pipe to `onLine`; a line over the limit (or any error) closes the pipe.
private final class LineHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer

    private let onLine: ([UInt8]) -> Void

    init(onLine: @escaping ([UInt8]) -> Void) {
        self.onLine = onLine
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        onLine(Array(unwrapInboundIn(data).readableBytesView))
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }
}
