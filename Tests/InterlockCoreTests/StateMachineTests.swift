import InterlockCore
import Testing

typealias Instant = ManualClock.Instant

func at(_ seconds: Double) -> Instant { Instant(offset: .milliseconds(Int64(seconds * 1000))) }

@Suite struct CircuitBreakerTests {
    let policy = CircuitBreakerPolicy(consecutiveFailures: 3, errorRateThreshold: 0.5, minimumCalls: 10, windowSize: 10, openDuration: .seconds(30), halfOpenProbes: 1)

    @Test func opensAfterConsecutiveFailuresAndProbesAfterOpenDuration() {
        var breaker = CircuitBreaker<Instant>(policy: policy)
        #expect(breaker.record(.failure, now: at(0)) == nil)
        #expect(breaker.record(.failure, now: at(1)) == nil)
        #expect(breaker.record(.failure, now: at(2)) == .opened(reason: "3 consecutive failures"))
        #expect(breaker.acquire(now: at(10)).0 == .rejected(retryAfter: .seconds(22)))
        #expect(!breaker.wouldAllow(now: at(31)))
        #expect(breaker.wouldAllow(now: at(32)))
        let (permit, transition) = breaker.acquire(now: at(32))
        #expect(permit == .probe)
        #expect(transition == .halfOpened)
        // Only one probe at a time.
        if case .rejected = breaker.acquire(now: at(32)).0 {} else { Issue.record("second probe should be refused") }
        #expect(breaker.record(.success, now: at(33)) == .closed)
        #expect(breaker.acquire(now: at(33)).0 == .allowed)
    }

    @Test func failedProbeReopens() {
        var breaker = CircuitBreaker<Instant>(policy: policy)
        for second in 0..<3 { _ = breaker.record(.failure, now: at(Double(second))) }
        _ = breaker.acquire(now: at(40))
        #expect(breaker.record(.failure, now: at(41)) == .opened(reason: "half-open probe failed"))
        #expect(breaker.state == .open(until: at(71)))
    }

    @Test func opensOnErrorRateWithoutConsecutiveRun() {
        var breaker = CircuitBreaker<Instant>(policy: policy)
        var transition: CircuitBreaker<Instant>.Transition?
        for index in 0..<10 {
            transition = breaker.record(index.isMultiple(of: 2) ? .failure : .success, now: at(Double(index)))
        }
        #expect(transition == .opened(reason: "error rate 50% over the last 10 calls"))
    }

    @Test func successesResetTheConsecutiveCount() {
        var breaker = CircuitBreaker<Instant>(policy: policy)
        for index in 0..<9 {
            #expect(breaker.record(index % 3 == 2 ? .success : .failure, now: at(Double(index))) == nil)
        }
        #expect(breaker.state == .closed)
    }
}

@Suite struct RateLimitGateTests {
    let queue = AdmissionQueuePolicy(maxDepth: 2, maxWait: .seconds(5))

