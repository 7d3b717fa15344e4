public import InterlockPolicy

/// What a detector found: which detector, and where (UTF-8 byte offsets in the scanned text).
/// The text itself is never kept.
public struct GuardrailFinding: Sendable, Equatable {
    /// `secrets.aws_access_key`, `pii.card`, `exfiltration.url`, `injection.override`, `custom.<name>`, ...
    public var detector: String
    public var range: Range<Int>

    public init(detector: String, range: Range<Int>) {
        self.detector = detector
        self.range = range
    }

    /// The detector's family: `secrets`, `pii`, `exfiltration`, `injection` or `custom`.
    public var category: String { String(detector.prefix { $0 != "." }) }
}

/// Which detectors to run and what they need to know.
public struct GuardrailScanOptions: Sendable {
    public var secrets = false
    public var pii = false
    public var exfiltration = false
    public var injection = false
    /// Custom patterns by name.
    public var custom: [(name: String, regex: CELRegex)] = []
    /// Domains e-mail may go to (a domain covers its subdomains).
    public var allowedDomains: [String] = []
    /// Hosts URLs may point at (a host covers its subdomains).
    public var allowedHosts: [String] = []
    /// The JSON key the text came from (`to`, `bcc`, ...), for recipient checks.
    public var field: String?

    public init() {}

    public var isEmpty: Bool { !secrets && !pii && !exfiltration && !injection && custom.isEmpty }
}

/// The guardrail detectors: secrets, personal data, exfiltration channels, prompt injection
/// and custom patterns. Hand-written scanners over UTF-8 bytes (one pass per family, no
/// backtracking), so scanning stays linear in the text and fast on large payloads.
public enum GuardrailDetectors {
    public static func scan(_ text: String, _ options: GuardrailScanOptions) -> [GuardrailFinding] {
        guard !options.isEmpty, !text.isEmpty else { return [] }
        var bytes = Array(text.utf8)
        return scan(bytes: &bytes, text: text, options)
    }

    static func scan(bytes: inout [UInt8], text: String, _ options: GuardrailScanOptions) -> [GuardrailFinding] {
        var findings: [GuardrailFinding] = []
        // One buffer pointer for every helper: no reference counting per call.
        bytes.withUnsafeBufferPointer { b in
            if options.secrets || options.pii || options.exfiltration { tokens(b, options, &findings) }
            if options.injection { injection(b, &findings) }
        }
        for (name, regex) in options.custom {
            // Bounded: a pattern that matches everywhere cannot make a scan quadratic.
            for match in regex.allMatches(in: bytes, limit: maxFindingsPerPattern) {
                findings.append(GuardrailFinding(detector: "custom.\(name)", range: match))
            }
        }
        return merge(findings)
    }

    /// Findings one custom pattern may report in one text.
    static let maxFindingsPerPattern = 1_000

    /// Findings in text order; within one family, overlapping ones are kept once (the
    /// earlier, longer one wins). Different families may overlap (an address can be both
    /// personal data and a recipient outside the company).
    static func merge(_ findings: [GuardrailFinding]) -> [GuardrailFinding] {
        let sorted = findings.sorted { ($0.range.lowerBound, -$0.range.count) < ($1.range.lowerBound, -$1.range.count) }
        var result: [GuardrailFinding] = []
        var lastEnd: [String: Int] = [:]
        for finding in sorted {
            let family = finding.category
            if let end = lastEnd[family], finding.range.lowerBound < end { continue }
            lastEnd[family] = finding.range.upperBound
            result.append(finding)
        }
        return result
    }

    // MARK: Character classes

    @inline(__always) static func isDigit(_ b: UInt8) -> Bool { b >= 48 && b <= 57 }
    @inline(__always) static func isUpper(_ b: UInt8) -> Bool { b >= 65 && b <= 90 }
    @inline(__always) static func isLower(_ b: UInt8) -> Bool { b >= 97 && b <= 122 }
    @inline(__always) static func isAlnum(_ b: UInt8) -> Bool { isDigit(b) || isUpper(b) || isLower(b) }
    /// Characters of key-like tokens: base64/base64url, plus `.` (JWTs).
    @inline(__always) static func isTokenByte(_ b: UInt8) -> Bool {
        isAlnum(b) || b == 95 || b == 45 || b == 43 || b == 47 || b == 61 || b == 46
    }

    // MARK: Tokens: secrets, e-mail, cards, IBANs, ids, phones, URLs

