import ArgumentParser
import AsyncHTTPClient
import FoundationEssentials
import Hummingbird
import InterlockConfig
import InterlockCore
import InterlockProviders
import InterlockRuntime
import InterlockServer
import InterlockStore
import Logging
import Metrics
import NIOCore
import NIOPosix
import OTel
import Prometheus
import ServiceLifecycle
import Tracing

#if canImport(Glibc)
import Glibc
#endif


@main
struct Interlock: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "interlock",
        abstract: "Interlock — the governed backbone for fleets of AI agents.",
        subcommands: [Serve.self, Validate.self, Run.self, Runs.self, Approvals.self, Audit.self, Policy.self, Version.self])
}

struct Version: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Print the version.")

    func run() {
        print("interlock \(InterlockVersion.current)")
    }
}

struct Validate: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Check a configuration file and report every error with file and line.")

    @Argument(help: "The YAML configuration file.")
    var file: String

    func run() throws {
        do {
            let config = try ConfigLoader.load(path: file, environment: ProcessInfo.processInfo.environment)
            print("\(file): OK (\(config.providers.count) providers, \(config.models.count) model aliases, \(config.agents.count) agents)")
        } catch {
            printError(error.description)
            throw ExitCode(1)
        }
    }
}

struct Audit: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Check or export the tamper-evident audit log.", subcommands: [AuditVerify.self, AuditExport.self])
}

/// Where the audit commands read: `--store FILE` or the store of `--config FILE`.
struct AuditStoreOptions: ParsableArguments {
    @Option(name: .long, help: "The SQLite store file.")
    var store: String?

    @Option(name: .long, help: "A configuration file; its store is used.")
    var config: String?

    func open() async throws -> any InterlockStore {
        var path = store
        var configured: StoreSettings?
        if path == nil, let config {
            do {
                let configuration = try ConfigLoader.load(path: config, environment: ProcessInfo.processInfo.environment)
                switch configuration.store {
                case .sqlite(let file, _, _): path = file
                case .postgres: configured = configuration.store
                }
            } catch {
                printError(error.description)
                throw ExitCode(2)
            }
        }
        let name: String
        let store: any InterlockStore
        if let configured, case .postgres(let settings) = configured {
            name = "PostgreSQL at \(settings.host):\(settings.port)/\(settings.database)"
            do {
                store = try await openStore(configured, node: "audit-cli", logger: Logger(label: "interlock.store"))
            } catch {
                printError("interlock audit: \(error)")
                throw ExitCode(2)
            }
        } else {
            guard let path else {
                printError("interlock audit: give --store FILE or --config FILE")
                throw ExitCode(2)
            }
            guard FileManager.default.fileExists(atPath: path) else {
                printError("interlock audit: no store at \(path)")
                throw ExitCode(2)
            }
            name = path
            // Read only what is there: no migration, so checking an evidence copy never changes it.
            do {
                store = try await SQLiteStore.open(path: path)
            } catch {
                printError("interlock audit: \(path) is not an Interlock store (\(error))")
                throw ExitCode(2)
            }
        }
        let hasAudit: Bool
        do {
            hasAudit = try await store.schemaVersion() >= (configured == nil ? 2 : 1)
        } catch {
            try? await store.close()
            printError("interlock audit: \(name) is not an Interlock store (\(error))")
            throw ExitCode(2)
        }
        guard hasAudit else {
            try? await store.close()
            printError("interlock audit: \(name) has no audit log yet")
            throw ExitCode(2)
        }
        return store
    }
}

struct AuditVerify: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "verify",
        abstract: "Walk the audit chain; exit 1 at the first record that was altered, removed, inserted or reordered.")

    @OptionGroup var options: AuditStoreOptions

    func run() async throws {
        let store = try await options.open()
        var chain = AuditChain()
        var position: Int64 = 0
        var failure: AuditChain.Break?
        while failure == nil {
            let page = try await store.auditRecords(afterPosition: position, limit: 1_000)
            if page.records.isEmpty { break }
            failure = chain.verify(page.records)
            position = page.lastPosition
        }
        try? await store.close()
        if let failure {
            printError("audit chain broken at \(failure)")
            throw ExitCode(1)
        }
        // Truncating the tail leaves a valid shorter chain: compare the head with one recorded elsewhere.
        print("audit chain intact: \(chain.lastSequence) records; head \(chain.lastSequence) \(chain.lastHash)")
    }
}

