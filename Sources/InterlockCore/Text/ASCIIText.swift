/// Small text routines for the per-call path, written on bytes: headers and hashes are
/// ASCII, and the general `String` operations (Foundation's `contains`, `lowercased`,
/// `Double` formatting) showed in profiles of every call.
public enum ASCIIText {
    /// RFC 9110 §5.6.2 `tchar`: a byte of an HTTP token (method, header name).
    @inlinable
    public static func isHTTPToken(_ byte: UInt8) -> Bool {
        switch byte {
        case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "0")...UInt8(ascii: "9"),
            UInt8(ascii: "!"), UInt8(ascii: "#"), UInt8(ascii: "$"), UInt8(ascii: "%"), UInt8(ascii: "&"), UInt8(ascii: "'"), UInt8(ascii: "*"),
            UInt8(ascii: "+"), UInt8(ascii: "-"), UInt8(ascii: "."), UInt8(ascii: "^"), UInt8(ascii: "_"), UInt8(ascii: "`"), UInt8(ascii: "|"),
            UInt8(ascii: "~"):
            true
        default:
            false
        }
    }

    /// Whether `bytes` are exactly `text`'s bytes.
    @inlinable
    public static func equals(_ bytes: UnsafeRawBufferPointer, _ text: StaticString) -> Bool {
        guard bytes.count == text.utf8CodeUnitCount else { return false }
        let expected = text.utf8Start
        for offset in 0..<bytes.count where bytes[offset] != expected[offset] { return false }
        return true
    }

    /// The lowercase digit of a value below 36 (`0`–`9`, then `a`–`z`): a hex digit below 16.
    @inline(__always)
    public static func hexDigit(_ value: UInt8) -> UInt8 {
        value < 10 ? UInt8(ascii: "0") + value : UInt8(ascii: "a") + value - 10
    }

    /// `prefix` followed by `value` written in `radix` (2 to 36, lowercase digits), built in
    /// one buffer: `String(_:radix:)` is generic, and request ids and `content-length` values
    /// are written on every call.
    public static func digits(_ value: UInt64, radix: UInt64 = 10, after prefix: String = "") -> String {
        precondition((2...36).contains(radix), "radix out of range")
        let count = digitCount(value, radix: radix)
        var prefix = prefix
        return prefix.withUTF8 { head in
            String(unsafeUninitializedCapacity: head.count + count) { buffer in
                if let source = head.baseAddress { buffer.baseAddress!.initialize(from: source, count: head.count) }
                var value = value
                var index = head.count + count
                repeat {
                    index -= 1
                    buffer[index] = hexDigit(UInt8(value % radix))
                    value /= radix
                } while value > 0
                return head.count + count
            }
        }
    }

    /// How many digits `value` has in `radix`.
    private static func digitCount(_ value: UInt64, radix: UInt64) -> Int {
        var count = 1
        var rest = value / radix
        while rest > 0 {
            count += 1
            rest /= radix
        }
        return count
    }

    /// `units` divided by 10^`scale`, with no trailing zeros in the fraction: `fixedPoint(123_000,
    /// scale: 9)` is `0.000123`, `fixedPoint(2_500, scale: 3)` is `2.5`, `fixedPoint(3_000, scale: 3)` is `3`.
    /// Written straight into the string's storage (costs and overheads go out on every call).
    public static func fixedPoint(_ units: Int64, scale: Int) -> String {
        precondition((0...18).contains(scale), "scale out of range")
        var divisor: UInt64 = 1
        for _ in 0..<scale { divisor *= 10 }
        var whole = units.magnitude / divisor
        var fraction = units.magnitude % divisor
        var places = fraction == 0 ? 0 : scale
        while places > 0, fraction % 10 == 0 {
            fraction /= 10
            places -= 1
        }
        let wholeDigits = digitCount(whole, radix: 10)
        let sign = units < 0 ? 1 : 0
        let length = sign + wholeDigits + (places > 0 ? 1 + places : 0)
        return String(unsafeUninitializedCapacity: length) { buffer in
            // Right to left: the fraction's digits, the point, the whole part, the sign.
            var index = length
            for _ in 0..<places {
                index -= 1
                buffer[index] = UInt8(ascii: "0") + UInt8(fraction % 10)
                fraction /= 10
            }
            if places > 0 {
                index -= 1
                buffer[index] = UInt8(ascii: ".")
            }
            repeat {
                index -= 1
                buffer[index] = UInt8(ascii: "0") + UInt8(whole % 10)
                whole /= 10
            } while whole > 0
            if sign == 1 { buffer[0] = UInt8(ascii: "-") }
            return length
        }
    }

    /// Lowercase hex of some bytes (digests), written straight into the string's storage.
    public static func hex(_ bytes: UnsafeRawBufferPointer) -> String {
        String(unsafeUninitializedCapacity: bytes.count * 2) { buffer in
            for (index, byte) in bytes.enumerated() {
                buffer[2 * index] = hexDigit(byte >> 4)
                buffer[2 * index + 1] = hexDigit(byte & 0x0F)
            }
            return bytes.count * 2
        }
    }

    /// Whether `haystack` contains `needle` (lowercase ASCII), ignoring ASCII case.
    public static func contains(_ haystack: String, ignoringCase needle: StaticString) -> Bool {
        needle.withUTF8Buffer { needle in
            var haystack = haystack
            return haystack.withUTF8 { bytes in
                guard bytes.count >= needle.count else { return false }
                for start in 0...(bytes.count - needle.count) {
                    var index = 0
                    while index < needle.count {
                        var byte = bytes[start + index]
                        if byte >= UInt8(ascii: "A"), byte <= UInt8(ascii: "Z") { byte += 32 }
                        guard byte == needle[index] else { break }
                        index += 1
                    }
                    if index == needle.count { return true }
                }
                return false
            }
        }
    }
}
