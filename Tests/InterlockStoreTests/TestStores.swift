import Foundation
import InterlockCore
@testable import InterlockStore
import Logging
import Testing

/// The stores a store test runs against: SQLite always, in memory and in a file (a file
/// store writes the ledger and audit log through its second connection, `SQLiteAppender`);
/// PostgreSQL when the test script started one (`INTERLOCK_TEST_POSTGRES_URL`, see
/// `scripts/postgres`). `scripts/test` and CI always start it, so there all run.
enum StoreKind: String, Sendable, CustomTestStringConvertible {
    case sqlite, sqliteFile = "sqlite-file", postgres

    static var all: [StoreKind] { postgresURL == nil ? [.sqlite, .sqliteFile] : [.sqlite, .sqliteFile, .postgres] }

    static var postgresURL: String? {
        ProcessInfo.processInfo.environment["INTERLOCK_TEST_POSTGRES_URL"].flatMap { $0.isEmpty ? nil : $0 }
    }

    var testDescription: String { rawValue }
}

enum TestStores {
    /// PostgreSQL settings for a schema of its own (tests run in parallel on one server).
    static func postgresSettings(schema: String) throws -> PostgresSettings {
        let url = try #require(StoreKind.postgresURL, "INTERLOCK_TEST_POSTGRES_URL is not set (scripts/postgres start)")
        var settings = try PostgresSettings.parse(url: url).get()
        settings.schema = schema
        settings.poolSize = 8
        return settings
    }

    static func newSchema() -> String { "t_\(UInt64.random(in: 0...UInt64.max))" }

    /// A migrated store of `kind` (SQLite at `path`, in memory by default; PostgreSQL in a
    /// fresh schema, dropped afterwards), closed whatever `body` does.
    static func with<Result>(
        _ kind: StoreKind, sqlitePath: String = ":memory:", _ body: (any InterlockStore & RunStore) async throws -> Result
    ) async throws -> Result {
        let store: any InterlockStore & RunStore
        var schema: String?
        var file: String?
        switch kind {
        case .sqlite:
            store = try await SQLiteStore.open(path: sqlitePath)
        case .sqliteFile:
            file = sqlitePath == ":memory:" ? FileManager.default.temporaryDirectory.appendingPathComponent("interlock-store-\(UInt64.random(in: 0...UInt64.max)).sqlite").path : nil
            store = try await SQLiteStore.open(path: file ?? sqlitePath)
        case .postgres:
            schema = newSchema()
            store = try await PostgresStore.open(settings: try postgresSettings(schema: schema!), node: "test", logger: Logger(label: "test"))
        }
        do {
            try await store.migrate()
            let result = try await body(store)
            try await drop(store, schema: schema, file: file)
            return result
        } catch {
            try? await drop(store, schema: schema, file: file)
            throw error
        }
    }

    private static func drop(_ store: any InterlockStore, schema: String?, file: String?) async throws {
        if let schema, let postgres = store as? PostgresStore { try await postgres.rows("DROP SCHEMA \(schema) CASCADE") }
        try await store.close()
        if let file {
            for suffix in ["", "-wal", "-shm"] { try? FileManager.default.removeItem(atPath: file + suffix) }
        }
    }
}