    /// One pass over the text: each run of token characters is classified; e-mail, URLs,
    /// card and phone numbers (which contain separators) are found from their anchors.
    static func tokens(_ b: UnsafeBufferPointer<UInt8>, _ options: GuardrailScanOptions, _ findings: inout [GuardrailFinding]) {
        let n = b.count
        var i = 0
        var nextColon = -1
        while i < n {
            let c = b[i]
            // Private key blocks.
            if options.secrets, c == 45, matches(b, i, "-----BEGIN "), let end = privateKeyHeaderEnd(b, i) {
                // Without its END line (cut off, or still streaming) the rest of the text is key material.
                let blockEnd = find(b, "-----END ", from: end).flatMap { endStart in lineEnd(b, endStart) } ?? n
                findings.append(GuardrailFinding(detector: "secrets.private_key", range: i..<blockEnd))
                i = blockEnd
                continue
            }
            // URLs (exfiltration, credentials in URLs, markdown images): only where a "://"
            // follows within a scheme's length (the next ':' is tracked, so this stays linear).
            if nextColon < i {
                nextColon = i
                while nextColon < n, b[nextColon] != 58 { nextColon += 1 }
            }
            if options.exfiltration || options.secrets, nextColon - i <= 16, nextColon + 2 < n, b[nextColon + 1] == 47, isLower(c) || isUpper(c),
                i == 0 || !isAlnum(b[i - 1]), let url = urlAt(b, i)
            {
                if options.secrets, let credentials = urlCredentials(b, url) {
                    findings.append(GuardrailFinding(detector: "secrets.url_credentials", range: credentials))
                }
                if options.exfiltration, url.web {
                    let isImage = i >= 2 && b[i - 1] == 40 && b[i - 2] == 93 && markdownImageStart(b, before: i - 2) != nil
                    if isImage {
                        let hasData = url.host.isEmpty == false && (contains(b, url.range, 63) || !hostAllowed(b, url.host, options.allowedHosts))
                        if hasData { findings.append(GuardrailFinding(detector: "exfiltration.markdown_image", range: url.range)) }
                    } else if !options.allowedHosts.isEmpty, !hostAllowed(b, url.host, options.allowedHosts) {
                        findings.append(GuardrailFinding(detector: "exfiltration.url", range: url.range))
                    }
                }
                i = url.range.upperBound
                continue
            }
            // E-mail addresses, found from their '@'.
            if c == 64, options.pii || options.exfiltration, let email = emailAround(b, at: i) {
                if options.pii { findings.append(GuardrailFinding(detector: "pii.email", range: email.range)) }
                if options.exfiltration, !options.allowedDomains.isEmpty, let field = options.field, recipientFields.contains(field.lowercased()),
                    !hostAllowed(b, email.domain, options.allowedDomains)
                {
                    findings.append(GuardrailFinding(detector: "exfiltration.recipient", range: email.range))
                }
                i = email.range.upperBound
                continue
            }
            guard isTokenByte(c) || c == 40 else {
                i += 1
                continue
            }
            // Numbers (cards, ids, phones) start after any non-alphanumeric byte.
            if options.pii, isDigit(c) || c == 40 || c == 43, i == 0 || !isAlnum(b[i - 1]) {
                if let card = cardAt(b, i) {
                    findings.append(GuardrailFinding(detector: "pii.card", range: card))
                    i = card.upperBound
                    continue
                }
                if let ssn = ssnAt(b, i) {
                    findings.append(GuardrailFinding(detector: "pii.national_id", range: ssn))
                    i = ssn.upperBound
                    continue
                }
                if let phone = phoneAt(b, i) {
                    findings.append(GuardrailFinding(detector: "pii.phone", range: phone))
                    i = phone.upperBound
                    continue
                }
            }
            // Token boundary: the previous byte must not be a token byte.
            if i > 0, isTokenByte(b[i - 1]) {
                i += 1
                continue
            }
            var end = i
            while end < n, isTokenByte(b[end]) { end += 1 }
            // A trailing '.' ends a sentence, not a token.
            var tokenEnd = end
            while tokenEnd > i, b[tokenEnd - 1] == 46 { tokenEnd -= 1 }
            if tokenEnd > i {
                if options.secrets, let detector = secretKind(b, i, tokenEnd) {
                    findings.append(GuardrailFinding(detector: detector, range: i..<tokenEnd))
                } else if options.pii, let detector = idKind(b, i, tokenEnd) {
                    findings.append(GuardrailFinding(detector: detector, range: idRange(b, i, tokenEnd, detector)))
                    if detector == "pii.iban" {
                        i = idRange(b, i, tokenEnd, detector).upperBound
                        continue
                    }
                } else if options.secrets, let assignment = assignmentSecret(b, i, tokenEnd) {
                    findings.append(GuardrailFinding(detector: "secrets.assignment", range: assignment))
                    i = assignment.upperBound
                    continue
                }
            }
            // Nothing here: go on inside the token where a new value may start (a number after
            // `=`, a key after `_`), skipping runs of letters and digits.
            i += 1
            while i < end, isAlnum(b[i - 1]), b[i] != 64 { i += 1 }
        }
    }

    static let recipientFields: Set<String> = ["to", "cc", "bcc", "recipient", "recipients", "reply_to", "replyto", "email", "emails", "address", "addresses"]

    @inline(__always) static func matches(_ b: UnsafeBufferPointer<UInt8>, _ at: Int, _ literal: StaticString) -> Bool {
        let count = literal.utf8CodeUnitCount
        guard at + count <= b.count else { return false }
        return literal.withUTF8Buffer { pattern in
            for k in 0..<count where b[at + k] != pattern[k] { return false }
            return true
        }
    }

