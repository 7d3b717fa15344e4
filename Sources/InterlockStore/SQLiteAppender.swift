import InterlockCore
import Logging
import NIOPosix
import Synchronization
import VaporCSQLite

/// The usage ledger's and audit log's batches, written on a connection of their own with
/// statements prepared once.
///
/// sqlite-nio compiles every statement anew and boxes every bound value, so a batch written
/// through it was one multi-row `INSERT` of up to 30,000 placeholders, parsed and planned on
/// every flush, plus a thread-pool round trip for each of `BEGIN`, the `INSERT`s and `COMMIT`.
/// Here a batch is one trip to the pool: `BEGIN IMMEDIATE`, one execution of a prepared
/// `INSERT` of `rowsPerStatement` rows per that many records (a single-row one for the rest),
/// `COMMIT`. Rows in one statement share its start, its cursors and the table's
/// `AUTOINCREMENT` bookkeeping, and each insert lands next to the one before.
///
/// It is the SQLite library sqlite-nio vendors (`VaporCSQLite`), not a second copy, so both
/// connections share one view of the file's locks. `SQLiteStore` runs these writes inside its
/// write turn, so the two connections never wait for each other's write lock. Only a file
/// database can have a second connection; `:memory:` stores write through sqlite-nio.
final class SQLiteAppender: @unchecked Sendable {
    // `@unchecked`: the handle and the prepared statements are used only inside
    // `SQLiteStore`'s write turn, one batch at a time, on a thread-pool thread.
    private let db: OpaquePointer
    /// A thread of the appender's own, so its priority can be its own (`BackgroundPriority`).
    private let threadPool: NIOThreadPool
    /// Nil: batches run at the normal priority.
    let priority: BackgroundPriority?
    /// Set by `close()` once the thread is being shut down.
    private let poolClosed = Atomic(false)
    private var statements: [Statement: OpaquePointer] = [:]
    /// Set by `close()`: the handle is gone, and a late batch must fail, not use it.
    private var closed = false
    /// Where the texts of one execution of an `INSERT` are copied and bound from, so SQLite
    /// does not allocate and copy each one itself (`SQLITE_STATIC`; a text that no longer fits
    /// is bound the usual way). Each execution starts at its beginning; its bindings are
    /// cleared after the step, before the room is written again.
    private let textRoom = UnsafeMutableRawBufferPointer.allocate(byteCount: SQLiteAppender.textRoomBytes, alignment: 8)
    static let textRoomBytes = 64 * 1024

    /// Rows per execution of the multi-row `INSERT`s (parameters: rows × columns, far below
    /// SQLite's limit of 32,766).
    static let rowsPerStatement = 32

    private enum Statement: Hashable {
        case begin, commit, rollback, auditHead
        /// An `INSERT` of `rows` rows.
        case insertUsage(rows: Int), insertAudit(rows: Int)

        var sql: String {
            switch self {
            case .begin: return "BEGIN IMMEDIATE"
            case .commit: return "COMMIT"
            case .rollback: return "ROLLBACK"
            case .insertUsage(let rows): return Self.insert(rows, into: "usage_ledger", StoreRecords.usageColumns)
            case .insertAudit(let rows): return Self.insert(rows, into: "audit_log", StoreRecords.auditColumns)
            case .auditHead: return "SELECT seq, hash FROM audit_log ORDER BY pos DESC LIMIT 1"
            }
        }

        private static func insert(_ rows: Int, into table: String, _ columns: [String]) -> String {
            let row = "(" + Array(repeating: "?", count: columns.count).joined(separator: ",") + ")"
            return "INSERT INTO \(table) (\(columns.joined(separator: ","))) VALUES " + Array(repeating: row, count: rows).joined(separator: ",")
        }
    }

    private init(db: OpaquePointer, threadPool: NIOThreadPool, priority: BackgroundPriority?) {
        self.db = db
        self.threadPool = threadPool
        self.priority = priority
    }

    deinit {
        textRoom.deallocate()
    }

    /// Opens a second connection to the database file at `path`, with the main connection's
    /// durability, on a thread of its own. Statements are prepared on first use (the tables
    /// exist after `migrate()`).
    static func open(
        path: String, durability: SQLiteDurability, batchWriter: SQLiteBatchWriterSettings = .init(), logger: Logger
    ) async throws -> SQLiteAppender {
        let threadPool = NIOThreadPool(numberOfThreads: 1)
        threadPool.start()
        let priority = await BackgroundPriority.make(batchWriter)
        if batchWriter.priority == .idle, priority == nil {
            logger.notice(
                "store.sqlite.batch_writer.priority is idle, but this process may not raise a thread out of SCHED_IDLE (that needs CAP_SYS_NICE or RLIMIT_NICE of 20): ledger and audit batches run at normal priority")
        }
        do {
            return try await open(path: path, durability: durability, threadPool: threadPool, priority: priority)
        } catch {
            try? await threadPool.shutdownGracefully()
            throw error
        }
    }

