import InterlockPolicy
/// A calendar period (UTC) over which a dollar budget is counted.
public enum BudgetPeriod: String, Sendable, CaseIterable {
    case day
    case month

    /// The key of the period that contains `epochMs`, e.g. `2026-11-21` or `2026-11`.
    public func key(epochMs: Int64) -> String {
        let date = CivilDate(epochMs: epochMs)
        switch self {
        case .day: return date.dayKey
        case .month: return date.monthKey
        }
    }

    /// The number of the period that contains `epochMs`: days since 1970-01-01 for a day,
    /// `year × 12 + month − 1` for a month. What `key` names, without building a string.
    public func index(epochMs: Int64) -> Int64 {
        let date = CivilDate(epochMs: epochMs)
        switch self {
        case .day: return date.daysSinceEpoch
        case .month: return date.year * 12 + date.month - 1
        }
    }

    /// The Unix time in milliseconds at which the period containing `epochMs` began.
    public func start(epochMs: Int64) -> Int64 {
        let date = CivilDate(epochMs: epochMs)
        switch self {
        case .day:
            return date.daysSinceEpoch * 86_400_000
        case .month:
            return CivilDate.daysSinceEpoch(year: date.year, month: date.month, day: 1) * 86_400_000
        }
    }

    /// The Unix time in milliseconds at which the next period begins.
    public func end(epochMs: Int64) -> Int64 {
        let date = CivilDate(epochMs: epochMs)
        switch self {
        case .day:
            return (date.daysSinceEpoch + 1) * 86_400_000
        case .month:
            let (year, month) = date.month == 12 ? (date.year + 1, 1) : (date.year, date.month + 1)
            return CivilDate.daysSinceEpoch(year: year, month: month, day: 1) * 86_400_000
        }
    }
}

/// A proleptic Gregorian date in UTC (Howard Hinnant's days-from-civil algorithms).
public struct CivilDate: Sendable, Equatable {
    public var year: Int64
    public var month: Int64
    public var day: Int64
    public var daysSinceEpoch: Int64

    public init(epochMs: Int64) {
        let days = epochMs >= 0 ? epochMs / 86_400_000 : (epochMs - 86_399_999) / 86_400_000
        self.daysSinceEpoch = days
        (year, month, day) = CivilCalendar.civil(fromDays: days)
    }

    public static func daysSinceEpoch(year: Int64, month: Int64, day: Int64) -> Int64 {
        CivilCalendar.days(fromCivil: year, month, day)
    }

    private static func pad(_ value: Int64, _ width: Int) -> String { CivilCalendar.pad(value, width) }

    public var dayKey: String { "\(CivilDate.pad(year, 4))-\(CivilDate.pad(month, 2))-\(CivilDate.pad(day, 2))" }
    public var monthKey: String { "\(CivilDate.pad(year, 4))-\(CivilDate.pad(month, 2))" }
}