    @Test func requestsPerMinuteAdmitThenQueueInOrder() {
        var gate = RateLimitGate<Instant>(limits: RateLimits(requestsPerMinute: 60), queuePolicy: queue, now: at(0))
        for _ in 0..<60 { #expect(gate.admit(tokens: 0, now: at(0)) == .granted) }
        guard case .queued(let first, let until) = gate.admit(tokens: 0, now: at(0)) else {
            Issue.record("expected to queue")
            return
        }
        #expect(until == at(1))
        guard case .queued(let second, _) = gate.admit(tokens: 0, now: at(0)) else {
            Issue.record("expected to queue")
            return
        }
        // Queue bound: the third waiter is refused with a Retry-After.
        if case .rejected(_, let reason) = gate.admit(tokens: 0, now: at(0)) {
            #expect(reason == .queueFull)
        } else {
            Issue.record("expected a rejection")
        }
        // The second waiter cannot pass the first even when polled first.
        if case .granted = gate.poll(second, now: at(1)) { Issue.record("second waiter jumped the queue") }
        #expect(gate.poll(first, now: at(1)) == .granted)
        #expect(gate.poll(second, now: at(2)) == .granted)
        #expect(gate.queueDepth == 0)
    }

    @Test func higherPriorityGoesFirst() {
        var gate = RateLimitGate<Instant>(limits: RateLimits(requestsPerMinute: 60), queuePolicy: AdmissionQueuePolicy(maxDepth: 10, maxWait: .seconds(10)), now: at(0))
        for _ in 0..<60 { _ = gate.admit(tokens: 0, now: at(0)) }
        guard case .queued(let low, _) = gate.admit(tokens: 0, priority: 0, now: at(0)),
            case .queued(let high, _) = gate.admit(tokens: 0, priority: 5, now: at(0))
        else {
            Issue.record("expected both to queue")
            return
        }
        if case .granted = gate.poll(low, now: at(1)) { Issue.record("low priority went first") }
        #expect(gate.poll(high, now: at(1)) == .granted)
        #expect(gate.poll(low, now: at(2)) == .granted)
    }

    @Test func waitLongerThanBoundIsRefusedAtOnce() {
        var gate = RateLimitGate<Instant>(limits: RateLimits(tokensPerMinute: 600), queuePolicy: queue, now: at(0))
        #expect(gate.admit(tokens: 600, now: at(0)) == .granted)
        // 600 more tokens need 60 s of refill: past the 5 s bound.
        guard case .rejected(let retryAfter, let reason) = gate.admit(tokens: 600, now: at(0)) else {
            Issue.record("expected a rejection")
            return
        }
        #expect(reason == .tokensPerMinute)
        #expect(retryAfter == .seconds(60))
    }

    @Test func reconcileReturnsUnusedTokens() {
        var gate = RateLimitGate<Instant>(limits: RateLimits(tokensPerMinute: 1000), queuePolicy: queue, now: at(0))
        #expect(gate.admit(tokens: 1000, now: at(0)) == .granted)
        let before = gate.hasCapacity(tokens: 500, now: at(0))
        #expect(!before)
        gate.reconcile(estimatedTokens: 1000, actualTokens: 200, now: at(0))
        let refunded = gate.hasCapacity(tokens: 800, now: at(0))
        let beyond = gate.hasCapacity(tokens: 801, now: at(0))
        #expect(refunded)
        #expect(!beyond)
    }

    @Test func throttleBlocksUntilRetryAfter() {
        var gate = RateLimitGate<Instant>(limits: RateLimits(), queuePolicy: queue, now: at(0))
        gate.throttle(until: at(3))
        #expect(gate.isThrottled(now: at(1)))
        guard case .queued(let ticket, let until) = gate.admit(tokens: 1, now: at(1)) else {
            Issue.record("expected to queue behind the throttle")
            return
        }
        #expect(until == at(3))
        #expect(gate.poll(ticket, now: at(3)) == .granted)
    }
}

@Suite struct BudgetLedgerTests {
    let day: Int64 = 1_795_219_200_000  // 2026-11-21T00:00:00Z

    @Test func reservationsCountAgainstTheLimitUntilSettled() {
        var ledger = BudgetLedger(limits: .init(daily: USD(dollars: 1)))
        guard case .granted(let first) = ledger.reserve(USD(dollars: 0.6), epochMs: day) else {
            Issue.record("first reservation refused")
            return
        }
        if case .granted = ledger.reserve(USD(dollars: 0.6), epochMs: day) { Issue.record("overspend allowed") }
        ledger.settle(first, actual: USD(dollars: 0.1), epochMs: day)
        #expect(ledger.spent(in: .day, epochMs: day) == USD(dollars: 0.1))
        if case .granted = ledger.reserve(USD(dollars: 0.6), epochMs: day) {} else { Issue.record("room freed by settle not reusable") }
    }

    @Test func exhaustedNamesPeriodAndRetryAfterReachesNextDay() {
        var ledger = BudgetLedger(limits: .init(daily: USD(dollars: 1), monthly: USD(dollars: 10)))
        ledger.record(USD(dollars: 1), epochMs: day)
        let decision = ledger.reserve(USD(nanos: 1), epochMs: day + 3_600_000)
        #expect(decision == .exhausted(period: .day, limit: USD(dollars: 1), committed: USD(dollars: 1), retryAfterSeconds: 23 * 3600))
        // A new day starts empty; the month keeps counting.
        if case .granted = ledger.reserve(USD(dollars: 0.5), epochMs: day + 86_400_000) {} else { Issue.record("new day refused") }
        #expect(ledger.spent(in: .month, epochMs: day + 86_400_000) == USD(dollars: 1))
    }

