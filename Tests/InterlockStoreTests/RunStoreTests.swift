import InterlockCore
@testable import InterlockStore
import Testing

/// The durable half of workflows: histories with fencing, the queue with leases and timers,
/// signals, the event log. Written against `RunStore`, so the PostgreSQL store runs it too.
@Suite struct RunStoreTests {
    /// A migrated store with one workflow version, closed afterwards whatever happens.
    static func withStore(_ kind: StoreKind, _ body: (any InterlockStore & RunStore) async throws -> Void) async throws {
        try await TestStores.with(kind) { store in
            try await store.saveWorkflowVersion(WorkflowVersionRecord(hash: "h1", name: "w", source: "workflow: w", origin: "test", createdMs: 1))
            try await body(store)
        }
    }

    static func newRun(_ id: String, key: String? = nil, priority: Int = 0) -> RunRecord {
        RunRecord(id: id, workflow: "w", workflowHash: "h1", priority: priority, agentID: "bot", startedBy: "operator:o", idempotencyKey: key, input: ["n": 1], createdMs: 10)
    }

    static func update(_ status: RunStatus, now: Int64) -> RunUpdate {
        RunUpdate(status: status, budgets: .init(), usage: RunUsage(modelCalls: 1, toolCalls: 2, tokens: 30, cost: USD(nanos: 40)), stepsStarted: 1, updatedMs: now)
    }

    @Test(arguments: StoreKind.all) func runsAreCreatedOncePerIdempotencyKeyWithTheirHistory(kind: StoreKind) async throws {
        try await Self.withStore(kind) { store in
            let started = RunEvent(seq: 1, timeMs: 10, kind: .runStarted(input: ["n": 1], budgets: RunBudgetLimits(maxSteps: 3)))
            let (first, created) = try await store.createRun(Self.newRun("r1", key: "k"), events: [started], readyAtMs: 10)
            #expect(created && first.lastSeq == 1)
            let (again, createdAgain) = try await store.createRun(Self.newRun("r2", key: "k"), events: [started], readyAtMs: 10)
            #expect(!createdAgain && again.id == "r1", "the same key returns the first run")
            #expect(try await store.run(id: "r2") == nil)
            #expect(try await store.runEvents(runID: "r1", afterSeq: 0) == [started])
            #expect(try await store.workflowVersion(hash: "h1")?.source == "workflow: w")
            _ = try await store.createRun(Self.newRun("r3"), events: [started], readyAtMs: 10)
            #expect(try await store.runs(RunFilter()).map(\.id) == ["r3", "r1"], "newest first")
            #expect(try await store.runs(RunFilter(beforeID: "r3")).map(\.id) == ["r1"])
        }
    }