struct AuditExport: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "export", abstract: "Write the audit log as JSON Lines, one record per line with its hashes.")

    @OptionGroup var options: AuditStoreOptions

    @Option(name: .long, help: "Write to this file instead of standard output.")
    var output: String?

    func run() async throws {
        let store = try await options.open()
        var lines: [UInt8] = []
        var position: Int64 = 0
        while true {
            let page = try await store.auditRecords(afterPosition: position, limit: 1_000)
            if page.records.isEmpty { break }
            for record in page.records {
                CanonicalJSON.write(record.json(includingHash: true), into: &lines)
                lines.append(UInt8(ascii: "\n"))
            }
            position = page.lastPosition
        }
        try? await store.close()
        if let output {
            guard FileManager.default.createFile(atPath: output, contents: Data(lines)) else {
                printError("interlock audit export: cannot write \(output)")
                throw ExitCode(2)
            }
        } else {
            var offset = 0
            while offset < lines.count {
                let written = lines[offset...].withUnsafeBytes { write(1, $0.baseAddress, $0.count) }
                guard written > 0 else { throw ExitCode(2) }
                offset += written
            }
        }
    }
}

struct Serve: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Run the Interlock server.")

    @Option(name: .long, help: "The YAML configuration file.")
    var config: String

    @Option(name: .long, help: "Address to listen on (overrides server.host).")
    var host: String?

    @Option(name: .long, help: "Port to listen on; 0 picks a free one (overrides server.port).")
    var port: Int?

    func run() async throws {
        let environment = ProcessInfo.processInfo.environment
        let configuration: InterlockConfiguration
        do {
            configuration = try ConfigLoader.load(path: config, environment: environment)
        } catch {
            printError(error.description)
            throw ExitCode(1)
        }
        // Before anything starts NIO's shared event-loop group.
        if let threads = configuration.server.eventLoopThreads { NIOSingletons.groupLoopCountSuggestion = threads }
        let level = Logger.Level(rawValue: configuration.logging.level) ?? .info
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return DeferredMetadataLogHandler(handler)
        }
        var logger = Logger(label: "interlock")
        logger[metadataKey: "interlock.node.id"] = .string(configuration.node.id)

        let registry = PrometheusCollectorRegistry()
        MetricsSystem.bootstrap(PrometheusMetricsFactory(registry: registry))

        var services: [any Service] = []
        if Serve.tracingRequested(environment) {
            var otel = OTel.Configuration.default
            otel.serviceName = "interlock"
            otel.logs.enabled = false
            otel.metrics.enabled = false
            otel.traces.otlpExporter.protocol = .httpProtobuf
            services.append(try OTel.bootstrap(configuration: otel))
            logger.info("OpenTelemetry tracing enabled")
        }

        let store = try await openStore(configuration.store, node: configuration.node.id, logger: Logger(label: "interlock.store"))
        try await store.migrate()

        let ledger = UsageLedgerWriter(
            store: store, flushInterval: .milliseconds(configuration.ledger.flushIntervalMs), maxBatch: configuration.ledger.maxBatch,
            maxBacklog: configuration.ledger.maxBacklogRecords, logger: Logger(label: "interlock.ledger"))
        let audit = try await AuditLog.open(
            store: store, node: configuration.node.id, flushInterval: .milliseconds(configuration.audit.flushIntervalMs),
            maxBatch: configuration.audit.maxBatch, maxBacklog: configuration.audit.maxBacklogRecords, logger: Logger(label: "interlock.audit"),
            wallClockMs: { Int64(Date().timeIntervalSince1970 * 1000) })
        let tokens = try await TokenService.open(store: store, settings: configuration.auth, nowMs: Int64(Date().timeIntervalSince1970 * 1000))
        // This process's run of the node: workflow leases and shared budget reservations are
        // held under `<node>/<incarnation>`.
        var generator = SystemRandomNumberGenerator()
        let incarnation = String(generator.next(), radix: 36)
        let leaseOwner = "\(configuration.node.id)/\(incarnation)"
        let shared: SharedLimits? =
            configuration.store.isShared
            ? (store as? any SharedLimitStore).map {
                SharedLimits(store: $0, owner: leaseOwner, configuration: configuration, logger: Logger(label: "interlock.limits"), wallClockMs: {
                    Int64(Date().timeIntervalSince1970 * 1000)
                })
            } : nil
        let governor = try await CallGovernor.open(
            configuration: configuration, store: store, ledger: ledger, audit: audit, tokens: tokens, shared: shared, logger: Logger(label: "interlock.pipeline"))
        let host = self.host ?? configuration.server.host
        let port = self.port ?? configuration.server.port
        let membership = NodeMembership(
            configuration: configuration, store: store, registry: governor.registry, tokens: tokens, incarnation: incarnation, address: "\(host):\(port)",
            logger: Logger(label: "interlock.cluster"))
        try await membership.join()

        var clientConfiguration = HTTPClient.Configuration()
        clientConfiguration.connectionPool = .init(idleTimeout: .seconds(60), concurrentHTTP1ConnectionsPerHostSoftLimit: configuration.providers.map(\.maxConnections).max() ?? 64)
        clientConfiguration.timeout = .init(connect: .seconds(10), read: .seconds(300))
        // A model or tool API has no business redirecting; following one could carry upstream
        // credentials to another host.
        clientConfiguration.redirectConfiguration = .disallow
        // Interlock's own `chat {alias}` span covers the upstream call; without a tracer the
        // client's per-request span is pure overhead.
        if !Serve.tracingRequested(environment) { clientConfiguration.tracing.tracer = nil }
        let httpClient = HTTPClient(eventLoopGroupProvider: .singleton, configuration: clientConfiguration)
        let gateway = ModelGateway(
            configuration: configuration, governor: governor, httpUpstream: HTTPModelUpstream(client: httpClient), mockUpstream: MockModelUpstream(),
            logger: Logger(label: "interlock.gateway"))

        // The event-loop path's client lives on the server's event loops.
        let loopClient =
            configuration.server.eventLoopPath
            ? try LoopHTTPClient(group: MultiThreadedEventLoopGroup.singleton, configuration: .init(configuration.gateway.upstreamPool)) : nil

        let tools =
            configuration.toolSources.isEmpty
            ? nil
            : try await ToolGateway.open(
                configuration: configuration, governor: governor, client: httpClient, store: store, logger: Logger(label: "interlock.tools"))
        let workflows = WorkflowEngine(
            configuration: configuration, store: store, governor: governor, models: gateway, tools: tools, httpClient: httpClient,
            logger: Logger(label: "interlock.workflows"), owner: leaseOwner)
        try await workflows.open()
        let app = buildApplication(
            InterlockServices(
                configuration: configuration, gateway: gateway, store: store, ledger: ledger, metrics: registry, loopClient: loopClient,
                tools: tools, workflows: workflows),
            host: host, port: port, logger: logger
        ) { boundPort in
            // Tests and scripts read this line to learn the port when 0 was asked for.
            membership.setAddress("\(host):\(boundPort)")
            print("interlock listening on http://\(host):\(boundPort)")
            flushStandardOutput()
        }
        // Graceful shutdown runs in reverse order: the server drains first, then the ledger writes what is left.
        // Tool upstreams (stdio processes) stop after the server has drained.
        // Workflow runs stop (checkpointing what finishes) after the server and before the tools.
        // Membership goes last of the background services (stopped first after the server, it
        // marks the node stopped while the store is still open); shared limits settle what
        // the drained requests reserved before the ledger stops.
        services += [ledger, audit.writer] + (shared.map { [$0 as any Service] } ?? []) + (tools.map { [$0 as any Service] } ?? []) + [workflows, membership, app]
        var groupConfiguration = ServiceGroupConfiguration(
            services: services.map { .init(service: $0) },
            gracefulShutdownSignals: [.sigterm, .sigint],
            logger: logger)
        // Past this, shutdown stops waiting for in-flight requests and streams.
        groupConfiguration.maximumGracefulShutdownDuration = .milliseconds(configuration.server.shutdownGraceMs)
        let group = ServiceGroup(configuration: groupConfiguration)
        logger.info("starting", metadata: ["interlock.version": "\(InterlockVersion.current)", "interlock.address": "\(host):\(port)"])
        do {
            try await group.run()
        } catch {
            logger.error("service group failed", metadata: ["error": "\(error)"])
        }
        // Last writes of what the writers still hold, bounded: with the store gone for good
        // a node must still stop (and say what it could not write).
        let finalFlush = Task {
            await ledger.flush()
            await audit.writer.flush()
        }
        let flushDeadline = Task {
            try await Task.sleep(for: .milliseconds(configuration.server.shutdownGraceMs))
            finalFlush.cancel()
        }
        await finalFlush.value
        flushDeadline.cancel()
        if ledger.backlog > 0 || audit.writer.backlog > 0 {
            logger.error(
                "the store could not be reached before shutdown; records not written",
                metadata: ["interlock.ledger.unwritten": "\(ledger.backlog)", "interlock.audit.unwritten": "\(audit.writer.backlog)"])
        }
        try? await httpClient.shutdown()
        loopClient?.closeIdleConnections()
        try? await store.close()
        logger.info("stopped", metadata: ["interlock.ledger.written": "\(ledger.writtenCount)"])
    }

    /// Tracing is on when an OTLP endpoint or exporter is named in the standard variables.
    static func tracingRequested(_ environment: [String: String]) -> Bool {
        if let exporter = environment["OTEL_TRACES_EXPORTER"] { return exporter != "none" }
        return environment["OTEL_EXPORTER_OTLP_ENDPOINT"] != nil || environment["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"] != nil
    }
}

/// Writes a line to standard error.
func printError(_ message: String) {
    let line = message + "\n"
    _ = line.withCString { write(2, $0, strlen($0)) }
}

/// Flushes standard output so a reader of a pipe sees the line at once.
func flushStandardOutput() {
    fflush(nil)
}