    /// Case-insensitive match of a lowercase ASCII literal.
    @inline(__always) static func matchesLower(_ b: UnsafeBufferPointer<UInt8>, _ at: Int, _ literal: StaticString) -> Bool {
        let count = literal.utf8CodeUnitCount
        guard at + count <= b.count else { return false }
        return literal.withUTF8Buffer { pattern in
            for k in 0..<count {
                var byte = b[at + k]
                if isUpper(byte) { byte += 32 }
                if byte != pattern[k] { return false }
            }
            return true
        }
    }

    static func find(_ b: UnsafeBufferPointer<UInt8>, _ literal: StaticString, from: Int) -> Int? {
        var i = from
        while i < b.count {
            if matches(b, i, literal) { return i }
            i += 1
        }
        return nil
    }

    static func lineEnd(_ b: UnsafeBufferPointer<UInt8>, _ from: Int) -> Int? {
        var i = from
        while i < b.count, b[i] != 10 { i += 1 }
        return i
    }

    static func contains(_ b: UnsafeBufferPointer<UInt8>, _ range: Range<Int>, _ byte: UInt8) -> Bool {
        b[range].contains(byte)
    }

    /// `-----BEGIN [TYPE ]PRIVATE KEY-----`: where the header ends.
    static func privateKeyHeaderEnd(_ b: UnsafeBufferPointer<UInt8>, _ start: Int) -> Int? {
        var i = start + 11
        while i < b.count, i < start + 60, isUpper(b[i]) || b[i] == 32 { i += 1 }
        guard i >= start + 22, matches(b, i - 11, "PRIVATE KEY"), matches(b, i, "-----") else { return nil }
        return i + 5
    }

    // MARK: Secrets

    /// The kind of a key-like token, if it is one.
    static func secretKind(_ b: UnsafeBufferPointer<UInt8>, _ s: Int, _ e: Int) -> String? {
        let length = e - s
        guard length >= 16 else { return nil }
        func body(_ from: Int, _ allowed: (UInt8) -> Bool) -> Int {
            var k = from
            while k < e, allowed(b[k]) { k += 1 }
            return k - from
        }
        let alnumDashUnderscore: (UInt8) -> Bool = { isAlnum($0) || $0 == 95 || $0 == 45 }
        switch b[s] {
        case 65:  // A
            if length == 20, matches(b, s, "AKIA") || matches(b, s, "ASIA") || matches(b, s, "ABIA") || matches(b, s, "ACCA"),
                body(s + 4, { isUpper($0) || isDigit($0) }) == 16
            {
                return "secrets.aws_access_key"
            }
            if matches(b, s, "AIza"), length == 39, body(s + 4, alnumDashUnderscore) == 35 { return "secrets.google_api_key" }
        case 103:  // g
            if length >= 40, matches(b, s, "gh"), s + 3 < e, "pousr".utf8.contains(b[s + 2]), b[s + 3] == 95, body(s + 4, isAlnum) >= 36 {
                return "secrets.github_token"
            }
            if matches(b, s, "github_pat_"), body(s + 11, { isAlnum($0) || $0 == 95 }) >= 22 { return "secrets.github_token" }
            if matches(b, s, "glpat-"), body(s + 6, alnumDashUnderscore) >= 20 { return "secrets.gitlab_token" }
        case 120:  // x
            if matches(b, s, "xox"), s + 4 < e, "abposr".utf8.contains(b[s + 3]), b[s + 4] == 45, body(s + 5, alnumDashUnderscore) >= 10 {
                return "secrets.slack_token"
            }
        case 115, 114:  // s, r
            if matches(b, s, "sk-ant-"), body(s + 7, alnumDashUnderscore) >= 20 { return "secrets.anthropic_key" }
            if matches(b, s, "sk_live_") || matches(b, s, "sk_test_") || matches(b, s, "rk_live_") || matches(b, s, "rk_test_"),
                body(s + 8, isAlnum) >= 16
            {
                return "secrets.stripe_key"
            }
            if matches(b, s, "sk-"), body(s + 3, alnumDashUnderscore) >= 20, highEntropy(b, s + 3, e, threshold: 3.5) { return "secrets.openai_key" }
        case 101:  // e
            if matches(b, s, "eyJ"), let jwt = jwtLength(b, s, e), jwt == length { return "secrets.jwt" }
        case 110:  // n
            if matches(b, s, "npm_"), body(s + 4, isAlnum) >= 36 { return "secrets.npm_token" }
        case 112:  // p
            if matches(b, s, "pypi-AgEIcHlwaS5vcmc"), length >= 60 { return "secrets.pypi_token" }
        case 83:  // S
            if matches(b, s, "SG."), length >= 60 { return "secrets.sendgrid_key" }
        default:
            break
        }
        // High-entropy strings: long, mixed letters and digits, and random-looking.
        if length >= 24, length <= 512, hasLettersAndDigits(b, s, e) {
            if isHex(b, s, e) {
                if length >= 32, highEntropy(b, s, e, threshold: 3.3) { return "secrets.high_entropy" }
            } else if highEntropy(b, s, e, threshold: 4.2), !looksLikeWordsOrPath(b, s, e) {
                return "secrets.high_entropy"
            }
        }
        return nil
    }