    @Test(arguments: StoreKind.all) func onlyTheLeaseHolderAppendsAndAnExpiredLeaseMovesOn(kind: StoreKind) async throws {
        try await Self.withStore(kind) { store in
            _ = try await store.createRun(Self.newRun("r1"), events: [RunEvent(seq: 1, timeMs: 10, kind: .runStarted(input: .null, budgets: .init()))], readyAtMs: 10)
            #expect(try await store.claimRuns(owner: "n1/a", nowMs: 5, leaseUntilMs: 100, limit: 10).isEmpty, "not due yet")
            #expect(try await store.claimRuns(owner: "n1/a", nowMs: 20, leaseUntilMs: 100, limit: 10) == ["r1"])
            #expect(try await store.claimRuns(owner: "n2/b", nowMs: 50, leaseUntilMs: 200, limit: 10).isEmpty, "leased")
            let step = RunEvent(seq: 2, timeMs: 30, kind: .stepStarted(path: "a", attempt: 1, data: nil))
            try await store.appendRunEvents(runID: "r1", owner: "n1/a", events: [step], update: Self.update(.running, now: 30), consumedSignals: [], leaseUntilMs: 100)
            // n1 stops heartbeating; its lease runs out and n2 takes the run over.
            #expect(try await store.claimRuns(owner: "n2/b", nowMs: 101, leaseUntilMs: 300, limit: 10) == ["r1"])
            let late = RunEvent(seq: 3, timeMs: 102, kind: .stepCompleted(path: "a", output: 1))
            await #expect(throws: RunLeaseLost.self) {
                try await store.appendRunEvents(runID: "r1", owner: "n1/a", events: [late], update: Self.update(.running, now: 102), consumedSignals: [], leaseUntilMs: 400)
            }
            #expect(try await store.runEvents(runID: "r1", afterSeq: 1) == [step], "the fenced-off write left nothing")
            #expect(try await store.renewLeases(owner: "n1/a", runIDs: ["r1"], leaseUntilMs: 500).isEmpty)
            #expect(try await store.renewLeases(owner: "n2/b", runIDs: ["r1"], leaseUntilMs: 500) == ["r1"])
            // What a checkpoint carries comes back exactly: escapes, non-ASCII, a NUL, big numbers.
            let output: JSONValue = ["text": "quote \" backslash \\ tab \t nul \u{0} 🎉 ü", "big": .integer(Int64.max), "half": 0.5, "none": .null]
            let done = RunEvent(seq: 3, timeMs: 102, kind: .stepCompleted(path: "a", output: output))
            var finished = Self.update(.completed, now: 102)
            finished.output = output
            finished.finishedMs = 102
            try await store.appendRunEvents(runID: "r1", owner: "n2/b", events: [done], update: finished, consumedSignals: [], leaseUntilMs: 500)
            let run = try await store.run(id: "r1")
            #expect(run?.status == .completed && run?.lastSeq == 3 && run?.usage.cost == USD(nanos: 40))
            #expect(run?.output == output && run?.finishedMs == 102)
            #expect(try await store.runEvents(runID: "r1", afterSeq: 2) == [done])
            // A restarted node frees its old leases at once.
            try await store.releaseLeases(ownerPrefix: "n2/")
            #expect(try await store.claimRuns(owner: "n2/c", nowMs: 103, leaseUntilMs: 600, limit: 10) == ["r1"])
            try await store.releaseRun(runID: "r1", owner: "n2/c", readyAtMs: nil, finished: true, nowMs: 104)
            #expect(try await store.claimRuns(owner: "n2/c", nowMs: 10_000, leaseUntilMs: 20_000, limit: 10).isEmpty, "a finished run has left the queue")
        }
    }

    @Test(arguments: StoreKind.all) func timersAndWakesMakeRunsDueAndAWakeWhileLeasedIsNotLost(kind: StoreKind) async throws {
        try await Self.withStore(kind) { store in
            let start = [RunEvent(seq: 1, timeMs: 10, kind: .runStarted(input: .null, budgets: .init()))]
            _ = try await store.createRun(Self.newRun("low", priority: 0), events: start, readyAtMs: 10)
            _ = try await store.createRun(Self.newRun("high", priority: 5), events: start, readyAtMs: 10)
            #expect(try await store.claimRuns(owner: "n/a", nowMs: 20, leaseUntilMs: 100, limit: 1) == ["high"], "priority first")
            #expect(try await store.nextRunDue() == 10)
            // Released with a timer: due then, not before.
            try await store.releaseRun(runID: "high", owner: "n/a", readyAtMs: 500, finished: false, nowMs: 30)
            #expect(try await store.claimRuns(owner: "n/a", nowMs: 40, leaseUntilMs: 100, limit: 5) == ["low"])
            try await store.releaseRun(runID: "low", owner: "n/a", readyAtMs: nil, finished: false, nowMs: 41)
            #expect(try await store.nextRunDue() == 500)
            #expect(try await store.claimRuns(owner: "n/a", nowMs: 499, leaseUntilMs: 1_000, limit: 5).isEmpty, "low waits for a wake, high for its timer")
            try await store.wakeRun(runID: "low", atMs: 450)
            #expect(try await store.claimRuns(owner: "n/a", nowMs: 460, leaseUntilMs: 1_000, limit: 5) == ["low"])
            // An answer arrives while the worker holds the run; the worker then releases it to wait.
            try await store.wakeRun(runID: "low", atMs: 470)
            try await store.releaseRun(runID: "low", owner: "n/a", readyAtMs: nil, finished: false, nowMs: 480)
            #expect(try await store.claimRuns(owner: "n/a", nowMs: 480, leaseUntilMs: 1_000, limit: 5) == ["low"], "the wake was kept")
        }
    }

    @Test(arguments: StoreKind.all) func signalsWakeARunAndAreConsumedWithTheCheckpoint(kind: StoreKind) async throws {
        try await Self.withStore(kind) { store in
            _ = try await store.createRun(Self.newRun("r1"), events: [RunEvent(seq: 1, timeMs: 10, kind: .runStarted(input: .null, budgets: .init()))], readyAtMs: 10)
            #expect(try await store.claimRuns(owner: "n/a", nowMs: 10, leaseUntilMs: 100, limit: 5) == ["r1"])
            try await store.releaseRun(runID: "r1", owner: "n/a", readyAtMs: nil, finished: false, nowMs: 11)
            try await store.addRunSignal(RunSignal(runID: "r1", kind: "pause", by: "operator:o", createdMs: 12))
            let signals = try await store.runSignals(runID: "r1")
            #expect(signals.map(\.kind) == ["pause"])
            #expect(try await store.claimRuns(owner: "n/a", nowMs: 12, leaseUntilMs: 100, limit: 5) == ["r1"])
            try await store.appendRunEvents(
                runID: "r1", owner: "n/a", events: [RunEvent(seq: 2, timeMs: 13, kind: .paused(by: "operator:o"))], update: Self.update(.paused, now: 13),
                consumedSignals: signals.map(\.id), leaseUntilMs: 100)
            #expect(try await store.runSignals(runID: "r1").isEmpty)
            // A finished run is off the queue; a retry signal puts it back.
            try await store.releaseRun(runID: "r1", owner: "n/a", readyAtMs: nil, finished: true, nowMs: 14)
            try await store.addRunSignal(RunSignal(runID: "r1", kind: "retry", by: "operator:o", createdMs: 15))
            #expect(try await store.claimRuns(owner: "n/a", nowMs: 15, leaseUntilMs: 100, limit: 5) == ["r1"])
        }
    }

    @Test(arguments: StoreKind.all) func eventsAreDedupedAndWaitingRunsAreIndexed(kind: StoreKind) async throws {
        try await Self.withStore(kind) { store in
            let (first, created) = try await store.publishEvent(EventRecord(id: "e1", type: "invoice.received", payload: ["n": 1], dedupKey: "inv-1", source: "agent:a", timeMs: 5))
            #expect(created && first.seq == 1)
            let (second, createdAgain) = try await store.publishEvent(EventRecord(id: "e2", type: "invoice.received", payload: ["n": 2], dedupKey: "inv-1", source: "agent:a", timeMs: 6))
            #expect(!createdAgain && second.id == "e1" && second.payload == ["n": 1])
            _ = try await store.publishEvent(EventRecord(id: "e3", type: "po.approved", payload: [:], source: "agent:a", timeMs: 7))
            #expect(try await store.events(afterSeq: 0, type: nil, limit: 10).map(\.id) == ["e1", "e3"])
            #expect(try await store.events(afterSeq: 0, type: "po.approved", limit: 10).map(\.seq) == [2])

            _ = try await store.createRun(Self.newRun("r1"), events: [RunEvent(seq: 1, timeMs: 10, kind: .runStarted(input: .null, budgets: .init()))], readyAtMs: 10)
            _ = try await store.claimRuns(owner: "n/a", nowMs: 10, leaseUntilMs: 100, limit: 5)
            try await store.appendRunEvents(
                runID: "r1", owner: "n/a",
                events: [
                    RunEvent(seq: 2, timeMs: 11, kind: .stepStarted(path: "w", attempt: 1, data: nil)),
                    RunEvent(seq: 3, timeMs: 11, kind: .stepWaiting(path: "w", wait: .event(type: "po.approved", afterSeq: 2, deadlineMs: nil))),
                ], update: Self.update(.waiting, now: 11), consumedSignals: [], leaseUntilMs: 100)
            #expect(try await store.runsWaiting(eventType: "po.approved") == ["r1"])
            try await store.appendRunEvents(
                runID: "r1", owner: "n/a", events: [RunEvent(seq: 4, timeMs: 12, kind: .stepCompleted(path: "w", output: [:]))], update: Self.update(.running, now: 12),
                consumedSignals: [], leaseUntilMs: 100)
            #expect(try await store.runsWaiting(eventType: "po.approved").isEmpty)
            #expect(try await store.cursor("triggers") == 0)
            try await store.setCursor("triggers", to: 2)
            try await store.setCursor("triggers", to: 3)
            #expect(try await store.cursor("triggers") == 3)
        }
    }

    @Test(arguments: StoreKind.all) func theWaitsIndexKeepsEachStepsLastStateInACheckpoint(kind: StoreKind) async throws {
        try await Self.withStore(kind) { store in
            _ = try await store.createRun(Self.newRun("r1"), events: [RunEvent(seq: 1, timeMs: 10, kind: .runStarted(input: .null, budgets: .init()))], readyAtMs: 10)
            _ = try await store.claimRuns(owner: "n/a", nowMs: 10, leaseUntilMs: 100, limit: 5)
            try await store.appendRunEvents(
                runID: "r1", owner: "n/a",
                events: [
                    // Recorded twice in one checkpoint: one row, the last type.
                    RunEvent(seq: 2, timeMs: 11, kind: .stepWaiting(path: "a", wait: .event(type: "first", afterSeq: 0, deadlineMs: nil))),
                    RunEvent(seq: 3, timeMs: 11, kind: .stepWaiting(path: "a", wait: .event(type: "second", afterSeq: 0, deadlineMs: nil))),
                    // Began waiting and was answered in the same checkpoint: no row.
                    RunEvent(seq: 4, timeMs: 11, kind: .stepWaiting(path: "b", wait: .event(type: "third", afterSeq: 0, deadlineMs: nil))),
                    RunEvent(seq: 5, timeMs: 11, kind: .stepCompleted(path: "b", output: [:])),
                ], update: Self.update(.waiting, now: 11), consumedSignals: [], leaseUntilMs: 100)
            #expect(try await store.runsWaiting(eventType: "first").isEmpty)
            #expect(try await store.runsWaiting(eventType: "second") == ["r1"])
            #expect(try await store.runsWaiting(eventType: "third").isEmpty)
            #expect(try await store.run(id: "r1")?.lastSeq == 5)
        }
    }

    @Test(arguments: StoreKind.all) func concurrentPublishesAreDedupedAndNumberedWithoutGaps(kind: StoreKind) async throws {
        try await Self.withStore(kind) { store in
            // 20 keys published twice each and 10 events without a key, all at once.
            let events = (0..<20).flatMap { key in
                (0..<2).map { copy in EventRecord(id: "k\(key)-\(copy)", type: "t", payload: ["copy": .number(Double(copy))], dedupKey: "key-\(key)", source: "test", timeMs: 1) }
            } + (0..<10).map { EventRecord(id: "free-\($0)", type: "u", payload: .null, source: "test", timeMs: 1) }
            let results = try await withThrowingTaskGroup(of: (String, EventRecord, Bool).self) { group in
                for event in events { group.addTask { let (stored, created) = try await store.publishEvent(event); return (event.id, stored, created) } }
                return try await group.reduce(into: [String: (EventRecord, Bool)]()) { $0[$1.0] = ($1.1, $1.2) }
            }
            #expect(results.values.filter(\.1).count == 30)
            for key in 0..<20 {
                let (first, second) = (results["k\(key)-0"]!, results["k\(key)-1"]!)
                #expect(first.1 != second.1, "exactly one copy of key-\(key) is created")
                #expect(first.0.id == second.0.id && first.0.seq == second.0.seq)
            }
            let stored = try await store.events(afterSeq: 0, type: nil, limit: 100)
            #expect(stored.map(\.seq) == Array(1...30))
            #expect(Set(stored.map(\.id)) == Set(results.values.filter(\.1).map(\.0.id)))
        }
    }

    @Test(arguments: StoreKind.all) func concurrentCheckpointsAreWrittenTogetherAndALostLeaseFailsAlone(kind: StoreKind) async throws {
        try await Self.withStore(kind) { store in
            let start = [RunEvent(seq: 1, timeMs: 10, kind: .runStarted(input: .null, budgets: .init()))]
            for index in 0..<30 { _ = try await store.createRun(Self.newRun("r\(index)"), events: start, readyAtMs: 10) }
            #expect(try await store.claimRuns(owner: "n/a", nowMs: 10, leaseUntilMs: 100, limit: 29).count == 29)
            #expect(try await store.claimRuns(owner: "n/b", nowMs: 10, leaseUntilMs: 100, limit: 5).count == 1)
            // Thirty runs checkpoint at once; one of them is not held by the writer.
            let results = await withTaskGroup(of: (String, Bool).self) { group in
                for index in 0..<30 {
                    group.addTask {
                        let event = RunEvent(seq: 2, timeMs: 20, kind: .stepStarted(path: "s", attempt: 1, data: nil))
                        do {
                            try await store.appendRunEvents(
                                runID: "r\(index)", owner: "n/a", events: [event], update: Self.update(.running, now: 20), consumedSignals: [], leaseUntilMs: 200)
                            return ("r\(index)", true)
                        } catch is RunLeaseLost {
                            return ("r\(index)", false)
                        } catch {
                            return ("r\(index)", false)
                        }
                    }
                }
                var results: [String: Bool] = [:]
                for await (id, ok) in group { results[id] = ok }
                return results
            }
            let lost = results.filter { !$0.value }.map(\.key)
            #expect(lost.count == 1, "only the run leased to another node is refused: \(lost)")
            for (id, ok) in results {
                #expect(try await store.runEvents(runID: id, afterSeq: 1).count == (ok ? 1 : 0))
            }
        }
    }
}
