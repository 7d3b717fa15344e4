// swift-tools-version:6.1
import PackageDescription

/// Release builds of Interlock's own modules leave out the run-time exclusivity checks (7% of
/// the CPU of a model call); debug builds, which run the tests, keep them. Set
/// `INTERLOCK_EXCLUSIVITY_CHECKS=1` when building to keep them in release too. See
/// docs/ENGINEERING-NOTES.md, "Performance notes".
let keepExclusivityChecks = Context.environment["INTERLOCK_EXCLUSIVITY_CHECKS"] == "1"

let swiftSettings: [SwiftSetting] = [
    .enableUpcomingFeature("ExistentialAny"),
    .enableUpcomingFeature("InternalImportsByDefault"),
] + (keepExclusivityChecks ? [] : [.unsafeFlags(["-enforce-exclusivity=unchecked"], .when(configuration: .release))])

let package = Package(
    name: "interlock",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "interlock", targets: ["interlock"]),
    ],
    dependencies: [
        .package(url: "https://github.com/hummingbird-project/hummingbird.git", from: "2.28.1"),
        .package(url: "https://github.com/swift-server/async-http-client.git", from: "1.37.0"),
        .package(url: "https://github.com/apple/swift-http-types.git", from: "1.8.0"),
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-nio-ssl.git", from: "2.37.6"),
        .package(url: "https://github.com/apple/swift-nio-extras.git", from: "1.35.2"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-metrics.git", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-distributed-tracing.git", from: "1.7.3"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-crypto.git", from: "4.5.2"),
        .package(url: "https://github.com/apple/swift-collections.git", from: "1.6.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus.git", from: "2.4.1"),
        .package(url: "https://github.com/swift-otel/swift-otel.git", from: "1.6.0", traits: ["OTLPHTTP"]),
        .package(url: "https://github.com/vapor/sqlite-nio.git", from: "1.13.2"),
        .package(url: "https://github.com/vapor/postgres-nio.git", from: "1.33.2"),
        .package(url: "https://github.com/vapor/jwt-kit.git", from: "5.8.0"),
        .package(url: "https://github.com/jpsim/Yams.git", from: "6.2.2"),
        .package(url: "https://github.com/swiftlang/swift-subprocess.git", from: "1.0.2"),
    ],
    targets: [
        // Domain model and pipeline stages. Pure Swift: no I/O, clocks injected.
        .target(
            name: "InterlockCore",
            dependencies: [
                "InterlockPolicy",
                .product(name: "DequeModule", package: "swift-collections"),
                .product(name: "Crypto", package: "swift-crypto"),
            ],
            swiftSettings: swiftSettings
        ),
        // Policy benchmark: rule evaluation time against the same check in plain Swift.
        .executableTarget(
            name: "interlock-bench-policy",
            dependencies: ["InterlockPolicy", "InterlockCore"],
            swiftSettings: swiftSettings
        ),
        // Policy: a CEL engine of our own (parse, check, evaluate; RE2-style linear-time regex).
        .target(
            name: "InterlockPolicy",
            dependencies: [.product(name: "Crypto", package: "swift-crypto")],
            swiftSettings: swiftSettings
        ),
        // YAML configuration: interpolation, decoding, validation with file and line.
        .target(
            name: "InterlockConfig",
            dependencies: [
                "InterlockCore",
                "InterlockPolicy",
                .product(name: "Yams", package: "Yams"),
            ],
            swiftSettings: swiftSettings
        ),
        // Durable state behind one interface: SQLite embedded, PostgreSQL for clusters.
        .target(
            name: "InterlockStore",
            dependencies: [
                "InterlockCore",
                .product(name: "SQLiteNIO", package: "sqlite-nio"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "PostgresNIO", package: "postgres-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),
        // Model provider adapters: AsyncHTTPClient for streams and the async path, a per-event-loop
        // HTTP/1.1 client on NIO's codec for the event-loop fast path.
        .target(
            name: "InterlockProviders",
            dependencies: [
                "InterlockCore",
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),
        // Long-running services: the gateway engines, batched writers, tool upstream connections.
        .target(
            name: "InterlockRuntime",
            dependencies: [
                "InterlockCore",
                "InterlockConfig",
                "InterlockStore",
                "InterlockProviders",
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "DequeModule", package: "swift-collections"),
                .product(name: "JWTKit", package: "jwt-kit"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Tracing", package: "swift-distributed-tracing"),
                .product(name: "Subprocess", package: "swift-subprocess"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOExtras", package: "swift-nio-extras"),
            ],
            swiftSettings: swiftSettings
        ),
        // Hummingbird application: routes, middleware, error mapping.
        .target(
            name: "InterlockServer",
            dependencies: [
                "InterlockCore",
                "InterlockConfig",
                "InterlockStore",
                "InterlockProviders",
                "InterlockRuntime",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdCore", package: "hummingbird"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOHTTPTypes", package: "swift-nio-extras"),
                .product(name: "NIOHTTPTypesHTTP1", package: "swift-nio-extras"),
                .product(name: "HTTPTypes", package: "swift-http-types"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "Tracing", package: "swift-distributed-tracing"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),
        .executableTarget(
            name: "interlock",
            dependencies: [
                "InterlockCore",
                "InterlockConfig",
                "InterlockServer",
                "InterlockPolicy",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "OTel", package: "swift-otel"),
                .product(name: "Prometheus", package: "swift-prometheus"),
            ],
            swiftSettings: swiftSettings
        ),
        // Benchmark baseline only (bench/run): a bare Hummingbird → AsyncHTTPClient pass-through.
        .executableTarget(
            name: "interlock-bench-passthrough",
            dependencies: [
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOCore", package: "swift-nio"),
            ],
            swiftSettings: swiftSettings
        ),
        // Benchmark only (bench/pipeline): CPU per call of the pipeline stages, in process, no network.
        .executableTarget(
            name: "interlock-bench-pipeline",
            dependencies: [
                "InterlockCore", "InterlockConfig", "InterlockStore", "InterlockProviders", "InterlockRuntime",
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),
        // Benchmark only (bench/workflows/run): durable step transitions on the embedded store.
        .executableTarget(
            name: "interlock-bench-workflow",
            dependencies: [
                "InterlockCore", "InterlockConfig", "InterlockStore", "InterlockProviders", "InterlockRuntime",
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),
        // Benchmark upstream only (bench/tools/run): a fast MCP server with one tool.
        .executableTarget(
            name: "interlock-bench-mcp-upstream",
            dependencies: [
                "InterlockCore",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HTTPTypes", package: "swift-http-types"),
                .product(name: "NIOCore", package: "swift-nio"),
            ],
            swiftSettings: swiftSettings
        ),
        // Benchmark prototype only (bench/run): an event-loop-native proxy, to size the transport choice.
        .executableTarget(
            name: "interlock-bench-nio-proxy",
            dependencies: [
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
            ],
            // Bench-only prototype written in the NIO-handler style; Swift 5 mode spares it the
            // Sendable wrapping that production code on this path would carry.
            swiftSettings: [.swiftLanguageMode(.v5)]
        ),
        .testTarget(
            name: "InterlockCoreTests",
            dependencies: ["InterlockCore", "InterlockPolicy"],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "InterlockPolicyTests",
            dependencies: ["InterlockPolicy"],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "InterlockConfigTests",
            dependencies: ["InterlockConfig", "InterlockCore", "InterlockPolicy"],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "InterlockProvidersTests",
            dependencies: ["InterlockProviders", "InterlockCore"],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "InterlockStoreTests",
            dependencies: ["InterlockStore", "InterlockCore", "InterlockRuntime"],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "InterlockServerTests",
            dependencies: [
                "InterlockServer", "InterlockConfig", "InterlockCore", "InterlockProviders", "InterlockRuntime", "InterlockStore",
                .product(name: "HummingbirdTesting", package: "hummingbird"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "JWTKit", package: "jwt-kit"),
            ],
            swiftSettings: swiftSettings
        ),
    ]
)