    static func jwtLength(_ b: UnsafeBufferPointer<UInt8>, _ s: Int, _ e: Int) -> Int? {
        var parts = 0
        var k = s
        var partLength = 0
        while k < e {
            if b[k] == 46 {
                guard partLength >= 4 else { return nil }
                parts += 1
                partLength = 0
            } else if isAlnum(b[k]) || b[k] == 95 || b[k] == 45 {
                partLength += 1
            } else {
                return nil
            }
            k += 1
        }
        return parts == 2 && partLength >= 4 ? k - s : nil
    }

    static func hasLettersAndDigits(_ b: UnsafeBufferPointer<UInt8>, _ s: Int, _ e: Int) -> Bool {
        var letters = false
        var digits = false
        for k in s..<e {
            if isDigit(b[k]) { digits = true } else if isUpper(b[k]) || isLower(b[k]) { letters = true }
            if letters && digits { return true }
        }
        return false
    }

    static func isHex(_ b: UnsafeBufferPointer<UInt8>, _ s: Int, _ e: Int) -> Bool {
        for k in s..<e where !(isDigit(b[k]) || (b[k] >= 97 && b[k] <= 102) || (b[k] >= 65 && b[k] <= 70)) { return false }
        return true
    }

    /// Paths, dotted names and identifiers are long and varied but not secrets.
    static func looksLikeWordsOrPath(_ b: UnsafeBufferPointer<UInt8>, _ s: Int, _ e: Int) -> Bool {
        var separators = 0
        for k in s..<e where b[k] == 47 || b[k] == 46 || b[k] == 95 || b[k] == 45 { separators += 1 }
        return separators * 6 > (e - s)
    }

    /// Shannon entropy of the bytes, in bits per byte, at least `threshold`.
    static func highEntropy(_ b: UnsafeBufferPointer<UInt8>, _ s: Int, _ e: Int, threshold: Double) -> Bool {
        var counts = [Int](repeating: 0, count: 128)
        for k in s..<e { counts[Int(b[k] & 0x7F)] += 1 }
        let total = Double(e - s)
        var entropy = 0.0
        for count in counts where count > 0 {
            let p = Double(count) / total
            entropy -= p * log2(p)
        }
        return entropy >= threshold
    }

    static func log2(_ x: Double) -> Double {
        // log2 without Foundation: frexp-based.
        var exponent = 0
        var mantissa = x
        while mantissa >= 2 {
            mantissa /= 2
            exponent += 1
        }
        while mantissa < 1 {
            mantissa *= 2
            exponent -= 1
        }
        // ln(m)/ln(2) for m in [1, 2) by a short series on t = (m-1)/(m+1).
        let t = (mantissa - 1) / (mantissa + 1)
        let t2 = t * t
        let ln = 2 * t * (1 + t2 / 3 + t2 * t2 / 5 + t2 * t2 * t2 / 7 + t2 * t2 * t2 * t2 / 9)
        return Double(exponent) + ln / 0.6931471805599453
    }

    /// `password: hunter2`, `api_key="..."`: a secret-named key followed by a value.
    static let secretNames: [StaticString] = ["password", "passwd", "pwd", "secret", "api_key", "apikey", "api-key", "access_token", "auth_token", "client_secret"]

    static func assignmentSecret(_ b: UnsafeBufferPointer<UInt8>, _ s: Int, _ e: Int) -> Range<Int>? {
        // Cheap filters first: most words are not one of these names.
        guard e - s >= 3, e - s <= 13, e < b.count, b[e] == 58 || b[e] == 61 || b[e] == 32 || b[e] == 34 || b[e] == 39 else { return nil }
        let first = b[s] | 0x20
        guard first == 112 || first == 115 || first == 97 || first == 99 else { return nil }
        guard secretNames.contains(where: { matchesLower(b, s, $0) && s + $0.utf8CodeUnitCount == e }) else { return nil }
        var k = e
        if k < b.count, b[k] == 34 || b[k] == 39 { k += 1 }
        while k < b.count, b[k] == 32 { k += 1 }
        guard k < b.count, b[k] == 58 || b[k] == 61 else { return nil }
        k += 1
        while k < b.count, b[k] == 32 || b[k] == 34 || b[k] == 39 { k += 1 }
        let valueStart = k
        while k < b.count, b[k] > 32, b[k] != 34, b[k] != 39, b[k] != 44, b[k] != 59, b[k] != 125 { k += 1 }
        guard k - valueStart >= 6 else { return nil }
        // Placeholders are not secrets.
        let value = b[valueStart..<k]
        if value.allSatisfy({ $0 == 42 || $0 == 120 || $0 == 88 }) || value.first == 60 || value.first == 36 { return nil }
        return valueStart..<k
    }

    // MARK: Personal data

