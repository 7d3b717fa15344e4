import Foundation

/// Timestamp and duration parsing, formatting and calendar fields.
enum CELTime {
    static func civil(fromDays days: Int64) -> (year: Int64, month: Int64, day: Int64) { CivilCalendar.civil(fromDays: days) }
    static func days(fromCivil year: Int64, _ month: Int64, _ day: Int64) -> Int64 { CivilCalendar.days(fromCivil: year, month, day) }

    // MARK: Timestamps

    /// RFC 3339: `2009-02-13T23:31:30.123Z` or with a `+hh:mm` offset.
    static func parseTimestamp(_ text: String) throws(CELError) -> CELTimestamp {
        let bytes = Array(text.utf8)
        func fail() -> CELError { CELError(.invalidArgument, "timestamp '\(text)' is not RFC 3339") }
        func number(_ range: Range<Int>) throws(CELError) -> Int64 {
            guard range.upperBound <= bytes.count else { throw fail() }
            var value: Int64 = 0
            for byte in bytes[range] {
                guard byte >= 48, byte <= 57 else { throw fail() }
                value = value * 10 + Int64(byte - 48)
            }
            return value
        }
        guard bytes.count >= 20, bytes[4] == 45, bytes[7] == 45, bytes[10] == 84 || bytes[10] == 116, bytes[13] == 58, bytes[16] == 58 else {
            throw fail()
        }
        let year = try number(0..<4), month = try number(5..<7), day = try number(8..<10)
        let hour = try number(11..<13), minute = try number(14..<16), second = try number(17..<19)
        guard (1...12).contains(month), day >= 1, day <= daysIn(month: month, year: year), hour < 24, minute < 60, second < 61 else { throw fail() }
        var position = 19
        var nanos: Int64 = 0
        if position < bytes.count, bytes[position] == 46 {
            position += 1
            var digits = 0
            while position < bytes.count, bytes[position] >= 48, bytes[position] <= 57 {
                if digits < 9 { nanos = nanos * 10 + Int64(bytes[position] - 48) }
                digits += 1
                position += 1
            }
            guard digits > 0 else { throw fail() }
            for _ in digits..<max(digits, 9) { nanos *= 10 }
        }
        guard position < bytes.count else { throw fail() }
        var offset: Int64 = 0
        if bytes[position] == 90 || bytes[position] == 122 {
            position += 1
        } else if bytes[position] == 43 || bytes[position] == 45 {
            let sign: Int64 = bytes[position] == 45 ? -1 : 1
            guard position + 6 == bytes.count, bytes[position + 3] == 58 else { throw fail() }
            offset = sign * (try number(position + 1..<position + 3) * 3600 + number(position + 4..<position + 6) * 60)
            position += 6
        } else {
            throw fail()
        }
        guard position == bytes.count else { throw fail() }
        let seconds = days(fromCivil: year, month, day) * 86400 + hour * 3600 + minute * 60 + second - offset
        return try CELTimestamp.make(seconds: seconds, nanos: nanos)
    }