    private static func open(path: String, durability: SQLiteDurability, threadPool: NIOThreadPool, priority: BackgroundPriority?) async throws -> SQLiteAppender {
        try await threadPool.runIfActive {
            var handle: OpaquePointer?
            // No mutex of SQLite's own: this connection is only ever used on the pool's one
            // thread (or after the pool is gone, by `closeNow`). With `FULLMUTEX` every bind,
            // step and reset took a lock, about a tenth of the batch writer's time.
            let flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX | SQLITE_OPEN_URI | SQLITE_OPEN_EXRESCODE
            let opened = sqlite_nio_sqlite3_open_v2(path, &handle, flags, nil)
            guard opened == SQLITE_OK, let handle else {
                let error = SQLiteWriteError(code: opened, message: handle.map { String(cString: sqlite_nio_sqlite3_errmsg($0)) } ?? "cannot open \(path)")
                sqlite_nio_sqlite3_close_v2(handle)
                throw error
            }
            let appender = SQLiteAppender(db: handle, threadPool: threadPool, priority: priority)
            // First: the pragmas below read the schema, which waits for another process's lock.
            sqlite_nio_sqlite3_busy_timeout(handle, 5_000)
            do {
                // The main connection set WAL mode on the file; synchronous is per connection.
                try appender.execute(durability == .full ? "PRAGMA synchronous=FULL" : "PRAGMA synchronous=NORMAL")
                try appender.execute("PRAGMA temp_store=MEMORY")
            } catch {
                appender.closeNow()
                throw error
            }
            return appender
        }
    }

    /// Appends usage rows in one transaction: all or none.
    func appendUsage(_ records: [UsageRecord]) async throws {
        guard !records.isEmpty else { return }
        try await onWriterThread {
            try self.transaction {
                try self.insertRows(records, statement: { .insertUsage(rows: $0) }) { record, binder in StoreRecords.write(record, to: &binder) }
            }
        }
    }

    /// Links audit records onto the stored chain's head and appends them in one transaction.
    func appendAudit(_ records: [AuditRecord]) async throws -> (sequence: Int64, hash: String) {
        try await onWriterThread {
            try self.transaction {
                var chain = try self.auditChainHead()
                // Linked in order as they are bound: the rows of a statement follow each other.
                try self.insertRows(records, statement: { .insertAudit(rows: $0) }) { record, binder in
                    StoreRecords.write(record, at: chain.place(record), to: &binder)
                }
                return (chain.lastSequence, chain.lastHash)
            }
        }
    }

    func close() async {
        let closedOnThread = (try? await threadPool.runIfActive { self.closeNow() }) != nil
        poolClosed.store(true, ordering: .releasing)
        try? await threadPool.shutdownGracefully()
        // The pool was gone (or this task cancelled): close here rather than leak, once its
        // thread has been joined, as the connection has no mutex of its own (`open`).
        if !closedOnThread { closeNow() }
    }