    static func emailAround(_ b: UnsafeBufferPointer<UInt8>, at: Int) -> (range: Range<Int>, domain: Range<Int>)? {
        func local(_ c: UInt8) -> Bool { isAlnum(c) || c == 46 || c == 95 || c == 37 || c == 43 || c == 45 }
        var start = at
        while start > 0, local(b[start - 1]) { start -= 1 }
        while start < at, b[start] == 46 { start += 1 }
        guard start < at else { return nil }
        var end = at + 1
        var lastDot = -1
        while end < b.count, isAlnum(b[end]) || b[end] == 45 || b[end] == 46 {
            if b[end] == 46 { lastDot = end }
            end += 1
        }
        while end > at + 1, b[end - 1] == 46 || b[end - 1] == 45 {
            end -= 1
            if lastDot >= end { lastDot = -1; for k in (at + 1)..<end where b[k] == 46 { lastDot = k } }
        }
        guard lastDot > at + 1, end - lastDot - 1 >= 2 else { return nil }
        for k in (lastDot + 1)..<end where !(isUpper(b[k]) || isLower(b[k])) { return nil }
        return (start..<end, (at + 1)..<end)
    }

    /// 13-19 digits (single spaces or dashes between groups) that pass the Luhn check and
    /// start like a payment card.
    static func cardAt(_ b: UnsafeBufferPointer<UInt8>, _ s: Int) -> Range<Int>? {
        guard isDigit(b[s]) else { return nil }
        var count = 0
        var k = s
        var lastDigitEnd = s
        var prefix = 0
        while k < b.count, count <= 19 {
            if isDigit(b[k]) {
                if count < 4 { prefix = prefix * 10 + Int(b[k] - 48) }
                count += 1
                k += 1
                lastDigitEnd = k
            } else if b[k] == 32 || b[k] == 45, k + 1 < b.count, isDigit(b[k + 1]), k > s, isDigit(b[k - 1]) {
                k += 1
            } else {
                break
            }
        }
        guard (13...19).contains(count), lastDigitEnd == b.count || !isAlnum(b[lastDigitEnd]) else { return nil }
        let first = prefix / 1000, two = prefix / 100, four = prefix
        let knownPrefix = first == 4 || (51...55).contains(two) || (2221...2720).contains(four) || two == 34 || two == 37 || four == 6011 || two == 65
            || two == 35 || two == 36 || two == 38 || two == 30 || two == 62
        guard knownPrefix else { return nil }
        // Luhn over the digits, right to left, skipping separators.
        var sum = 0
        var position = 0
        var j = lastDigitEnd - 1
        while j >= s {
            if isDigit(b[j]) {
                var value = Int(b[j] - 48)
                if position % 2 == 1 {
                    value *= 2
                    if value > 9 { value -= 9 }
                }
                sum += value
                position += 1
            }
            j -= 1
        }
        return sum % 10 == 0 ? s..<lastDigitEnd : nil
    }

    public static func luhn(_ digits: [UInt8]) -> Bool {
        var sum = 0
        for (index, digit) in digits.reversed().enumerated() {
            var value = Int(digit)
            if index % 2 == 1 {
                value *= 2
                if value > 9 { value -= 9 }
            }
            sum += value
        }
        return sum % 10 == 0
    }

    /// US social security number `123-45-6789` (valid area, group and serial).
    static func ssnAt(_ b: UnsafeBufferPointer<UInt8>, _ s: Int) -> Range<Int>? {
        guard s + 11 <= b.count, b[s + 3] == 45, b[s + 6] == 45 else { return nil }
        for k in [0, 1, 2, 4, 5, 7, 8, 9, 10] where !isDigit(b[s + k]) { return nil }
        if s + 11 < b.count, isAlnum(b[s + 11]) { return nil }
        let area = Int(b[s] - 48) * 100 + Int(b[s + 1] - 48) * 10 + Int(b[s + 2] - 48)
        let group = Int(b[s + 4] - 48) * 10 + Int(b[s + 5] - 48)
        let serial = (s + 7..<s + 11).reduce(0) { $0 * 10 + Int(b[$1] - 48) }
        guard area != 0, area != 666, area < 900, group != 0, serial != 0 else { return nil }
        return s..<(s + 11)
    }

    /// A phone number: `+` and 8-15 digits, or 10-15 digits written with the separators
    /// phone numbers are written with (`(415) 555-0100`, `415.555.0100`, `030 1234 5678`).
    static func phoneAt(_ b: UnsafeBufferPointer<UInt8>, _ s: Int) -> Range<Int>? {
        var k = s
        let plus = b[k] == 43
        if plus { k += 1 }
        var digits = 0
        var groups = 0
        var separators = 0
        var inGroup = false
        var lastDigitEnd = k
        var parens = 0
        var groupLength = 0
        var longestGroup = 0
        while k < b.count {
            let c = b[k]
            if isDigit(c) {
                digits += 1
                if !inGroup {
                    groups += 1
                    groupLength = 0
                }
                groupLength += 1
                longestGroup = max(longestGroup, groupLength)
                inGroup = true
                k += 1
                lastDigitEnd = k
            } else if c == 32 || c == 45 || c == 46 || c == 40 || c == 41 {
                if c == 40 { parens += 1 }
                separators += 1
                inGroup = false
                k += 1
                if separators > 6 { break }
                if k < b.count, !(isDigit(b[k]) || b[k] == 32 || b[k] == 40 || b[k] == 45) { break }
            } else {
                break
            }
        }
        guard lastDigitEnd == b.count || !isAlnum(b[lastDigitEnd]) else { return nil }
        if plus { return (8...15).contains(digits) && groups >= 1 ? s..<lastDigitEnd : nil }
        // Written like a phone number: 3+ groups (or an area code in parentheses), the last of
        // two digits or more, none longer than five (ISBNs, order numbers and dates are not).
        guard (10...15).contains(digits), groups >= 3 || (groups >= 2 && parens > 0), groupLength >= 2, longestGroup <= 5 else { return nil }
        return (b[s] == 40 || isDigit(b[s])) ? s..<lastDigitEnd : nil
    }

