/// Dollar budgets of one principal (an agent, later a run), enforced with reserve-then-reconcile.
///
/// Invariant: for every period with a limit, `spent + reserved ≤ limit` holds at the moment a
/// reservation is granted. A reservation is an upper estimate of a call's cost; when the call
/// ends, `settle` replaces it with the real cost. So concurrent calls can push spending past a
/// limit only by what their real costs exceed their reservations, never by a whole call each.
public struct BudgetLedger: Sendable {
    public struct Limits: Sendable, Equatable {
        public var perPeriod: [BudgetPeriod: USD]

        public init(daily: USD? = nil, monthly: USD? = nil) {
            var limits: [BudgetPeriod: USD] = [:]
            limits[.day] = daily
            limits[.month] = monthly
            self.perPeriod = limits
        }

        public var isEmpty: Bool { perPeriod.isEmpty }
    }

    public struct Reservation: Sendable, Hashable {
        public var id: UInt64
        public var amount: USD
    }

    public enum Decision: Sendable, Equatable {
        case granted(Reservation)
        case exhausted(period: BudgetPeriod, limit: USD, committed: USD, retryAfterSeconds: Int)
    }

    /// May change while calls are in flight (an operator edits the agent): spending and
    /// reservations stay, and the new limits apply from the next reservation on.
    public var limits: Limits
    /// One period of one kind (`BudgetPeriod.index`).
    private struct Slot: Hashable {
        var period: BudgetPeriod
        var index: Int64
    }

    /// Settled spending per period. Keyed by number, not by `BudgetPeriod.key`: building the
    /// key strings (three to five a call) and hashing them was most of a budgeted call's
    /// bookkeeping.
    private var spent: [Slot: USD] = [:]
    private var reservations: [UInt64: USD] = [:]
    public private(set) var reserved: USD = .zero
    private var nextID: UInt64 = 0

    public init(limits: Limits) {
        self.limits = limits
    }

    /// Restores spending already recorded in the usage ledger, e.g. at start-up: `amount` was
    /// spent in the period of kind `period` that contains `epochMs`.
    public mutating func restore(period: BudgetPeriod, epochMs: Int64, spent amount: USD) {
        spent[Slot(period: period, index: period.index(epochMs: epochMs))] = amount
    }

    public func spent(in period: BudgetPeriod, epochMs: Int64) -> USD {
        spent[Slot(period: period, index: period.index(epochMs: epochMs))] ?? .zero
    }

    /// What is left in the tightest period, counting reservations in flight.
    public func remaining(epochMs: Int64) -> USD? {
        var smallest: USD?
        for (period, limit) in limits.perPeriod {
            let left = limit - spent(in: period, epochMs: epochMs) - reserved
            if smallest == nil || left < smallest! { smallest = left }
        }
        return smallest
    }

    public mutating func reserve(_ amount: USD, epochMs: Int64) -> Decision {
        for period in BudgetPeriod.allCases {
            guard let limit = limits.perPeriod[period] else { continue }
            let committed = spent(in: period, epochMs: epochMs) + reserved
            if committed + amount > limit {
                let retry = Int((period.end(epochMs: epochMs) - epochMs + 999) / 1000)
                return .exhausted(period: period, limit: limit, committed: committed, retryAfterSeconds: retry)
            }
        }
        nextID += 1
        reservations[nextID] = amount
        reserved += amount
        return .granted(Reservation(id: nextID, amount: amount))
    }

    /// Replaces a reservation with the real cost, counted in the periods containing `epochMs`.
    public mutating func settle(_ reservation: Reservation, actual: USD, epochMs: Int64) {
        guard let amount = reservations.removeValue(forKey: reservation.id) else {
            preconditionFailure("settled a reservation twice")
        }
        reserved -= amount
        record(actual, epochMs: epochMs)
    }

    /// Counts spending that had no reservation.
    public mutating func record(_ amount: USD, epochMs: Int64) {
        for period in BudgetPeriod.allCases where limits.perPeriod[period] != nil {
            spent[Slot(period: period, index: period.index(epochMs: epochMs)), default: .zero] += amount
        }
        pruneOldPeriods(epochMs: epochMs)
    }

    private mutating func pruneOldPeriods(epochMs: Int64) {
        guard spent.count > 4 else { return }
        spent = spent.filter { $0.key.index == $0.key.period.index(epochMs: epochMs) }
    }
}