    /// A batch on the appender's thread, at its priority.
    private func onWriterThread<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
        // The thread is gone with the store: say so rather than what the pool would say.
        guard !poolClosed.load(ordering: .acquiring) else { throw SQLiteWriteError(code: SQLITE_MISUSE, message: "the store is closed") }
        if let priority { return try await priority.run(on: threadPool, body) }
        return try await threadPool.runIfActive(body)
    }

    // MARK: On the pool thread

    private func closeNow() {
        guard !closed else { return }
        closed = true
        for statement in statements.values { sqlite_nio_sqlite3_finalize(statement) }
        statements = [:]
        sqlite_nio_sqlite3_close_v2(db)
    }

    private func transaction<T>(_ body: () throws -> T) throws -> T {
        guard !closed else { throw SQLiteWriteError(code: SQLITE_MISUSE, message: "the store is closed") }
        // A transaction left open by a `ROLLBACK` that failed would make every `BEGIN` fail.
        if sqlite_nio_sqlite3_get_autocommit(db) == 0 { try run(.rollback) }
        try run(.begin)
        do {
            let result = try body()
            try run(.commit)
            return result
        } catch {
            // After a failed `COMMIT` (or a failed statement) the transaction may still be
            // open; a `ROLLBACK` with none open fails harmlessly.
            try? run(.rollback)
            throw error
        }
    }

    private func auditChainHead() throws -> AuditChain {
        let statement = try prepared(.auditHead)
        defer { sqlite_nio_sqlite3_reset(statement) }
        switch sqlite_nio_sqlite3_step(statement) {
        case SQLITE_ROW:
            let hash = sqlite_nio_sqlite3_column_text(statement, 1).map { String(cString: $0) } ?? AuditRecord.genesisHash
            return AuditChain(lastSequence: sqlite_nio_sqlite3_column_int64(statement, 0), lastHash: hash)
        case SQLITE_DONE:
            return AuditChain()
        case let code:
            throw failure(code)
        }
    }

    /// Runs a statement without parameters to the end.
    private func run(_ statement: Statement) throws {
        let handle = try prepared(statement)
        defer { sqlite_nio_sqlite3_reset(handle) }
        let code = sqlite_nio_sqlite3_step(handle)
        guard code == SQLITE_DONE else { throw failure(code) }
    }

    /// Inserts `records` in order: `rowsPerStatement` at a time through the multi-row
    /// statement, the rest one by one.
    private func insertRows<Record>(
        _ records: [Record], statement: (Int) -> Statement, write: (Record, inout Binder) -> Void
    ) throws {
        var start = records.startIndex
        while start < records.endIndex {
            let rows = records.endIndex - start >= Self.rowsPerStatement ? Self.rowsPerStatement : 1
            try insert(statement(rows)) { binder in
                // Through the buffer: each record lent to `write`, not copied out of the array.
                records.withUnsafeBufferPointer { buffer in
                    for index in start..<(start + rows) { write(buffer[index], &binder) }
                }
            }
            start += rows
        }
    }

    /// Runs a prepared `INSERT` with the rows `write` gives, bound value by value.
    private func insert(_ statement: Statement, _ write: (inout Binder) -> Void) throws {
        let handle = try prepared(statement)
        defer {
            sqlite_nio_sqlite3_reset(handle)
            sqlite_nio_sqlite3_clear_bindings(handle)  // none may point into the room once it is reused
        }
        var binder = Binder(statement: handle, room: textRoom)
        write(&binder)
        guard binder.code == SQLITE_OK else { throw failure(binder.code) }
        let expected = sqlite_nio_sqlite3_bind_parameter_count(handle)
        guard binder.index - 1 == expected else {
            throw SQLiteWriteError(code: SQLITE_RANGE, message: "\(binder.index - 1) values for \(expected) columns")
        }
        let code = sqlite_nio_sqlite3_step(handle)
        guard code == SQLITE_DONE else { throw failure(code) }
    }

    /// Binds a row's values to a prepared statement's parameters in order; the first failure
    /// is kept in `code`.
    struct Binder: StoreRowWriter {
        let statement: OpaquePointer
        /// Texts are copied here and bound in place (`SQLiteAppender.textRoom`).
        let room: UnsafeMutableRawBufferPointer
        var roomUsed = 0
        var index: Int32 = 1
        var code = SQLITE_OK

        mutating func text(_ value: String?) {
            guard var value else { return null() }
            let result = value.withUTF8 { bytes in
                // An empty buffer may have no address, and a null pointer would bind NULL.
                guard let base = bytes.baseAddress else { return sqlite_nio_sqlite3_bind_text(statement, index, "", 0, transientDestructor) }
                if bytes.count <= room.count - roomUsed, let roomBase = room.baseAddress {
                    let copy = roomBase + roomUsed
                    copy.copyMemory(from: base, byteCount: bytes.count)
                    roomUsed += bytes.count
                    return sqlite_nio_sqlite3_bind_text64(
                        statement, index, copy.assumingMemoryBound(to: CChar.self), UInt64(bytes.count), nil, UInt8(SQLITE_UTF8))
                }
                return base.withMemoryRebound(to: CChar.self, capacity: bytes.count) {
                    sqlite_nio_sqlite3_bind_text64(statement, index, $0, UInt64(bytes.count), transientDestructor, UInt8(SQLITE_UTF8))
                }
            }
            bound(result)
        }

        mutating func int(_ value: Int64?) {
            guard let value else { return null() }
            bound(sqlite_nio_sqlite3_bind_int64(statement, index, value))
        }

        mutating func double(_ value: Double) {
            bound(sqlite_nio_sqlite3_bind_double(statement, index, value))
        }

        private mutating func null() {
            bound(sqlite_nio_sqlite3_bind_null(statement, index))
        }

        private mutating func bound(_ result: Int32) {
            if code == SQLITE_OK { code = result }
            index += 1
        }
    }

    private func prepared(_ statement: Statement) throws -> OpaquePointer {
        if let handle = statements[statement] { return handle }
        var handle: OpaquePointer?
        let code = sqlite_nio_sqlite3_prepare_v3(db, statement.sql, -1, UInt32(SQLITE_PREPARE_PERSISTENT), &handle, nil)
        guard code == SQLITE_OK, let handle else { throw failure(code) }
        statements[statement] = handle
        return handle
    }

    private func execute(_ sql: String) throws {
        let code = sqlite_nio_sqlite3_exec(db, sql, nil, nil, nil)
        guard code == SQLITE_OK else { throw failure(code) }
    }

    private func failure(_ code: Int32) -> SQLiteWriteError {
        SQLiteWriteError(code: code, message: String(cString: sqlite_nio_sqlite3_errmsg(db)))
    }
}

/// `SQLITE_TRANSIENT`: SQLite copies the bound bytes before the call returns.
private let transientDestructor = unsafeBitCast(-1, to: sqlite3_destructor_type.self)

/// A failed statement of the ledger or audit writer, with SQLite's own code and message.
struct SQLiteWriteError: Error, CustomStringConvertible {
    var code: Int32
    var message: String

    var description: String { "SQLite error \(code): \(message)" }
}