    /// IBANs (mod-97), UK National Insurance numbers and Spanish DNI (check letter).
    static func idKind(_ b: UnsafeBufferPointer<UInt8>, _ s: Int, _ e: Int) -> String? {
        if isUpper(b[s]), s + 1 < e, isUpper(b[s + 1]), ibanRange(b, s) != nil { return "pii.iban" }
        let length = e - s
        if length == 9, isUpper(b[s]), isUpper(b[s + 1]), (2..<8).allSatisfy({ isDigit(b[s + $0]) }), "ABCD".utf8.contains(b[s + 8]) {
            let prefix = String(decoding: b[s..<(s + 2)], as: UTF8.self)
            let invalid: Set<String> = ["BG", "GB", "NK", "KN", "TN", "NT", "ZZ"]
            if !invalid.contains(prefix), !"DFIQUV".utf8.contains(b[s]), !"DFIOQUV".utf8.contains(b[s + 1]) { return "pii.national_id" }
        }
        if length == 9, (0..<8).allSatisfy({ isDigit(b[s + $0]) }), isUpper(b[s + 8]) {
            let number = (0..<8).reduce(0) { $0 * 10 + Int(b[s + $1] - 48) }
            let letters = Array("TRWAGMYFPDXBNJZSQVHLCKE".utf8)
            if letters[number % 23] == b[s + 8] { return "pii.national_id" }
        }
        return nil
    }

    static func idRange(_ b: UnsafeBufferPointer<UInt8>, _ s: Int, _ e: Int, _ detector: String) -> Range<Int> {
        detector == "pii.iban" ? (ibanRange(b, s) ?? s..<e) : s..<e
    }

    /// An IBAN from `s`: country letters, check digits, then 11-30 letters and digits
    /// (optionally in groups of four separated by single spaces), mod 97 = 1.
    static func ibanRange(_ b: UnsafeBufferPointer<UInt8>, _ s: Int) -> Range<Int>? {
        guard s + 4 <= b.count, isUpper(b[s]), isUpper(b[s + 1]), isDigit(b[s + 2]), isDigit(b[s + 3]) else { return nil }
        var characters: [UInt8] = [b[s], b[s + 1], b[s + 2], b[s + 3]]
        var k = s + 4
        var end = k
        while k < b.count, characters.count < 34 {
            if isUpper(b[k]) || isDigit(b[k]) {
                characters.append(b[k])
                k += 1
                end = k
            } else if b[k] == 32, k + 1 < b.count, isUpper(b[k + 1]) || isDigit(b[k + 1]), (characters.count % 4) == 0 {
                k += 1
            } else {
                break
            }
        }
        guard (15...34).contains(characters.count), end == b.count || !isAlnum(b[end]) else { return nil }
        // Move the first four characters to the end; letters are 10-35; remainder mod 97.
        var remainder = 0
        for c in characters[4...] + characters[0..<4] {
            if isDigit(c) {
                remainder = (remainder * 10 + Int(c - 48)) % 97
            } else {
                remainder = (remainder * 100 + Int(c - 55)) % 97
            }
        }
        return remainder == 1 ? s..<end : nil
    }

    // MARK: URLs

    struct URLMatch {
        var range: Range<Int>
        var authority: Range<Int>
        var host: Range<Int>
        /// http, https, ftp or ws(s): a place data can be sent to by fetching the URL.
        var web: Bool
    }

    /// A URL (`scheme://authority/...`) starting at `s`.
    static func urlAt(_ b: UnsafeBufferPointer<UInt8>, _ s: Int) -> URLMatch? {
        var k = s
        while k < b.count, k - s < 16, isAlnum(b[k]) || b[k] == 43 || b[k] == 45 || b[k] == 46 { k += 1 }
        guard k > s, k + 3 <= b.count, b[k] == 58, b[k + 1] == 47, b[k + 2] == 47 else { return nil }
        let scheme = String(decoding: b[s..<k], as: UTF8.self).lowercased()
        let web = ["http", "https", "ftp", "ws", "wss"].contains(scheme)
        k += 3
        let authorityStart = k
        while k < b.count, b[k] > 32, b[k] != 47, b[k] != 63, b[k] != 35, b[k] != 41, b[k] != 34, b[k] != 39, b[k] != 60, b[k] != 62 { k += 1 }
        var hostStart = authorityStart
        for j in authorityStart..<k where b[j] == 64 { hostStart = j + 1 }
        var hostEnd = hostStart
        while hostEnd < k, b[hostEnd] != 58 { hostEnd += 1 }
        guard hostEnd > hostStart else { return nil }
        let authorityEnd = k
        while k < b.count, b[k] > 32, b[k] != 41, b[k] != 34, b[k] != 39, b[k] != 60, b[k] != 62, b[k] != 93 { k += 1 }
        return URLMatch(range: s..<k, authority: authorityStart..<authorityEnd, host: hostStart..<hostEnd, web: web)
    }