    @Test func dollarsPrintWithoutTrailingZeros() {
        let cases: [(Int64, String)] = [
            (0, "0"), (1, "0.000000001"), (123_000, "0.000123"), (1_000_000_000, "1"), (2_500_000_000, "2.5"),
            (-2_500_000_000, "-2.5"), (12_345_678_901, "12.345678901"), (100_000_000, "0.1"), (-1, "-0.000000001"),
            (Int64.min, "-9223372036.854775808"), (Int64.max, "9223372036.854775807"),
        ]
        for (nanos, text) in cases { #expect(USD(nanos: nanos).description == text) }
    }

    @Test func calendarKeys() {
        #expect(BudgetPeriod.day.key(epochMs: day) == "2026-11-21")
        #expect(BudgetPeriod.month.key(epochMs: day) == "2026-11")
        #expect(BudgetPeriod.month.start(epochMs: day) == 1_793_491_200_000)  // 2026-11-01
        #expect(BudgetPeriod.month.end(epochMs: day) == 1_796_083_200_000)  // 2026-12-01
        #expect(BudgetPeriod.day.key(epochMs: 951_782_400_000) == "2000-02-29")
    }

    /// The ledger counts by period number; two instants share a number exactly when they share
    /// a key, across month and year ends, leap days and instants before 1970.
    @Test func periodNumbersNameTheSamePeriodsAsKeys() {
        let hour: Int64 = 3_600_000
        var instants: [Int64] = []
        for start: Int64 in [-2 * 86_400_000 * 40, 946_684_800_000 - 40 * 86_400_000, 951_782_400_000 - 3 * 86_400_000, day - 45 * 86_400_000] {
            for step in 0..<(80 * 24 / 7) { instants.append(start + Int64(step) * 7 * hour - 1) }
        }
        for period in BudgetPeriod.allCases {
            var byIndex: [Int64: String] = [:]
            var byKey: [String: Int64] = [:]
            for instant in instants {
                let index = period.index(epochMs: instant), key = period.key(epochMs: instant)
                #expect(byIndex[index, default: key] == key, "\(period) \(instant)")
                #expect(byKey[key, default: index] == index, "\(period) \(instant)")
                byIndex[index] = key
                byKey[key] = index
            }
            #expect(byIndex.count > 2)
        }
    }

    @Test func restoredSpendingCountsInItsPeriodsOnly() {
        var ledger = BudgetLedger(limits: .init(daily: USD(dollars: 5), monthly: USD(dollars: 8)))
        let lastOfMonth = day + 9 * 86_400_000  // 2026-11-30
        ledger.restore(period: .day, epochMs: lastOfMonth, spent: USD(dollars: 2))
        ledger.restore(period: .month, epochMs: lastOfMonth, spent: USD(dollars: 7))
        #expect(ledger.spent(in: .day, epochMs: lastOfMonth + 3_600_000) == USD(dollars: 2))
        #expect(ledger.spent(in: .day, epochMs: lastOfMonth - 1) == .zero)
        #expect(ledger.remaining(epochMs: lastOfMonth) == USD(dollars: 1))
        if case .granted = ledger.reserve(USD(dollars: 1.5), epochMs: lastOfMonth) { Issue.record("the month's limit was passed") }
        // December: both periods start empty; old periods are pruned as spending goes on.
        let december = lastOfMonth + 86_400_000
        #expect(ledger.remaining(epochMs: december) == USD(dollars: 5))
        for offset in 0..<6 { ledger.record(USD(dollars: 0.5), epochMs: december + Int64(offset) * 86_400_000) }
        #expect(ledger.spent(in: .month, epochMs: december + 5 * 86_400_000) == USD(dollars: 3))
        #expect(ledger.spent(in: .day, epochMs: december + 5 * 86_400_000) == USD(dollars: 0.5))
        #expect(ledger.spent(in: .month, epochMs: lastOfMonth) == .zero)  // pruned
    }
}

@Suite struct RouterTests {
    struct FixedRandom: RandomNumberGenerator {
        var values: [UInt64]
        mutating func next() -> UInt64 { values.isEmpty ? 0 : values.removeFirst() }
    }

