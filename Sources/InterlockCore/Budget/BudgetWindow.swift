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
        let z = days + 719_468
        let era = (z >= 0 ? z : z - 146_096) / 146_097
        let doe = z - era * 146_097
        let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100)
        let mp = (5 * doy + 2) / 153
        self.day = doy - (153 * mp + 2) / 5 + 1
        self.month = mp < 10 ? mp + 3 : mp - 9
        self.year = yoe + era * 400 + (self.month <= 2 ? 1 : 0)
    }

    public static func daysSinceEpoch(year: Int64, month: Int64, day: Int64) -> Int64 {
        let y = month <= 2 ? year - 1 : year
        let era = (y >= 0 ? y : y - 399) / 400
        let yoe = y - era * 400
        let mp = month > 2 ? month - 3 : month + 9
        let doy = (153 * mp + 2) / 5 + day - 1
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy
        return era * 146_097 + doe - 719_468
    }

    private static func pad(_ value: Int64, _ width: Int) -> String {
        let text = String(value)
        return String(repeating: "0", count: max(0, width - text.count)) + text
    }

    public var dayKey: String { "\(CivilDate.pad(year, 4))-\(CivilDate.pad(month, 2))-\(CivilDate.pad(day, 2))" }
    public var monthKey: String { "\(CivilDate.pad(year, 4))-\(CivilDate.pad(month, 2))" }
}