    /// The password of `user:password@` in a URL's authority.
    static func urlCredentials(_ b: UnsafeBufferPointer<UInt8>, _ url: URLMatch) -> Range<Int>? {
        let at = url.host.lowerBound - 1
        guard at > url.authority.lowerBound, b[at] == 64 else { return nil }
        guard let colon = b[url.authority.lowerBound..<at].firstIndex(of: 58), at - colon > 1 else { return nil }
        return (colon + 1)..<at
    }

    static func markdownImageStart(_ b: UnsafeBufferPointer<UInt8>, before close: Int) -> Int? {
        var k = close - 1
        while k >= 0, close - k < 1024 {
            if b[k] == 91 { return k >= 1 && b[k - 1] == 33 ? k - 1 : nil }
            if b[k] == 10 { return nil }
            k -= 1
        }
        return nil
    }

    /// Whether a host (or e-mail domain) is one of `allowed` or a subdomain of one.
    static func hostAllowed(_ b: UnsafeBufferPointer<UInt8>, _ host: Range<Int>, _ allowed: [String]) -> Bool {
        let name = String(decoding: b[host], as: UTF8.self).lowercased()
        return allowed.contains { entry in
            let domain = entry.lowercased()
            return name == domain || name.hasSuffix("." + domain)
        }
    }

    // MARK: Prompt injection

    /// Instruction-override phrasing, fake role or system markers, and invisible or tag
    /// Unicode characters.
    static func injection(_ b: UnsafeBufferPointer<UInt8>, _ findings: inout [GuardrailFinding]) {
        let n = b.count
        var i = 0
        var zeroWidthRun = 0
        var zeroWidthStart = 0
        while i < n {
            let c = b[i]
            if c >= 0xE2 {
                // Three- and four-byte sequences: zero-width, bidi controls, tags.
                let scalar = decode(b, i)
                let width = c >= 0xF0 ? 4 : 3
                if let scalar {
                    if (0xE0000...0xE007F).contains(scalar) {
                        var end = i + width
                        while end + 4 <= n, let next = decode(b, end), (0xE0000...0xE007F).contains(next) { end += 4 }
                        findings.append(GuardrailFinding(detector: "injection.invisible", range: i..<end))
                        i = end
                        continue
                    }
                    if (0x202A...0x202E).contains(scalar) || (0x2066...0x2069).contains(scalar) {
                        findings.append(GuardrailFinding(detector: "injection.invisible", range: i..<(i + width)))
                    }
                    if scalar == 0x200B || scalar == 0x200C || (0x2060...0x2064).contains(scalar) || (scalar == 0xFEFF && i > 0) {
                        if zeroWidthRun == 0 { zeroWidthStart = i }
                        zeroWidthRun += 1
                        if zeroWidthRun == 2 { findings.append(GuardrailFinding(detector: "injection.invisible", range: zeroWidthStart..<(i + width))) }
                        i += width
                        continue
                    }
                }
                zeroWidthRun = 0
                i += width
                continue
            }
            zeroWidthRun = 0
            if c == 60 || c == 91 || c == 35 || c == 10 || i == 0, let marker = roleMarker(b, i) {
                findings.append(GuardrailFinding(detector: "injection.role_marker", range: marker))
                i = marker.upperBound
                continue
            }
            if isUpper(c) || isLower(c), i == 0 || !isAlnum(b[i - 1]) {
                if let phrase = overridePhrase(b, i) {
                    findings.append(GuardrailFinding(detector: "injection.override", range: phrase))
                    i = phrase.upperBound
                    continue
                }
                // The rest of the word cannot start anything.
                i += 1
                while i < n, isAlnum(b[i]) { i += 1 }
                continue
            }
            i += 1
        }
    }

    static func decode(_ b: UnsafeBufferPointer<UInt8>, _ i: Int) -> UInt32? {
        let c = b[i]
        if c >= 0xF0, i + 3 < b.count {
            return (UInt32(c & 0x07) << 18) | (UInt32(b[i + 1] & 0x3F) << 12) | (UInt32(b[i + 2] & 0x3F) << 6) | UInt32(b[i + 3] & 0x3F)
        }
        if c >= 0xE0, i + 2 < b.count {
            return (UInt32(c & 0x0F) << 12) | (UInt32(b[i + 1] & 0x3F) << 6) | UInt32(b[i + 2] & 0x3F)
        }
        return nil
    }

    static let roleMarkers: [StaticString] = [
        "<|im_start|>", "<|im_end|>", "<|system|>", "<|assistant|>", "<|user|>", "<|endoftext|>", "<|start_header_id|>", "[inst]", "[/inst]",
        "<<sys>>", "<system>", "</system>", "[system]", "### system:", "### instruction:", "#### system", "\nsystem:", "\nassistant:", "\nhuman:",
        "<im_start>",
    ]

