/// The JSON Canonicalization Scheme (RFC 8785): the one byte sequence a JSON value hashes
/// to. Object members sorted by the UTF-16 code units of their names, no whitespace, strings
/// with the minimal escapes, numbers as ECMAScript writes them.
public enum CanonicalJSON {
    public static func bytes(_ value: JSONValue) -> [UInt8] {
        var output: [UInt8] = []
        output.reserveCapacity(256)
        write(value, into: &output)
        return output
    }

    public static func write(_ value: JSONValue, into output: inout [UInt8]) {
        switch value {
        case .null, .bool, .string:
            JSONWriter.write(value, into: &output)
        case .integer(let integer) where integer.magnitude <= 1 << 53:
            // Exactly representable as a double: ECMAScript writes it as plain digits.
            output.append(contentsOf: String(integer).utf8)
        case .integer(let integer):
            output.append(contentsOf: number(Double(integer)).utf8)
        case .number(let double):
            output.append(contentsOf: number(double).utf8)
        case .array(let array):
            output.append(UInt8(ascii: "["))
            for (offset, element) in array.enumerated() {
                if offset > 0 { output.append(UInt8(ascii: ",")) }
                write(element, into: &output)
            }
            output.append(UInt8(ascii: "]"))
        case .object(let object):
            output.append(UInt8(ascii: "{"))
            let members = object.map { ($0.key, $0.value) }.sorted { $0.0.utf16.lexicographicallyPrecedes($1.0.utf16) }
            for (offset, member) in members.enumerated() {
                if offset > 0 { output.append(UInt8(ascii: ",")) }
                JSONWriter.writeString(member.0, into: &output)
                output.append(UInt8(ascii: ":"))
                write(member.1, into: &output)
            }
            output.append(UInt8(ascii: "}"))
        }
    }

    /// ECMAScript `Number.prototype.toString` (ECMA-262 §6.1.6.1.20), which RFC 8785 uses:
    /// shortest round-trip digits, plain notation for 1e-6 ≤ |x| < 1e21, else `d.ddde±n`.
    /// Integers travel as doubles, so integers beyond 2^53 lose precision as in JavaScript.
    /// Non-finite values have no JSON form and are written as `null`.
    public static func number(_ value: Double) -> String {
        guard value.isFinite else { return "null" }
        if value == 0 { return "0" }
        // Swift's description is the shortest round-trip form; take its digits and exponent.
        var text = "\(abs(value))"
        var exponent = 0
        if let e = text.firstIndex(where: { $0 == "e" || $0 == "E" }) {
            exponent = Int(text[text.index(after: e)...]) ?? 0
            text = String(text[..<e])
        }
        let parts = text.split(separator: ".", omittingEmptySubsequences: false)
        let integerPart = String(parts[0])
        let fractionPart = parts.count > 1 ? String(parts[1]) : ""
        var digits: String
        var n: Int  // the decimal point sits after `n` digits
        if integerPart != "0" {
            digits = integerPart + fractionPart
            n = integerPart.count
        } else {
            let leadingZeros = fractionPart.prefix { $0 == "0" }.count
            digits = String(fractionPart.dropFirst(leadingZeros))
            n = -leadingZeros
        }
        while digits.count > 1, digits.hasSuffix("0") { digits.removeLast() }
        let leading = digits.prefix { $0 == "0" }.count
        if leading > 0, leading < digits.count {
            digits.removeFirst(leading)
            n -= leading
        }
        n += exponent
        let k = digits.count
        let sign = value < 0 ? "-" : ""
        if k <= n, n <= 21 {
            return sign + digits + String(repeating: "0", count: n - k)
        }
        if 0 < n, n <= 21 {
            let split = digits.index(digits.startIndex, offsetBy: n)
            return sign + digits[..<split] + "." + digits[split...]
        }
        if -6 < n, n <= 0 {
            return sign + "0." + String(repeating: "0", count: -n) + digits
        }
        let e = n - 1
        let exponentText = (e < 0 ? "-" : "+") + String(abs(e))
        if k == 1 { return sign + digits + "e" + exponentText }
        return sign + digits.prefix(1) + "." + digits.dropFirst() + "e" + exponentText
    }
}