    static func daysIn(month: Int64, year: Int64) -> Int64 {
        switch month {
        case 2: (year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)) ? 29 : 28
        case 4, 6, 9, 11: 30
        default: 31
        }
    }

    static func format(_ timestamp: CELTimestamp) -> String {
        let days = floorDiv(timestamp.seconds, 86400)
        let secondOfDay = timestamp.seconds - days * 86400
        let (year, month, day) = civil(fromDays: days)
        var text = pad(year, 4) + "-" + pad(month, 2) + "-" + pad(day, 2) + "T" + pad(secondOfDay / 3600, 2) + ":" + pad(secondOfDay / 60 % 60, 2) + ":"
            + pad(secondOfDay % 60, 2)
        if timestamp.nanos != 0 { text += "." + fraction(timestamp.nanos) }
        return text + "Z"
    }

    /// Nanoseconds as a fraction without trailing zeros.
    static func fraction(_ nanos: Int32) -> String {
        var digits = pad(Int64(abs(nanos)), 9)
        while digits.hasSuffix("0") { digits.removeLast() }
        return digits
    }

    static func pad(_ value: Int64, _ width: Int) -> String { CivilCalendar.pad(value, width) }

    static func floorDiv(_ a: Int64, _ b: Int64) -> Int64 {
        let q = a / b
        return (a % b != 0 && (a < 0) != (b < 0)) ? q - 1 : q
    }

    /// The UTC offset in seconds of a time zone given as an IANA name or `[+-]hh:mm`, at `seconds`.
    static func offset(timeZone name: String, at seconds: Int64) throws(CELError) -> Int64 {
        let bytes = Array(name.utf8)
        if let first = bytes.first, first == 43 || first == 45 || (first >= 48 && first <= 57) {
            let parts = (first >= 48 && first <= 57 ? Substring(name) : name.dropFirst()).split(separator: ":")
            guard parts.count == 2, let hours = Int64(parts[0]), let minutes = Int64(parts[1]), hours < 24, minutes < 60 else {
                throw CELError(.invalidArgument, "invalid time zone '\(name)'")
            }
            return (first == 45 ? -1 : 1) * (hours * 3600 + minutes * 60)
        }
        if name == "UTC" || name == "Z" { return 0 }
        guard let zone = TimeZone(identifier: name) else { throw CELError(.invalidArgument, "unknown time zone '\(name)'") }
        return Int64(zone.secondsFromGMT(for: Date(timeIntervalSince1970: Double(seconds))))
    }

    /// `getFullYear`, `getHours`, ... of a timestamp, in UTC or the given zone.
    static func field(_ function: String, of timestamp: CELTimestamp, timeZone: String?) throws(CELError) -> Int64? {
        let local = timestamp.seconds + (try timeZone.map { name throws(CELError) in try offset(timeZone: name, at: timestamp.seconds) } ?? 0)
        let days = floorDiv(local, 86400)
        let secondOfDay = local - days * 86400
        let (year, month, day) = civil(fromDays: days)
        switch function {
        case "getFullYear": return year
        case "getMonth": return month - 1
        case "getDate": return day
        case "getDayOfMonth": return day - 1
        case "getDayOfYear": return days - self.days(fromCivil: year, 1, 1)
        case "getDayOfWeek": return ((days % 7) + 11) % 7
        case "getHours": return secondOfDay / 3600
        case "getMinutes": return secondOfDay / 60 % 60
        case "getSeconds": return secondOfDay % 60
        case "getMilliseconds": return Int64(timestamp.nanos) / 1_000_000
        default: return nil
        }
    }

    // MARK: Durations

    /// Go duration syntax: `1h2m3.5s`, `-1.5s`, `100ms`, `10us`, `1ns`.
    static func parseDuration(_ text: String) throws(CELError) -> CELDuration {
        func fail() -> CELError { CELError(.invalidArgument, "invalid duration '\(text)'") }
        var scalars = Substring(text)
        var negative = false
        if scalars.first == "-" || scalars.first == "+" {
            negative = scalars.first == "-"
            scalars = scalars.dropFirst()
        }
        if scalars == "0" { return CELDuration(seconds: 0, nanos: 0) }
        guard !scalars.isEmpty else { throw fail() }
        // Total in nanoseconds as (seconds, nanos) to avoid overflow.
        var seconds: Int64 = 0
        var nanos: Int64 = 0
        while !scalars.isEmpty {
            let whole = scalars.prefix { $0.isASCII && $0.isNumber }
            scalars = scalars.dropFirst(whole.count)
            var fractionDigits = Substring("")
            if scalars.first == "." {
                scalars = scalars.dropFirst()
                fractionDigits = scalars.prefix { $0.isASCII && $0.isNumber }
                scalars = scalars.dropFirst(fractionDigits.count)
            }
            guard !whole.isEmpty || !fractionDigits.isEmpty else { throw fail() }
            let unit = scalars.prefix { !($0.isASCII && $0.isNumber) && $0 != "." }
            scalars = scalars.dropFirst(unit.count)
            let unitNanos: Int64
            switch unit {
            case "ns": unitNanos = 1
            case "us", "µs", "μs": unitNanos = 1000
            case "ms": unitNanos = 1_000_000
            case "s": unitNanos = 1_000_000_000
            case "m": unitNanos = 60_000_000_000
            case "h": unitNanos = 3_600_000_000_000
            default: throw fail()
            }
            guard let wholeValue = whole.isEmpty ? 0 : Int64(whole) else { throw CELError(.outOfRange, "duration out of range") }
            // whole * unit, split into seconds and nanos.
            let (wholeNanos, overflow) = wholeValue.multipliedReportingOverflow(by: unitNanos)
            if overflow {
                guard unitNanos >= 1_000_000_000 else { throw CELError(.outOfRange, "duration out of range") }
                let (s, o) = wholeValue.multipliedReportingOverflow(by: unitNanos / 1_000_000_000)
                if o { throw CELError(.outOfRange, "duration out of range") }
                seconds += s
            } else {
                seconds += wholeNanos / 1_000_000_000
                nanos += wholeNanos % 1_000_000_000
            }
            if !fractionDigits.isEmpty {
                // fraction * unit in nanoseconds, with enough precision.
                var scale: Double = 1
                var value: Double = 0
                for digit in fractionDigits.prefix(18) {
                    scale /= 10
                    value += Double(digit.wholeNumberValue!) * scale
                }
                let extra = value * Double(unitNanos)
                seconds += Int64(extra / 1e9)
                nanos += Int64((extra - Double(Int64(extra / 1e9)) * 1e9).rounded())
            }
        }
        return try CELDuration.make(seconds: negative ? -seconds : seconds, nanos: negative ? -nanos : nanos)
    }

    /// `1000000s`, `1.5s`, `-0.000000001s`.
    static func format(_ duration: CELDuration) -> String {
        let negative = duration.seconds < 0 || duration.nanos < 0
        var text = (negative ? "-" : "") + String(abs(duration.seconds))
        if duration.nanos != 0 { text += "." + fraction(duration.nanos) }
        return text + "s"
    }

    static func field(_ function: String, of duration: CELDuration) -> Int64? {
        switch function {
        case "getHours": duration.seconds / 3600
        case "getMinutes": duration.seconds / 60
        case "getSeconds": duration.seconds
        case "getMilliseconds": Int64(duration.nanos) / 1_000_000
        default: nil
        }
    }
}