    static func roleMarker(_ b: UnsafeBufferPointer<UInt8>, _ i: Int) -> Range<Int>? {
        for marker in roleMarkers where matchesLower(b, i, marker) {
            let start = b[i] == 10 ? i + 1 : i
            return start..<(i + marker.utf8CodeUnitCount)
        }
        if i == 0 {
            for marker: StaticString in ["system:", "assistant:"] where matchesLower(b, 0, marker) { return 0..<marker.utf8CodeUnitCount }
        }
        return nil
    }

    static let overrideVerbs: [StaticString] = ["ignore", "disregard", "forget", "override", "overwrite", "bypass"]
    static let quantifiers: [StaticString] = ["all", "any", "every"]
    static let ofWord: [StaticString] = ["of"]
    static let determiners: [StaticString] = ["the", "your", "my", "these", "those"]
    static let earlier: [StaticString] = ["previous", "prior", "above", "earlier", "preceding", "original", "system", "safety"]
    static let andAll: [StaticString] = ["and", "all"]
    static let instructionNouns: [StaticString] = [
        "instructions", "instruction", "directions", "prompts", "prompt", "rules", "guidelines", "context", "messages", "everything",
    ]
    static let youWord: [StaticString] = ["you"]
    static let beVerbs: [StaticString] = ["are", "must", "will"]
    static let nowWord: [StaticString] = ["now"]
    static let newIdentity: [StaticString] = ["a", "an", "in", "no", "free", "dan", "unrestricted", "jailbroken", "my", "the", "not", "acting", "going"]
    static let newWords: [StaticString] = ["new", "updated"]
    static let ruleNouns: [StaticString] = ["instructions", "system", "rules"]
    static let promptWord: [StaticString] = ["prompt"]
    static let revealVerbs: [StaticString] = ["reveal", "print", "show", "repeat", "output"]
    static let yourThe: [StaticString] = ["your", "the"]
    static let hiddenWords: [StaticString] = ["system", "hidden", "initial"]
    static let promptNouns: [StaticString] = ["prompt", "instructions", "message"]
    static let doWords: [StaticString] = ["do", "don't"]
    static let notWord: [StaticString] = ["not"]
    static let tellVerbs: [StaticString] = ["tell", "inform", "mention", "reveal", "show"]
    static let userWords: [StaticString] = ["user", "human"]

    /// Whether a word starting at `i` may begin one of the phrases (its first two letters).
    @inline(__always) static func mayStartPhrase(_ b: UnsafeBufferPointer<UInt8>, _ i: Int) -> Bool {
        guard i + 1 < b.count else { return false }
        switch (b[i] | 0x20, b[i + 1] | 0x20) {
        case (105, 103), (100, 105), (102, 111), (111, 118), (98, 121), (121, 111), (110, 101), (117, 112), (114, 101), (112, 114), (115, 104),
            (111, 117), (100, 111):
            // ig(nore) di(sregard) fo(rget) ov(erride/erwrite) by(pass) yo(u) ne(w) up(dated) re(veal/peat) pr(int) sh(ow) ou(tput) do
            return true
        default:
            return false
        }
    }

    /// Phrases that try to replace the instructions a model follows.
    static func overridePhrase(_ b: UnsafeBufferPointer<UInt8>, _ i: Int) -> Range<Int>? {
        guard mayStartPhrase(b, i) else { return nil }
        var k = i
        func word(_ options: [StaticString]) -> Bool {
            while k < b.count, b[k] == 32 || b[k] == 9 || b[k] == 10 { k += 1 }
            for option in options where matchesLower(b, k, option) {
                let end = k + option.utf8CodeUnitCount
                if end == b.count || !isAlnum(b[end]) {
                    k = end
                    return true
                }
            }
            return false
        }
        func optional(_ options: [StaticString]) {
            let saved = k
            if !word(options) { k = saved }
        }
        // ignore / disregard / forget ... (all) (the) previous instructions
        k = i
        if word(overrideVerbs) {
            optional(quantifiers)
            optional(ofWord)
            optional(determiners)
            optional(earlier)
            optional(andAll)
            if word(instructionNouns) {
                return i..<k
            }
        }
        // you are now (a / an / in / no longer / DAN / unrestricted ...): a new identity
        k = i
        if word(youWord), word(beVerbs), word(nowWord) {
            let end = k
            if word(newIdentity) { return i..<end }
        }
        // new instructions:
        k = i
        if word(newWords), word(ruleNouns) {
            optional(promptWord)
            if k < b.count, b[k] == 58 { return i..<(k + 1) }
        }
        // reveal your system prompt
        k = i
        if word(revealVerbs), word(yourThe), word(hiddenWords),
            word(promptNouns)
        {
            return i..<k
        }
        // do not tell the user
        k = i
        if word(doWords), word(notWord) || b[k - 1] == 116, word(tellVerbs), word(yourThe),
            word(userWords)
        {
            return i..<k
        }
        return nil
    }
}
