import InterlockConfig
import InterlockCore
import InterlockRuntime
import InterlockStore
import Logging
import Synchronization
import Testing

/// Counters in memory, as the shared store keeps them, with a settlement that takes a while
/// to reach the store (a slow round trip).
private final class SlowSettlingStore: SharedLimitStore {
    private struct Counters { var spent: Int64 = 0; var reserved: [String: Int64] = [:] }
    private let counters = Mutex(Counters())
    let settleDelay: Duration

    init(settleDelay: Duration) { self.settleDelay = settleDelay }

    func reserveBudget(
        agentID: String, periods: [SharedBudgetPeriod], amountNanos: Int64, reservationID: String, owner: String, expiresMs: Int64
    ) async throws -> SharedBudgetDecision {
        counters.withLock { counters in
            let committed = counters.spent + counters.reserved.values.reduce(0, +)
            guard let limit = periods.first?.limitNanos, committed + amountNanos > limit else {
                counters.reserved[reservationID] = amountNanos
                return .granted
            }
            return .exhausted(periodIndex: 0, committedNanos: committed)
        }
    }

    func settleBudget(reservationID: String, agentID: String, periods: [SharedBudgetPeriod], actualNanos: Int64) async throws {
        try await Task.sleep(for: settleDelay)
        counters.withLock { counters in
            counters.reserved[reservationID] = nil
            counters.spent += actualNanos
        }
    }

    func budgetCounter(agentID: String, periodKey: String) async throws -> (spentNanos: Int64, reservedNanos: Int64) {
        counters.withLock { ($0.spent, $0.reserved.values.reduce(0, +)) }
    }

    func releaseExpiredReservations(nowMs: Int64) async throws -> Int { 0 }
    func takeRate(key: String, nowMicros: Int64, costMicros: Int64, burstMicros: Int64) async throws -> Int64 { 0 }
    func adjustRate(key: String, deltaMicros: Int64, nowMicros: Int64) async throws {}
}

@Suite struct SharedLimitsTests {
    @Test func aCallAfterAnotherIsNotRefusedForTheFirstOnesReservation() async throws {
        let configuration = try ConfigLoader.parse("{}", file: "test.yaml", environment: [:])
        let store = SlowSettlingStore(settleDelay: .seconds(1))
        // A wait bound far above the settlement's time: nothing here depends on scheduling.
        let limits = SharedLimits(
            store: store, owner: "node-a/1", configuration: configuration, logger: Logger(label: "test"), wallClockMs: { 1_800_000_000_000 },
            settleWait: .seconds(30))
        let budget = BudgetLedger.Limits(daily: USD(dollars: 10))

        // Reserves $8 of $10, costs $1: the next $8 call fits once the first is settled.
        let first = try await limits.reserve(agentID: "a", limits: budget, amount: USD(dollars: 8))
        limits.settle(first, actual: USD(dollars: 1))
        let second = try await limits.reserve(agentID: "a", limits: budget, amount: USD(dollars: 8))
        #expect(second.amount == USD(dollars: 8))
        let today = try await limits.today(agentID: "a")
        #expect(today.spent == USD(dollars: 1))
        #expect(today.reserved == USD(dollars: 8))

        // Another agent does not wait for a's settlement.
        limits.settle(second, actual: USD(dollars: 1))
        let clock = ContinuousClock()
        let started = clock.now
        _ = try await limits.reserve(agentID: "b", limits: budget, amount: USD(dollars: 1))
        #expect(clock.now - started < .milliseconds(500), "not the 1 s of a's settlement")

        // Over the budget it is still refused, with the budget's error.
        await #expect(throws: GatewayError.self) {
            _ = try await limits.reserve(agentID: "a", limits: budget, amount: USD(dollars: 9))
        }

        // A store that takes longer than the wait bound does not hold the call: it goes on
        // (here refused, the first reservation still held) after the bound.
        let slow = SharedLimits(
            store: SlowSettlingStore(settleDelay: .seconds(60)), owner: "node-a/2", configuration: configuration, logger: Logger(label: "test"),
            wallClockMs: { 1_800_000_000_000 }, settleWait: .milliseconds(200))
        slow.settle(try await slow.reserve(agentID: "a", limits: budget, amount: USD(dollars: 8)), actual: USD(dollars: 1))
        let waited = clock.now
        await #expect(throws: GatewayError.self) {
            _ = try await slow.reserve(agentID: "a", limits: budget, amount: USD(dollars: 8))
        }
        #expect(clock.now - waited < .seconds(30), "bounded, not the settlement's 60 s")
        #expect(clock.now - waited >= .milliseconds(200))
    }
}