    @Test func tiersComeFirstAndUnavailableAreLeftOut() {
        var random = FixedRandom(values: [])
        let ranked = ModelRouter.rank(
            [
                .init(id: "backup", tier: 1), .init(id: "primary", tier: 0), .init(id: "broken", tier: 0, available: false),
            ], strategy: .weighted, expected: .zero, using: &random)
        #expect(ranked == ["primary", "backup"])
    }

    @Test func leastLatencyMeasuresUnknownFirstThenFastest() {
        var random = FixedRandom(values: [])
        let ranked = ModelRouter.rank(
            [.init(id: "slow", latencyMs: 900), .init(id: "fast", latencyMs: 80), .init(id: "new")],
            strategy: .leastLatency, expected: .zero, using: &random)
        #expect(ranked == ["new", "fast", "slow"])
    }

    @Test func lowestCostUsesExpectedTokens() {
        var random = FixedRandom(values: [])
        let cheapInput = ModelPrice(inputPerMillion: 1, outputPerMillion: 20)
        let cheapOutput = ModelPrice(inputPerMillion: 5, outputPerMillion: 2)
        let candidates: [ModelRouter.Candidate] = [.init(id: "a", price: cheapInput), .init(id: "b", price: cheapOutput)]
        #expect(ModelRouter.rank(candidates, strategy: .lowestCost, expected: TokenUsage(inputTokens: 10_000, outputTokens: 10), using: &random) == ["a", "b"])
        #expect(ModelRouter.rank(candidates, strategy: .lowestCost, expected: TokenUsage(inputTokens: 10, outputTokens: 10_000), using: &random) == ["b", "a"])
    }

    @Test func weightedFollowsTheDraw() {
        var lowDraw = SystemRandomNumberGenerator()
        var counts = ["heavy": 0, "light": 0]
        for _ in 0..<2_000 {
            let first = ModelRouter.rank([.init(id: "heavy", weight: 9), .init(id: "light", weight: 1)], strategy: .weighted, expected: .zero, using: &lowDraw)[0]
            counts[first, default: 0] += 1
        }
        #expect(counts["heavy"]! > 1_600 && counts["heavy"]! < 1_990)
        #expect(counts["light"]! > 10)
    }

    @Test func saturatedDeploymentsGoLastWithinTheirTier() {
        var random = FixedRandom(values: [])
        let ranked = ModelRouter.rank(
            [.init(id: "busy", latencyMs: 10, hasCapacity: false), .init(id: "idle", latencyMs: 50)],
            strategy: .leastLatency, expected: .zero, using: &random)
        #expect(ranked == ["idle", "busy"])
    }
}

@Suite struct MoneyTests {
    @Test func priceCountsCachedInputApart() {
        let price = ModelPrice(inputPerMillion: 3, outputPerMillion: 15, cachedInputPerMillion: 0.3)
        let cost = price.cost(of: TokenUsage(inputTokens: 1_000_000, outputTokens: 1_000_000, cachedInputTokens: 500_000))
        #expect(cost == USD(dollars: 1.5 + 0.15 + 15))
        #expect(USD(dollars: 0.0000033).description == "0.0000033")
        #expect(USD(dollars: 2).description == "2")
    }

    @Test func countsAreCappedAndSumsSaturate() {
        #expect(TokenUsage.count(nil) == 0 && TokenUsage.count(-5) == 0 && TokenUsage.count(12) == 12)
        #expect(TokenUsage.count(.max) == TokenUsage.maximumCount)
        #expect(TokenUsage(inputTokens: .max, outputTokens: 1).totalTokens == .max)
    }
}

@Suite struct RetryPolicyTests {
    @Test func backoffDoublesWithJitterAndStaysUnderTheCap() {
        let policy = RetryPolicy(maxAttempts: 5, initialBackoffMs: 100, maxBackoffMs: 1_000)
        for _ in 0..<200 {
            let first = policy.backoff(afterAttempt: 1)
            #expect(first >= .milliseconds(50) && first <= .milliseconds(100))
            let third = policy.backoff(afterAttempt: 3)
            #expect(third >= .milliseconds(200) && third <= .milliseconds(400))
            let late = policy.backoff(afterAttempt: 40)
            #expect(late >= .milliseconds(500) && late <= .milliseconds(1_000))
        }
    }
}
